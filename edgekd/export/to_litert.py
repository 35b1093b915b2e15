"""LiteRT (TensorFlow Lite) flatbuffers through litert-torch, for Android/embedded runtimes that take .tflite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.base import register_format

INSTALL = ("pip install 'edgekd[litert]' (checked with torch 2.14.1: litert-torch 0.10.0 keeps the pinned torch but "
           "pulls jax, transformers and ai-edge-litert)")


@register_format("litert", format="litert", precision="fp32", runtime="litert", filename="{stem}.tflite",
                 requires=("litert_torch", "ai_edge_litert"), install_hint=INSTALL)
def export_litert(job, dest: Path) -> dict:
    """LiteRT / TFLite FP32 flatbuffer converted by litert-torch (batch 1, the shape phones run)."""
    import litert_torch
    import torch

    from edgekd.export.to_onnx import _explain_export_error

    x = torch.from_numpy(np.ascontiguousarray(job.example[:1]))
    try:
        edge_model = litert_torch.convert(job.model, (x,))
    except Exception as err:  # noqa: BLE001
        raise EdgeKDError(*_explain_export_error(err, "litert")) from None
    edge_model.export(str(dest))
    return {"converter": f"litert-torch {getattr(litert_torch, '__version__', '?')}", "batch": 1}
