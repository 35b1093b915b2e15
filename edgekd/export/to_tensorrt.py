"""TensorRT engines built from the ONNX with the TensorRT Python API, and build kits (trtexec script) for devices."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.base import register_format
from edgekd.fsutil import atomic_path

INSTALL = "pip install 'edgekd[tensorrt]' on a machine with an NVIDIA GPU"
# JetPack 4.6 (Jetson Nano) ships TensorRT 8.2, whose ONNX parser stops at opset 13; the device kit's
# ONNX is exported at that opset so one file builds on every JetPack.
DEVICE_OPSET = 13


def trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def strongly_typed() -> bool:
    """TensorRT 11 builds only strongly typed networks (BuilderFlag.FP16/INT8 no longer exist)."""
    return trt_major() >= 11


def device_info() -> dict:
    """What an engine is tied to: TensorRT version, GPU, compute capability, JetPack (on Jetson)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    info = {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}", "jetpack": None}
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        info["jetpack"] = (release.read_text().splitlines() or [""])[0].strip()[:120]
    return info


def check_engine_tag(engine: Path) -> dict:
    """Refuse an engine built for another TensorRT version or GPU (TensorRT would crash or misbehave)."""
    tag_path = Path(f"{engine}.json")
    if not tag_path.is_file():
        raise EdgeKDError(f"{engine.name} has no build tag ({tag_path.name})",
                          "rebuild the engine with edgekd export or the trtexec script next to the ONNX")
    tag = json.loads(tag_path.read_text())
    here = device_info()
    for key in ("tensorrt", "compute_capability"):
        if tag.get(key) != here[key]:
            raise EdgeKDError(
                f"{engine.name} was built for {key.replace('_', ' ')} {tag.get(key)} but this machine has {here[key]}",
                "engines are device-specific: rebuild it here with the trtexec script shipped next to the ONNX")
    return tag


def build_engine(onnx_path: Path, dest: Path, *, precision: str, input_shape: tuple[int, ...], max_batch: int,
                 workspace_mb: int, timing_cache: Path | None) -> dict:
    """Parse the ONNX, build a serialized engine with a dynamic-batch profile, inspect layer precisions."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag to parse ONNX at all.
    flags = 0 if trt_major() >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        op = first.node_operator() if first is not None and hasattr(first, "node_operator") else ""
        desc = first.desc() if first is not None else "unknown parser error"
        if op:
            raise EdgeKDError(f"the tensorrt-{precision} format cannot take operator {op}: {desc}",
                              f"replace {op} in the model, or drop tensorrt-{precision} from --formats")
        raise EdgeKDError(f"TensorRT cannot parse {Path(onnx_path).name}: {desc}", "check the ONNX export")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not strongly_typed():
        # TensorRT <= 10 (JetPack): weak typing, precision chosen by builder flags
        config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized in the QDQ model may use FP16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    # TensorRT 11 removed those flags: networks are strongly typed, the precision is the ONNX's own
    # (the FP16 ONNX for fp16, the QDQ ONNX for int8), which _export picks.
    # DETAILED keeps per-layer precision in the engine so the inspector can report what was built.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    one = (1, *input_shape)
    profile.set_shape(inp.name, one, one, (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeKDError(f"TensorRT failed to build the {precision} engine", "see the TensorRT log above")
    dest.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    layers = inspect_layers(engine)
    tag = {**device_info(), "precision": precision, "max_batch": max_batch, "input_shape": list(one),
           "workspace_mb": workspace_mb, "layer_precisions": layers["counts"]}
    Path(f"{dest}.json").write_text(json.dumps(tag, indent=2) + "\n")
    extra = {"tag": tag, "layers": layers["counts"]}
    if precision == "int8" and not layers["counts"].get("int8"):
        # The QDQ model asked for INT8 but TensorRT chose FP16/FP32 kernels everywhere (no INT8
        # tensor cores, e.g. Maxwell): report it instead of letting "int8" mislead.
        extra["fallback"] = "TensorRT built no INT8 layers: this GPU has no INT8 kernels for them; the engine runs FP16"
    return extra


def inspect_layers(engine) -> dict:
    """Count the engine's layers by the precision TensorRT actually chose for their outputs."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        outputs = layer.get("Outputs") or [{}]
        # "Format/Datatype" in TensorRT <= 10; 11 splits it into separate format and type fields
        fields = outputs[0] if isinstance(outputs[0], dict) else {}
        fmt = " ".join(str(v) for k, v in fields.items() if "type" in k.lower() or "format" in k.lower()).lower()
        kind = "int8" if "int8" in fmt else "fp16" if ("fp16" in fmt or "half" in fmt) else \
            "fp32" if ("fp32" in fmt or "float" in fmt) else "other"
        counts[kind] = counts.get(kind, 0) + 1
    return {"counts": counts}


