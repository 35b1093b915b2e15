"""The standalone on-device runner: one Python 3.6+ file, numpy + the device's runtime, writes timings as JSON."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from edgekd.bench.env import portable_source
from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_path

# Jetson Nano's newest JetPack (4.6) ships Python 3.6: the runner must parse and run there.
OLDEST_PYTHON = (3, 6)
RESULTS_FORMAT = "edgekd-device-results"
RESULTS_VERSION = 1

# The runner's source. "@@PROBES@@" becomes edgekd.bench.env's portable probes and "@@VERSION@@" the
# edgekd version, by plain replacement (no str.format: the script is full of braces).
# Python 3.6 rules inside: no f"{x=}", no walrus, no dataclasses, no `from __future__ import annotations`,
# no time.perf_counter_ns, no subprocess capture_output, no datetime.fromisoformat.
TEMPLATE = r'''#!/usr/bin/env python3
"""edgekd on-device latency runner (edgekd @@VERSION@@). Needs Python >= 3.6, numpy and one runtime.

Copy this file and your model files to the device, then for example:

    python3 edgekd_runner.py student.onnx student.fp16.engine --device-name jetson-nano --out results.json

and bring results.json back: `edgekd ingest results.json RUN_DIR` puts the timings into the report,
labelled measured:jetson-nano. Runtimes: onnxruntime (.onnx), openvino (.xml, .onnx),
tensorrt (.engine/.plan, or .onnx built into an engine here). Nothing is downloaded.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import traceback

EDGEKD_VERSION = "@@VERSION@@"
RESULTS_FORMAT = "@@FORMAT@@"
RESULTS_VERSION = @@FORMAT_VERSION@@

try:
    import numpy as np
except ImportError:
    sys.stderr.write("edgekd runner: numpy is required (pip3 install numpy)\n")
    sys.exit(2)


# ---------------------------------------------------------------- device probes (shared with edgekd)
@@PROBES@@

# ---------------------------------------------------------------- runtimes


class RunnerError(Exception):
    """One model on one runtime could not be measured; the reason goes into its result row."""


def _version(module_name):
    try:
        module = __import__(module_name)
    except Exception:
        return None
    return getattr(module, "__version__", None) or "unknown"


def _concrete_shape(shape, batch):
    """A model input shape with its symbolic (dynamic) dimensions resolved: batch first, else error."""
    out = []
    for i, dim in enumerate(shape):
        if isinstance(dim, int) and dim > 0:
            out.append(dim)
        elif i == 0:
            out.append(batch)
        else:
            raise RunnerError("input dimension {} is dynamic ({!r}); pass --input-shape C,H,W".format(i, dim))
    return out


class OnnxRuntimeBackend(object):
    name = "onnxruntime"
    suffixes = (".onnx", ".ort")

    def __init__(self, path, threads, batch, options):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError("onnxruntime is not importable: pip3 install onnxruntime (onnxruntime-gpu on Jetson)")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        if options.providers:
            providers = [p for p in options.providers.split(",") if p]
            missing = [p for p in providers if p not in available]
            if missing:
                raise RunnerError("provider {} is not available here (available: {})".format(
                    missing[0], ", ".join(available)))
        else:
            # TensorRT EP spends minutes building engines on first use; CUDA is the honest default on GPUs.
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, so, providers=providers)
        self.input = self.session.get_inputs()[0]
        self.provider = self.session.get_providers()[0]
        self.version = ort.__version__
        self.shape = options.input_shape_for(self.input.shape, batch)
        self.dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    def __call__(self, x):
        return self.session.run(None, {self.input.name: x})[0]


class OpenVINOBackend(object):
    name = "openvino"
    suffixes = (".xml", ".onnx")

    def __init__(self, path, threads, batch, options):
        try:
            import openvino as ov
            core = ov.Core()
        except (ImportError, AttributeError):
            try:
                from openvino.runtime import Core  # OpenVINO 2022.x
                core = Core()
            except ImportError:
                raise RunnerError("openvino is not importable: pip3 install openvino")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(path)
        port = model.inputs[0]
        dims = []
        for d in port.get_partial_shape():
            dims.append(d.get_length() if d.is_static else -1)
        self.shape = options.input_shape_for(dims, batch)
        if any(d < 0 for d in dims):
            model.reshape({port.get_any_name(): self.shape})
        try:
            self.compiled = core.compile_model(model, options.ov_device, config)
        except Exception:
            if not threads:
                raise
            # OpenVINO before 2023 names the thread count CPU_THREADS_NUM.
            config.pop("INFERENCE_NUM_THREADS")
            config["CPU_THREADS_NUM"] = str(threads)
            self.compiled = core.compile_model(model, options.ov_device, config)
        self.request = self.compiled.create_infer_request()
        self.provider = options.ov_device
        self.version = _version("openvino")

    def __call__(self, x):
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data


