"""The export job: the model, its inputs and options, and the intermediates several formats share."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.export.base import ExportOptions, _as_batch


class ExportJob:
    """What every exporter receives: the model, its inputs, options, and shared intermediates.

    Several formats start from the same FP32 ONNX (OpenVINO, ORT INT8, TensorRT) or the same QDQ
    model (TensorRT INT8); the job builds each intermediate once, in a scratch folder, and caches
    failures too so that one broken ONNX export is reported once per format instead of re-run.
    """

    def __init__(self, model, *, example: np.ndarray, calib: np.ndarray, options: ExportOptions, scratch: Path):
        self.model = model.eval()
        self.example = _as_batch(example, "example")
        self.calib = _as_batch(calib, "calib")
        self.options = options
        self.scratch = Path(scratch)
        self.validation: tuple[np.ndarray, np.ndarray] | None = None
        # QDQ settings the accuracy gate found best for ort-int8; tensorrt-int8 builds from the same QDQ
        self.qdq_overrides: dict = {}
        self._cache: dict = {}

    def cached(self, key, build: Callable[[], object]):
        if key not in self._cache:
            try:
                self._cache[key] = (True, build())
            except Exception as err:  # noqa: BLE001 - re-raised below for every format that needs it
                self._cache[key] = (False, err)
        ok, value = self._cache[key]
        if not ok:
            raise value
        return value

    def scratch_path(self, name: str) -> Path:
        return self.scratch / name

    def onnx_fp32(self) -> Path:
        """The checked, simplified FP32 ONNX every ONNX-based format starts from."""
        from edgekd.export.to_onnx import export_onnx_file

        return self.cached("onnx-fp32", lambda: export_onnx_file(
            self.model, self.example, self.scratch_path("fp32.onnx"), opset=self.options.opset))

    def onnx_fp16(self) -> Path:
        """FP16 weights and compute with float32 inputs/outputs (ort-fp16, and what strongly typed TensorRT builds from)."""
        from edgekd.export.to_onnx import convert_onnx_fp16

        return self.cached("onnx-fp16", lambda: convert_onnx_fp16(self.onnx_fp32(), self.scratch_path("fp16.onnx")))

    def onnx_qdq(self, *, calibration: str | None = None, per_channel: bool | None = None,
                 exclude: tuple[str, ...] | None = None) -> Path:
        """The static QDQ INT8 ONNX (TensorRT-compatible: symmetric INT8, zero points 0)."""
        from edgekd.export.to_onnx import quantize_onnx

        defaults = {"calibration": self.options.calibration, "per_channel": self.options.per_channel,
                    "exclude": tuple(self.options.exclude), **self.qdq_overrides}
        calibration = calibration or defaults["calibration"]
        per_channel = defaults["per_channel"] if per_channel is None else per_channel
        exclude = tuple(defaults["exclude"] if exclude is None else exclude)
        key = ("qdq", calibration, per_channel, exclude)
        tag = f"{calibration}-{'pc' if per_channel else 'pt'}-{abs(hash(exclude)) % 10**8}"
        return self.cached(key, lambda: quantize_onnx(
            self.onnx_fp32(), self.calib, self.scratch_path(f"qdq-{tag}.onnx"),
            calibration=calibration, per_channel=per_channel, exclude=exclude))
