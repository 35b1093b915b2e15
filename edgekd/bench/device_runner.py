#!/usr/bin/env python3
"""edgekd on-device latency runner. Needs Python >= 3.6, numpy and one runtime.

Copy this file and your model files to the device, then for example:

    python3 edgekd_runner.py student.onnx student.fp16.engine --device-name jetson-nano --out results.json

and bring results.json back: `edgekd ingest results.json RUN_DIR` puts the timings into the report,
labelled measured:jetson-nano. Runtimes: onnxruntime (.onnx), openvino (.xml, .onnx),
tensorrt (.engine/.plan, or .onnx built into an engine here), litert (.tflite). Nothing is downloaded.

This file is a module of the edgekd package (edgekd.bench.device_runner): tests import it, and
`edgekd runner` copies it out with the block between the edgekd:embed markers replaced by the source
it imports (the device probes and the timing loop), so the copy needs nothing but numpy and a runtime.
It must parse and run on Python 3.6 (JetPack 4.6): no annotations, no f"{x=}", no walrus, no
dataclasses, no time.*_ns, no subprocess capture_output; edgekd.bench.runner_script checks it.
"""

import argparse
import gc  # noqa: F401  (the embedded timing loop pauses the garbage collector)
import hashlib
import json
import os
import platform  # noqa: F401  (the embedded device probes read it)
import sys
import time
import traceback

try:
    import numpy as np
except ImportError:
    sys.stderr.write("edgekd runner: numpy is required (pip3 install numpy)\n")
    sys.exit(2)

# What `edgekd ingest` reads; bump RESULTS_VERSION when a field changes meaning.
RESULTS_FORMAT = "edgekd-device-results"
RESULTS_VERSION = 1

# edgekd:embed-begin  (`edgekd runner` writes the portable source of these imports here)
from edgekd.version import __version__ as EDGEKD_VERSION  # noqa: E402
from edgekd.bench.env import device_info  # noqa: E402
from edgekd.bench.measure import latency_summary, time_calls  # noqa: E402
# edgekd:embed-end


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


class Backend(object):
    """One runtime on the device: loads a model file for a batch size; calling it runs one batch."""

    name = ""
    modules = ()        # importable module names, any one of which provides the runtime
    suffixes = ()       # model files it runs
    builds_from = ()    # files it must build an engine from first: used only when asked for by --runtime


def _require(module_name, install):
    """Import a runtime module, or fail this model's row with how to install it."""
    try:
        return __import__(module_name, fromlist=["_"])
    except ImportError:
        raise RunnerError("{} is not importable: {}".format(module_name, install))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    modules = ("onnxruntime",)
    suffixes = (".onnx", ".ort")

    def __init__(self, path, threads, batch, options):
        ort = _require("onnxruntime", "pip3 install onnxruntime (onnxruntime-gpu on Jetson)")
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


class OpenVINOBackend(Backend):
    name = "openvino"
    modules = ("openvino",)
    suffixes = (".xml", ".onnx")

    # One Core for the run: OpenVINO's CPU plugin swaps the thread's alternate signal stack for its own and
    # puts back the one it found when it is destroyed, so Cores destroyed in the order they were made leave
    # an unmapped stack behind, and the next handled signal (Ctrl-C) is a segmentation fault.
    core = None

    def __init__(self, path, threads, batch, options):
        core = OpenVINOBackend.core
        if core is None:
            try:
                import openvino as ov
                core = ov.Core()
            except (ImportError, AttributeError):
                try:
                    from openvino.runtime import Core  # OpenVINO 2022.x
                    core = Core()
                except ImportError:
                    raise RunnerError("openvino is not importable: pip3 install openvino")
            OpenVINOBackend.core = core
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


class TensorRTBackend(Backend):
    """TensorRT 8.x (JetPack 4.6/5) and 10.x engines; pycuda moves the data. Timings include the copies."""

    name = "tensorrt"
    modules = ("tensorrt",)
    suffixes = (".engine", ".plan", ".trt", ".onnx")
    builds_from = (".onnx",)  # an engine is built here first: never picked for .onnx unless asked for

    def __init__(self, path, threads, batch, options):
        trt = _require("tensorrt", "use JetPack's python3-libnvinfer or pip3 install tensorrt")
        _require("pycuda.autoinit", "pip3 install pycuda")  # creates the CUDA context
        cuda = _require("pycuda.driver", "pip3 install pycuda")
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