class TensorRTBackend(object):
    """TensorRT 8.x (JetPack 4.6/5) and 10.x engines; pycuda moves the data. Timings include the copies."""

    name = "tensorrt"
    suffixes = (".engine", ".plan", ".trt", ".onnx")

    def __init__(self, path, threads, batch, options):
        try:
            import tensorrt as trt
        except ImportError:
            raise RunnerError("tensorrt is not importable: use JetPack's python3-libnvinfer or pip3 install tensorrt")
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
        except ImportError:
            raise RunnerError("pycuda is not importable: pip3 install pycuda")
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        if path.endswith(".onnx"):
            data = self._build(path, batch, options)
        else:
            with open(path, "rb") as fh:
                data = fh.read()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RunnerError("TensorRT could not deserialize {} (built by another TensorRT version or GPU?)".format(
                os.path.basename(path)))
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.v3 = hasattr(self.engine, "num_io_tensors")
        self.provider = "tensorrt"
        self.version = trt.__version__
        names = self._io_names()
        self.input_name = [n for n, is_input in names if is_input][0]
        self.output_name = [n for n, is_input in names if not is_input][0]
        self.shape = options.input_shape_for(list(self._shape(self.input_name)), batch)
        self._set_input_shape(self.shape)
        out_shape = [int(d) for d in self._context_shape(self.output_name)]
        self.h_out = np.empty(out_shape, dtype=np.float32)
        nbytes_in = int(np.prod(self.shape)) * 4
        self.d_in = cuda.mem_alloc(nbytes_in)
        self.d_out = cuda.mem_alloc(self.h_out.nbytes)

    def _build(self, path, batch, options):
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if hasattr(
            trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        with open(path, "rb") as fh:
            if not parser.parse(fh.read()):
                raise RunnerError("TensorRT could not parse {}: {}".format(
                    os.path.basename(path), parser.get_error(0) if parser.num_errors else "unknown error"))
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
        else:
            config.max_workspace_size = 1 << 28
        # int8: an ONNX with Q/DQ nodes (edgekd's ort-int8) is explicitly quantized; TensorRT honours the
        # Q/DQ scales only with the INT8 flag, and FP16 lets the layers between them run in half precision.
        if options.precision in ("fp16", "int8") and getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        inp = network.get_input(0)
        shape = options.input_shape_for(list(inp.shape), batch)
        if any(d < 0 for d in inp.shape):
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, shape, shape, shape)
            config.add_optimization_profile(profile)
        if hasattr(builder, "build_serialized_network"):
            data = builder.build_serialized_network(network, config)
        else:
            data = builder.build_engine(network, config).serialize()
        if data is None:
            raise RunnerError("TensorRT could not build an engine from {}".format(os.path.basename(path)))
        return bytes(data)

    def _io_names(self):
        e = self.engine
        if self.v3:
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            return [(n, e.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT) for n in names]
        return [(e.get_binding_name(i), e.binding_is_input(i)) for i in range(e.num_bindings)]

    def _shape(self, name):
        e = self.engine
        return e.get_tensor_shape(name) if self.v3 else e.get_binding_shape(e.get_binding_index(name))

    def _context_shape(self, name):
        c = self.context
        if self.v3:
            return c.get_tensor_shape(name)
        return c.get_binding_shape(self.engine.get_binding_index(name))

    def _set_input_shape(self, shape):
        if self.v3:
            self.context.set_input_shape(self.input_name, shape)
        elif any(d < 0 for d in self._shape(self.input_name)):
            self.context.set_binding_shape(self.engine.get_binding_index(self.input_name), shape)

    def __call__(self, x):
        cuda = self.cuda
        cuda.memcpy_htod_async(self.d_in, np.ascontiguousarray(x), self.stream)
        if self.v3:
            self.context.set_tensor_address(self.input_name, int(self.d_in))
            self.context.set_tensor_address(self.output_name, int(self.d_out))
            self.context.execute_async_v3(self.stream.handle)
        else:
            bindings = [0] * self.engine.num_bindings
            bindings[self.engine.get_binding_index(self.input_name)] = int(self.d_in)
            bindings[self.engine.get_binding_index(self.output_name)] = int(self.d_out)
            self.context.execute_async_v2(bindings, self.stream.handle)
        cuda.memcpy_dtoh_async(self.h_out, self.d_out, self.stream)
        self.stream.synchronize()
        return self.h_out


BACKENDS = {b.name: b for b in (OnnxRuntimeBackend, OpenVINOBackend, TensorRTBackend)}
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


def _importable(module_name):
    try:
        __import__(module_name)
        return True
    except Exception:
        return False


