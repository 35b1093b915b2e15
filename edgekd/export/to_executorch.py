"""ExecuTorch (.pte) lowered to the XNNPACK backend, FP32 and INT8 through the PT2E quantization flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.base import register_format

REQUIRES = ("executorch", "torchao")
INSTALL = "pip install 'edgekd[mobile]' (executorch)"


def _export_program(model, example: np.ndarray, max_batch: int):
    """torch.export with a bounded dynamic batch (ExecuTorch plans memory for the bound).

    Falls back to a static batch of 1, the shape phones run, when the model's code pins the batch.
    Returns the program, the example inputs used and the dynamic-shape spec (None when static).
    """
    import torch

    from edgekd.export.to_onnx import _explain_export_error, _is_dynamic_shape_error

    x = torch.from_numpy(np.repeat(np.asarray(example[:1], dtype=np.float32), 2, axis=0))
    shapes = ({0: torch.export.Dim("batch", min=1, max=max(2, max_batch))},)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=shapes), (x,), shapes
    except Exception as err:  # noqa: BLE001
        if not _is_dynamic_shape_error(err):
            raise EdgeKDError(*_explain_export_error(err, "executorch")) from None
    try:
        return torch.export.export(model, (x[:1],)), (x[:1],), None
    except Exception as err:  # noqa: BLE001
        raise EdgeKDError(*_explain_export_error(err, "executorch")) from None


def _lower_and_write(program, dest: Path, fmt: str) -> dict:
    """Lower to XNNPACK, serialise, and report how much of the graph the delegate took."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgekd.export.to_onnx import _explain_export_error

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        et = edge.to_executorch()
    except Exception as err:  # noqa: BLE001
        raise EdgeKDError(*_explain_export_error(err, fmt)) from None
    graph = edge.exported_program().graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    names = [getattr(n.target, "__name__", str(n.target)) for n in calls]
    delegated = sum(1 for name in names if "executorch_call_delegate" in name)
    # Compute ops left outside the delegate run on ExecuTorch's portable kernels: correct but slow.
    glue = ("executorch_call_delegate", "getitem", "sym_size", "view", "alloc")
    portable = sorted({name for name in names if not any(g in name for g in glue)})
    dest.write_bytes(et.buffer)
    return {"backend": "xnnpack", "delegated_subgraphs": delegated, "non_delegated_ops": portable}


@register_format("executorch", format="executorch", precision="fp32", runtime="executorch", filename="{stem}.pte",
                 requires=REQUIRES, install_hint=INSTALL)
def export_executorch(job, dest: Path) -> dict:
    """ExecuTorch FP32 program lowered to XNNPACK (Android / iOS CPU)."""
    program, _, shapes = _export_program(job.model, job.example, job.options.max_batch)
    extra = _lower_and_write(program, dest, "executorch")
    extra["dynamic_batch"] = shapes is not None
    return extra


@register_format("executorch-int8", format="executorch", precision="int8", runtime="executorch",
                 filename="{stem}.int8.pte", requires=REQUIRES, install_hint=INSTALL)
def export_executorch_int8(job, dest: Path) -> dict:
    """ExecuTorch INT8 (PT2E: XNNPACKQuantizer, per-channel symmetric weights) lowered to XNNPACK."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(job.calib) == 0:
        raise EdgeKDError("INT8 calibration needs images and none were given", "pass --calib-data")
    per_channel = job.options.per_channel
    program, args, shapes = _export_program(job.model, job.example, job.options.max_batch)
    # Keeping single layers in float is not offered: XNNPACKQuantizer rejects a None config per module
    # ("not supported yet" in ExecuTorch 1.5), so the gate's remedy here is per-tensor vs per-channel.
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(program.module(), quantizer)
    step = 1 if shapes is None else min(32, job.options.max_batch)
    with torch.no_grad():
        for i in range(0, min(len(job.calib), 512), step):
            prepared(torch.from_numpy(job.calib[i:i + step]))
    quantized = convert_pt2e(prepared)
    program = torch.export.export(quantized, args, dynamic_shapes=shapes)
    extra = _lower_and_write(program, dest, "executorch-int8")
    extra.update({"dynamic_batch": shapes is not None, "per_channel": per_channel, "symmetric": True,
                  "quantizer": "XNNPACKQuantizer", "calib_images": int(min(len(job.calib), 512))})
    return extra