class LiteRTBackend(Backend):
    """LiteRT (TFLite) flatbuffers: ai-edge-litert, tflite-runtime or TensorFlow's interpreter, whichever is here."""

    name = "litert"
    modules = ("ai_edge_litert", "tflite_runtime", "tensorflow")
    suffixes = (".tflite",)

    def __init__(self, path, threads, batch, options):
        interpreter_class, self.version = None, None
        for module_name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
            try:
                interpreter_class = __import__(module_name, fromlist=["Interpreter"]).Interpreter
                self.version = _version(module_name.split(".")[0])
                break
            except ImportError:
                continue
        if interpreter_class is None:
            try:
                import tensorflow as tf
            except ImportError:
                raise RunnerError("no LiteRT interpreter is importable: pip3 install ai-edge-litert (or tflite-runtime)")
            interpreter_class, self.version = tf.lite.Interpreter, tf.__version__
        self.interpreter = interpreter_class(model_path=path, num_threads=threads or None)
        inp = self.interpreter.get_input_details()[0]
        dims = [int(d) for d in inp.get("shape_signature", inp["shape"])]
        self.shape = options.input_shape_for(dims, batch)
        if [int(d) for d in inp["shape"]] != list(self.shape):
            self.interpreter.resize_tensor_input(inp["index"], list(self.shape))
        self.interpreter.allocate_tensors()
        self.input_index = inp["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.provider = "cpu"

    def __call__(self, x):
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)


# The runtimes this file runs, in the order one is picked for a file no --runtime names. edgekd's runtime
# descriptors (edgekd.runtimes, on_device=True) list the same names; a test holds the two together.
BACKENDS = dict((b.name, b) for b in (OnnxRuntimeBackend, OpenVINOBackend, TensorRTBackend, LiteRTBackend))


def _importable(module_name):
    try:
        __import__(module_name)
        return True
    except Exception:
        return False


def _installed(backend):
    """The first of the backend's modules that imports here, or None."""
    return next((m for m in backend.modules if _importable(m)), None)


def runtimes_for(path, requested):
    """Which runtimes to try for one model file: the requested ones, or the first local one that reads it.

    A file only one runtime reads (.xml, .engine, .tflite) goes to it even when it is missing here, so
    that its row says why it could not be measured.
    """
    suffix = os.path.splitext(path)[1].lower()
    if requested:
        return [r for r in requested if suffix in BACKENDS[r].suffixes]
    readers = [b for b in BACKENDS.values() if suffix in b.suffixes and suffix not in b.builds_from]
    for backend in readers:
        if _installed(backend):
            return [backend.name]
    return [readers[0].name] if len(readers) == 1 else []


# ---------------------------------------------------------------- measurement


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
        samples = time_calls(backend, x, warmup=args.warmup, runs=args.runs, seconds=args.seconds)
        stats = latency_summary(samples, batch)
        row.update({
            "status": "ok", "provider": backend.provider, "runtime_version": backend.version,
            "input_shape": [int(d) for d in backend.shape], "output_shape": [int(d) for d in out.shape],
            "latency_ms": dict((k, round(stats[k], 5)) for k in ("p50", "p90", "p99", "mean", "min", "max", "std")),
            "throughput": round(stats["throughput"], 3) if stats["mean"] > 0 else None, "runs": stats["runs"],
            "warmup": args.warmup, "threads": args.threads,
        })
    except RunnerError as err:
        row.update({"status": "failed", "reason": str(err)})
    except Exception as err:  # one model's failure must not lose the other measurements
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        row.update({"status": "failed", "reason": "{}: {}".format(type(err).__name__, lines[0] if lines else "")})
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
    p.add_argument("models", nargs="+", help="model files: .onnx, .xml (OpenVINO IR), .engine/.plan (TensorRT), "
                                              ".tflite (LiteRT)")
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
    device["runtimes"] = dict((name, _version(_installed(b))) for name, b in sorted(BACKENDS.items()) if _installed(b))
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