def runtimes_for(path, requested):
    """Which runtimes to try for one model file: the requested ones, or the first local one that reads it."""
    suffix = os.path.splitext(path)[1].lower()
    if requested:
        return [r for r in requested if suffix in BACKENDS[r].suffixes]
    for name in ("onnxruntime", "openvino", "tensorrt"):
        if suffix in BACKENDS[name].suffixes and (name != "tensorrt" or suffix != ".onnx"):
            if _importable(MODULES[name]) or suffix in (".xml", ".engine", ".plan", ".trt"):
                return [name]
    return []


# ---------------------------------------------------------------- measurement


def percentile_stats(samples_ms, batch):
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    mean = float(s.mean())
    return {
        "p50": round(float(p50), 5), "p90": round(float(p90), 5), "p99": round(float(p99), 5),
        "mean": round(mean, 5), "min": round(float(s.min()), 5), "max": round(float(s.max()), 5),
        "std": round(float(s.std()), 5), "throughput": round(batch * 1000.0 / mean, 3) if mean > 0 else None,
    }


def measure(fn, x, warmup, runs, seconds, min_runs=10, max_runs=100000):
    """Same method as edgekd.bench.measure: warm-up, then per-call timings; GC paused while timing."""
    import gc

    for _ in range(warmup):
        fn(x)
    samples = []
    clock = time.perf_counter
    enabled = gc.isenabled()
    gc.disable()
    try:
        if runs:
            for _ in range(runs):
                t0 = clock()
                fn(x)
                samples.append((clock() - t0) * 1000.0)
        else:
            deadline = clock() + seconds
            while len(samples) < max_runs:
                t0 = clock()
                fn(x)
                t1 = clock()
                samples.append((t1 - t0) * 1000.0)
                if t1 >= deadline and len(samples) >= min_runs:
                    break
    finally:
        if enabled:
            gc.enable()
    return samples


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_ref(path, out):
    """The model's path relative to the results file: `edgekd calibrate` finds the models beside the JSON."""
    try:
        return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(out)))
    except ValueError:  # another drive on Windows
        return os.path.abspath(path)


def precision_of(path, runtime, args):
    """fp32/fp16/int8: what a TensorRT build was asked for, else what edgekd's file names say."""
    if runtime == "tensorrt" and path.endswith(".onnx"):
        return args.precision
    name = os.path.basename(path).lower()
    for tag in ("int8", "fp16", "fp32"):
        if tag in name:
            return tag
    return "fp32"


def measure_model(path, runtime, batch, args):
    row = {"model": model_ref(path, args.out), "path": path, "runtime": runtime, "batch": batch,
           "precision": precision_of(path, runtime, args)}
    try:
        row["sha256"] = sha256_of(path)
        backend = BACKENDS[runtime](path, args.threads, batch, args)
        if int(backend.shape[0]) != batch:
            row.update({"status": "skipped", "input_shape": [int(d) for d in backend.shape],
                        "reason": "the model has a fixed batch of {}; export it with a dynamic batch to time "
                                  "batch {}".format(backend.shape[0], batch)})
            return row
        x = np.random.RandomState(0).standard_normal(backend.shape).astype(getattr(backend, "dtype", np.float32))
        out = np.asarray(backend(x))
        if not np.all(np.isfinite(out)):
            raise RunnerError("the model produced non-finite outputs")
        samples = measure(backend, x, args.warmup, args.runs, args.seconds)
        stats = percentile_stats(samples, batch)
        row.update({
            "status": "ok", "provider": backend.provider, "runtime_version": backend.version,
            "input_shape": [int(d) for d in backend.shape], "output_shape": [int(d) for d in out.shape],
            "latency_ms": {k: stats[k] for k in ("p50", "p90", "p99", "mean", "min", "max", "std")},
            "throughput": stats["throughput"], "runs": len(samples), "warmup": args.warmup,
            "threads": args.threads,
        })
    except RunnerError as err:
        row.update({"status": "failed", "reason": str(err)})
    except Exception as err:  # one model's failure must not lose the other measurements
        row.update({"status": "failed", "reason": "{}: {}".format(type(err).__name__, str(err).splitlines()[0]
                                                                    if str(err) else "")})
        if args.verbose:
            traceback.print_exc()
    return row


# ---------------------------------------------------------------- main