def export_onnx_for_devices(model, example: np.ndarray, path: Path, opset: int = DEVICE_OPSET) -> Path:
    """ONNX at an opset old TensorRT parsers accept, through torch.onnx's TorchScript exporter.

    The dynamo exporter emits opset >= 18 and onnx's version converter cannot go below 14 for Relu,
    so the TorchScript exporter is the one path to a file TensorRT 8.2 on JetPack 4.6 can parse.
    """
    import onnx
    import onnxslim
    import torch

    x = torch.from_numpy(np.asarray(example[:1], dtype=np.float32))
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnxslim.slim(onnx.load(str(tmp)))
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def trtexec_command(onnx_name: str, engine_name: str, *, precision: str, input_shape, max_batch: int,
                    workspace_mb: int) -> list[str]:
    shape = "x".join(str(d) for d in input_shape)
    cmd = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}",
           f"--minShapes=input:1x{shape}", f"--optShapes=input:1x{shape}", f"--maxShapes=input:{max_batch}x{shape}",
           "--fp16", f"--timingCacheFile={Path(engine_name).stem}.timing.cache", "--profilingVerbosity=detailed",
           "--exportLayerInfo=" + engine_name + ".layers.json"]
    if precision == "int8":
        cmd.insert(cmd.index("--fp16") + 1, "--int8")  # QDQ layers INT8, the rest may use FP16
    cmd.append(f"--memPoolSize=workspace:{workspace_mb}")
    return cmd


BUILD_SCRIPT = """#!/bin/sh
# Build the {precision} TensorRT engine for {stem} on the device that will run it (engines are tied to the
# TensorRT version and GPU they were built on). Copy this script and {onnx} to the device, then: sh {script}
# Written by edgekd. Needs trtexec (JetPack: /usr/src/tensorrt/bin/trtexec) from TensorRT 8.2-10.x, which is
# what every JetPack ships (TensorRT 11 dropped --fp16/--int8 for strongly typed ONNX, and Jetson support).
set -e
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
# TensorRT < 8.4 (JetPack 4.x) names the workspace option --workspace (MiB) instead of --memPoolSize.
if "$TRTEXEC" --help 2>&1 | grep -q memPoolSize; then POOL="--memPoolSize=workspace:{workspace}"; else POOL="--workspace={workspace}"; fi
"$TRTEXEC" {args} "$POOL"
echo "built {engine}; layer precisions in {engine}.layers.json"
"""


def write_device_kit(job, dest: Path, precision: str) -> dict:
    """The ONNX (opset 13; QDQ for INT8), the exact trtexec command and a build script, next to each other."""
    stem = job.options.stem
    onnx_name = f"{stem}.trt.onnx" if precision == "fp16" else f"{stem}.trt.int8.onnx"
    onnx_path = dest.parent / onnx_name
    fp32 = job.cached("device-onnx", lambda: export_onnx_for_devices(
        job.model, job.example, job.scratch_path(f"{stem}.trt.onnx")))
    if precision == "int8":
        from edgekd.export.to_onnx import quantize_onnx

        src = job.cached(("device-qdq", job.options.calibration), lambda: quantize_onnx(
            fp32, job.calib, job.scratch_path(f"{stem}.trt.int8.onnx"), calibration=job.options.calibration,
            per_channel=job.options.per_channel, exclude=tuple(job.options.exclude)))
    else:
        src = fp32
    onnx_path.write_bytes(Path(src).read_bytes())
    engine = f"{stem}.{precision}.engine"
    input_shape = tuple(job.example.shape[1:])
    cmd = trtexec_command(onnx_name, engine, precision=precision, input_shape=input_shape,
                          max_batch=job.options.max_batch, workspace_mb=job.options.trt_workspace_mb)
    script = dest.parent / f"{stem}.{precision}.trtexec.sh"
    args = " ".join(shlex.quote(a) for a in cmd[1:] if not a.startswith("--memPoolSize"))
    script.write_text(BUILD_SCRIPT.format(precision=precision.upper(), stem=stem, onnx=onnx_name,
                                          script=script.name, workspace=job.options.trt_workspace_mb,
                                          args=args, engine=engine))
    script.chmod(0o755)
    return {"device_onnx": onnx_name, "device_opset": DEVICE_OPSET, "build_script": script.name,
            "trtexec": " ".join(shlex.quote(a) for a in cmd)}


def _export(job, dest: Path, precision: str) -> dict:
    if precision == "int8":
        src = job.onnx_qdq()
    elif strongly_typed():
        src = job.onnx_fp16()
    else:
        src = job.onnx_fp32()
    cache = job.options.trt_timing_cache or job.scratch_path("trt.timing.cache")
    extra = build_engine(src, dest, precision=precision, input_shape=tuple(job.example.shape[1:]),
                         max_batch=job.options.max_batch, workspace_mb=job.options.trt_workspace_mb,
                         timing_cache=Path(cache))
    if job.options.jetson:
        extra.update(write_device_kit(job, dest, precision))
    return extra


@register_format("tensorrt-fp16", format="tensorrt", precision="fp16", runtime="tensorrt",
                 filename="{stem}.fp16.engine", requires=("tensorrt",), install_hint=INSTALL, needs_gpu=True,
                 device_kit=lambda job, dest: write_device_kit(job, dest, "fp16"))
def export_tensorrt_fp16(job, dest: Path) -> dict:
    """TensorRT FP16 engine built from the FP32 ONNX (dynamic-batch profile, timing cache)."""
    return _export(job, dest, "fp16")


@register_format("tensorrt-int8", format="tensorrt", precision="int8", runtime="tensorrt",
                 filename="{stem}.int8.engine", requires=("tensorrt",), install_hint=INSTALL, needs_gpu=True,
                 device_kit=lambda job, dest: write_device_kit(job, dest, "int8"))
def export_tensorrt_int8(job, dest: Path) -> dict:
    """TensorRT INT8 engine built from the QDQ ONNX (explicit quantization), layer precisions inspected."""
    return _export(job, dest, "int8")
