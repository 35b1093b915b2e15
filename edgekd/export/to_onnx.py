"""ONNX family: FP32 export (torch.onnx dynamo + onnxslim + full check) and ONNX Runtime INT8 (static QDQ)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.base import register_format
from edgekd.fsutil import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx_file(model, example: np.ndarray, path: Path, *, opset: int = 18) -> Path:
    """Export ``model`` to a checked, simplified FP32 ONNX with a dynamic batch dimension.

    torch.export specialises a dimension whose example size is 1, so the example is tiled to a batch
    of 2 before tracing. Models whose code pins the batch size (``x.view(1, -1)``) fall back to a
    static batch of 1, recorded in the model's metadata; runners then feed one image at a time.
    """
    import onnx
    import onnxslim
    import torch

    x = torch.from_numpy(np.repeat(np.asarray(example[:1], dtype=np.float32), 2, axis=0))
    dynamic = True
    try:
        program = torch.onnx.export(
            model, (x,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            verbose=False, optimize=True)
    except Exception as err:  # noqa: BLE001
        if not _is_dynamic_shape_error(err):
            raise EdgeKDError(*_explain_export_error(err, "onnx")) from None
        dynamic = False
        try:
            program = torch.onnx.export(model, (x[:1],), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        verbose=False, optimize=True)
        except Exception as err2:  # noqa: BLE001
            raise EdgeKDError(*_explain_export_error(err2, "onnx")) from None
    proto = program.model_proto
    # onnxslim folds constants and removes the identity/shape noise torch.export leaves behind;
    # the simplified graph is what ORT, OpenVINO and TensorRT all parse best.
    proto = onnxslim.slim(proto)
    meta = {"producer": "edgekd", "dynamic_batch": str(dynamic).lower(), "input_layout": "NCHW float32 normalised"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"edgekd.{key}", value
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(path)


def _chain(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _is_dynamic_shape_error(err: BaseException) -> bool:
    """True when torch.export refused the dynamic batch (the model pins it), not for other failures."""
    for e in _chain(err):
        name = type(e).__name__
        text = str(e)
        if name in ("ConstraintViolationError", "UserError") or "Constraints violated" in text \
                or "specialized" in text or "marked as dynamic" in text or "is inconsistent" in text:
            return True
    return False


def _explain_export_error(err: BaseException, fmt: str) -> tuple[str, str]:
    """One line naming the operator a format cannot take, or the root cause of the failure."""
    import re

    chain = _chain(err)
    text = "\n".join(str(e) for e in chain)
    for pattern in (r"No ONNX function found for <OpOverload\(op='([\w.:]+)'",
                    r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]",
                    r"[Uu]nsupported (?:op|operator|node)\w*[:\s]+'?([\w.:]+)"):
        match = re.search(pattern, text)
        if match:
            op = match.group(1)
            return (f"the {fmt} format cannot take operator {op}",
                    f"replace {op} in the model with supported ops, or drop {fmt} from --formats")
    root = chain[-1]
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0])[:200] if lines else ""
    if type(root).__name__.startswith("GuardOnDataDependent"):
        return (f"{fmt} export failed: the model branches on tensor values ({first})",
                "replace Python if/while on tensor values with torch.where or torch.cond")
    return (f"{fmt} export failed: {type(root).__name__}: {first}",
            f"drop {fmt} from --formats or simplify the model")


def quantize_onnx(model_path: Path, calib: np.ndarray, out_path: Path, *, calibration: str = "minmax",
                  per_channel: bool = True, exclude: tuple[str, ...] = (), batch: int = 32) -> Path:
    """Static INT8 quantization of an FP32 ONNX into QDQ form that TensorRT can also build.

    TensorRT accepts only symmetric INT8 (zero point 0) for weights and activations, so both are
    signed and symmetric; weights get per-output-channel scales. TensorRT's parser also rejects
    INT32 bias DequantizeLinear and QDQ pairs shared by several consumers, so biases stay float and
    every consumer gets its own pair (ONNX Runtime's CPU fusions were checked to be identical either
    way). ``quant_pre_process`` runs shape inference and folds BatchNorm into Conv first, so there is
    one scale per fused conv.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibration not in methods:
        raise EdgeKDError(f"unknown calibration method {calibration!r}", f"use one of {', '.join(methods)}")
    if len(calib) == 0:
        raise EdgeKDError("INT8 calibration needs images and none were given", "pass --calib-data")
    out_path = Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=False)

    import onnx

    input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    batches = [{input_name: calib[i:i + batch]} for i in range(0, len(calib), batch)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    with atomic_path(out_path) as tmp:
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[calibration], nodes_to_exclude=list(exclude) or None,
                        extra_options=extra)
    pre.unlink(missing_ok=True)
    return out_path