class Options(object):
    def __init__(self, ns):
        self.__dict__.update(vars(ns))
        self.fixed_shape = None
        if ns.input_shape:
            try:
                self.fixed_shape = [int(v) for v in ns.input_shape.split(",")]
            except ValueError:
                raise SystemExit("edgekd runner: --input-shape must look like 1,28,28 (C,H,W)")

    def input_shape_for(self, model_shape, batch):
        if self.fixed_shape:
            return [batch] + self.fixed_shape[-3:] if len(self.fixed_shape) == 3 else list(self.fixed_shape)
        return _concrete_shape(model_shape, batch)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Measure model latency on this device for edgekd.")
    p.add_argument("models", nargs="+", help="model files: .onnx, .xml (OpenVINO IR), .engine/.plan (TensorRT)")
    p.add_argument("--device-name", default=None, help="device label used in the report, e.g. jetson-nano")
    p.add_argument("--runtime", action="append", choices=sorted(BACKENDS),
                   help="runtime(s) to use (repeatable); default: the first local runtime that reads each file")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs before timing (default 20)")
    p.add_argument("--runs", type=int, default=0, help="timed runs (default: as many as fit in --seconds)")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per model when --runs is 0")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    p.add_argument("--input-shape", default=None, help="C,H,W for models with dynamic spatial dimensions")
    p.add_argument("--providers", default=None, help="onnxruntime execution providers, comma-separated")
    p.add_argument("--ov-device", default="CPU", help="OpenVINO device (CPU, GPU, NPU); default CPU")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="TensorRT precision when building an engine from .onnx (int8 needs a Q/DQ model)")
    p.add_argument("--out", default="edgekd_results.json", help="where to write the JSON results")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.runs < 0 or args.seconds <= 0:
        p.error("--warmup and --runs must be >= 0 and --seconds > 0")
    try:
        args.batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        p.error("--batch must be comma-separated integers such as 1,8")
    if not args.batches or min(args.batches) < 1:
        p.error("--batch sizes must be >= 1")
    return Options(args)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for path in args.models:
        if not os.path.isfile(path):
            sys.stderr.write("edgekd runner: {} does not exist; pass model files copied from the run's "
                             "artifacts/ folder\n".format(path))
            return 2
    device = device_info()
    device["name"] = args.device_name or device.get("board") or device.get("hostname") or "device"
    device["numpy"] = np.__version__
    device["runtimes"] = dict((name, _version(mod)) for name, mod in sorted(MODULES.items()) if _importable(mod))
    results = []
    for path in args.models:
        runtimes = runtimes_for(path, args.runtime)
        if not runtimes:
            results.append({"model": model_ref(path, args.out), "path": path, "runtime": None, "status": "skipped",
                            "reason": "no local runtime reads {} files (installed: {})".format(
                                os.path.splitext(path)[1], ", ".join(device["runtimes"]) or "none")})
            continue
        for runtime in runtimes:
            for batch in args.batches:
                row = measure_model(path, runtime, batch, args)
                results.append(row)
                if row["status"] == "ok":
                    sys.stdout.write("{:<40} {:<12} batch {:<3} p50 {:.4f} ms  p90 {:.4f} ms  ({} runs)\n".format(
                        row["model"], runtime, batch, row["latency_ms"]["p50"], row["latency_ms"]["p90"],
                        row["runs"]))
                else:
                    sys.stdout.write("{:<40} {:<12} batch {:<3} {}: {}\n".format(
                        row["model"], runtime, batch, row["status"], row["reason"]))
                sys.stdout.flush()
    used = sorted(set(r["runtime"] for r in results if r.get("status") == "ok"))
    if len(used) == 1:
        device["runtime"] = used[0]  # what `edgekd calibrate` checks against the target's runtime
    doc = {
        "format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, "edgekd_version": EDGEKD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device, "results": results,
    }
    if args.device_name:
        doc["target"] = args.device_name
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, args.out)
    sys.stdout.write("wrote {}\n".format(args.out))
    return 0 if any(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def render_runner_script() -> str:
    """The runner's full source, checked to parse as Python 3.6."""
    import edgekd

    source = (TEMPLATE.replace("@@PROBES@@", portable_source().rstrip())
              .replace("@@VERSION@@", edgekd.__version__)
              .replace("@@FORMAT_VERSION@@", str(RESULTS_VERSION))
              .replace("@@FORMAT@@", RESULTS_FORMAT))
    check_python36(source)
    return source


def check_python36(source: str) -> None:
    """Fail loudly (at edgekd build/test time, not on the device) if the runner uses newer syntax."""
    try:
        ast.parse(source, feature_version=OLDEST_PYTHON)
    except SyntaxError as err:  # a bug in edgekd, not user error
        raise RuntimeError(f"on-device runner does not parse as Python 3.6: line {err.lineno}: {err.msg}") from err


def write_runner_script(out: str | os.PathLike) -> Path:
    """Write the runner to ``out`` (atomically, executable) and return its path."""
    out = Path(out)
    if out.is_dir():
        out = out / "edgekd_runner.py"
    if out.suffix != ".py":
        raise EdgeKDError(f"runner output {out} must end in .py", "pass --out such as edgekd_runner.py")
    source = render_runner_script()
    with atomic_path(out) as tmp:
        tmp.write_text(source, encoding="utf-8")
        os.chmod(tmp, 0o755)
    return out