def onnx_ops(path: Path) -> dict[str, int]:
    """Operator histogram of an ONNX file (which ops a quantized model actually runs)."""
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(node.op_type for node in model.graph.node))


@register_format("onnx", format="onnx", precision="fp32", runtime="onnxruntime", filename="{stem}.onnx",
                 requires=("onnx", "onnxscript", "onnxslim"))
def export_onnx(job, dest: Path) -> dict:
    """ONNX FP32: torch.onnx dynamo export, dynamic batch, onnxslim, onnx.checker full check."""
    src = job.onnx_fp32()
    shutil.copyfile(src, dest)
    import onnx

    model = onnx.load(str(dest), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return {"opset": job.options.opset, "dynamic_batch": meta.get("edgekd.dynamic_batch") == "true",
            "nodes": len(model.graph.node)}


@register_format("ort-int8", format="onnx", precision="int8", runtime="onnxruntime", filename="{stem}.int8.onnx",
                 requires=("onnx", "onnxscript", "onnxslim", "onnxruntime"))
def export_ort_int8(job, dest: Path) -> dict:
    """ONNX Runtime INT8: static QDQ, per-channel symmetric weights, calibrated (TensorRT-compatible)."""
    src = job.onnx_qdq()
    shutil.copyfile(src, dest)
    ops = onnx_ops(dest)
    return {"calibration": job.options.calibration, "per_channel": job.options.per_channel,
            "symmetric": True, "quant_format": "QDQ", "excluded": list(job.options.exclude),
            "calib_images": int(len(job.calib)), "quantize_linear_nodes": ops.get("QuantizeLinear", 0)}


@register_format("ort-fp16", format="onnx", precision="fp16", runtime="onnxruntime", filename="{stem}.fp16.onnx",
                 requires=("onnx", "onnxscript", "onnxslim", "onnxruntime"))
def export_ort_fp16(job, dest: Path) -> dict:
    """ONNX FP16 weights and activations with float32 inputs/outputs (GPUs and ARM CPUs with FP16 units)."""
    shutil.copyfile(job.onnx_fp16(), dest)
    return {"keep_io_types": True, "opset": job.options.opset}


def convert_onnx_fp16(src: Path, dest: Path) -> Path:
    """FP16 weights and compute, float32 inputs/outputs (also what strongly typed TensorRT builds from)."""
    import onnx
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: callers keep feeding float32 NCHW and reading float32 logits; casts sit inside.
    half = convert_float_to_float16(model, keep_io_types=True)
    # the converter appends its input casts at the end of the node list; onnxslim re-sorts the graph
    # topologically (which onnx.checker requires) and folds casts of constants.
    half = onnxslim.slim(half)
    onnx.checker.check_model(half, full_check=True)
    with atomic_path(dest) as tmp:
        onnx.save(half, str(tmp))
    return Path(dest)


@register_format("ort-mobile", format="onnx", precision="fp32", runtime="onnxruntime", filename="{stem}.ort",
                 requires=("onnx", "onnxscript", "onnxslim", "onnxruntime"))
def export_ort_mobile(job, dest: Path) -> dict:
    """ONNX Runtime mobile format (.ort) plus the reduced operator/type config for a minimal ORT build."""
    import logging

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    # its logger is created at DEBUG on import and would print the scratch paths
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)

    stem = dest.stem
    work = job.scratch_path("ort-mobile")
    work.mkdir(exist_ok=True)
    src = work / f"{stem}.onnx"
    shutil.copyfile(job.onnx_fp32(), src)
    # Fixed optimisation style: the graph is optimised now, so the phone needs no optimiser; the
    # NCHWc x86 layout is excluded by the tool, so the file runs on ARM too.
    convert_onnx_models_to_ort(src, output_dir=work / "out", optimization_styles=[OptimizationStyle.Fixed],
                               target_platform="arm", enable_type_reduction=True)
    out = work / "out"
    ort_file = out / f"{stem}.ort"
    configs = sorted(out.glob("*.config"))
    if not ort_file.is_file():
        raise EdgeKDError("the ONNX Runtime converter wrote no .ort file")
    shutil.move(str(ort_file), dest)
    extra = {"optimization_style": "fixed", "target_platform": "arm"}
    if configs:
        config = dest.with_name(f"{stem}.ort.required_operators_and_types.config")
        ops = [ln for ln in configs[0].read_text().splitlines() if ln and not ln.startswith("#")]
        config.write_text(f"# Generated by edgekd from {dest.name}\n" + "\n".join(ops) + "\n")
        extra.update({"operator_config": config.name, "operator_config_lines": len(ops),
                      "build_hint": f"./build.sh --minimal_build --include_ops_by_config {config.name}"})
    return extra
