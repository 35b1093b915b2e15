"""The export format table and what every exporter shares: the format descriptor and its registration,
the options, the artifact record, the parity check. Exporters (``to_*.py``) import this module, not the
package, so that the package can import them without an import cycle."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgekd.errors import EdgeKDError, first_line
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.export.job import ExportJob

FORMATS: Registry = Registry("export format")

#: what "all" means for ``--formats``: every registered format, in table order
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Format:
    """One row of the format table: what the artifact is, which runtime runs it, how it is made."""

    name: str                       # key users type: "ort-int8"
    format: str                     # file family: "onnx" | "openvino" | "executorch" | "tensorrt"
    precision: str                  # "fp32" | "fp16" | "int8"
    runtime: str                    # a registered runtime (edgekd.runtimes)
    filename: str                   # "{stem}.int8.onnx": the main file written into out_dir
    export: Callable[["ExportJob", Path], dict]
    requires: tuple[str, ...] = ()  # modules that must import for the exporter to run
    install_hint: str = ""
    needs_gpu: bool = False
    description: str = ""
    # where the artifact cannot be built here (TensorRT without a GPU), what to ship instead so the
    # device can build it: fn(job, dest) -> extra, writing files beside dest
    device_kit: Callable[["ExportJob", Path], dict] | None = None

    def available(self) -> tuple[bool, str]:
        import importlib.util

        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return False, f"{module} is not importable: {self.install_hint or 'pip install ' + module}"
        if self.needs_gpu:
            import torch

            if not torch.cuda.is_available():
                return False, f"{self.name} needs an NVIDIA GPU with CUDA and none is visible; " \
                              "build the engine on the device with the trtexec command written next to the ONNX"
        return True, "ok"


def register_format(name: str, *, format: str, precision: str, runtime: str, filename: str,
                    requires: tuple[str, ...] = (), install_hint: str = "", needs_gpu: bool = False,
                    description: str = "", device_kit=None):
    """Decorator: add an exporter ``fn(job, dest) -> extra`` to the format table."""

    def decorator(fn):
        FORMATS.add(name, Format(name, format, precision, runtime, filename, fn, requires, install_hint,
                                 needs_gpu, description or ((fn.__doc__ or "").strip().splitlines() or [""])[0], device_kit))
        return fn

    return decorator


@dataclass
class Artifact:
    """One exported file and what is known about it (the ``artifacts[]`` rows of report.json)."""

    name: str
    format: str
    precision: str
    runtime: str
    path: Path | None
    size_bytes: int
    status: str                     # "ok" | "failed" | "skipped"
    reason: str | None = None
    parity: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self, relative_to: Path | None = None) -> dict:
        path = self.path
        if path is not None and relative_to is not None:
            try:
                path = Path(os.path.relpath(path, relative_to))
            except ValueError:
                pass
        return {"name": self.name, "format": self.format, "precision": self.precision,
                "runtime": self.runtime, "path": str(path) if path is not None else None,
                "size_bytes": self.size_bytes, "status": self.status, "reason": self.reason,
                "parity": self.parity, "extra": self.extra}

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ExportOptions:
    """Knobs shared by the exporters; defaults are what ``edgekd distill`` uses."""

    stem: str = "model"
    opset: int = 18
    calibration: str = "minmax"            # ORT calibration method: minmax | entropy | percentile
    per_channel: bool = True               # per-output-channel weight scales (ORT, TensorRT)
    exclude: tuple[str, ...] = ()          # ONNX node names kept in float (ORT/TensorRT QDQ; OpenVINO ignored scope)
    max_batch: int = 64                    # bound of the batch dimension where a runtime plans memory for it
    parity_tolerance: float = 1e-4         # FP32 artifacts: max |logit difference| allowed vs PyTorch
    trt_workspace_mb: int = 1024
    trt_timing_cache: Path | None = None   # shared between builds so rebuilding is fast
    jetson: bool = False                   # also write the trtexec command and build script next to the ONNX
    ov_preset: str = "performance"         # NNCF preset: performance (symmetric) | mixed (asymmetric activations)
    ov_accuracy_control: bool = False      # nncf.quantize_with_accuracy_control on the validation images
    max_drop: float = 0.01                 # accuracy gate: largest top-1 drop (fraction) a quantized artifact may have

    def __post_init__(self):
        import math

        if self.calibration not in CALIBRATION_METHODS:
            raise EdgeKDError(f"unknown calibration method {self.calibration!r}",
                              f"use one of {', '.join(CALIBRATION_METHODS)}")
        if not (isinstance(self.max_drop, (int, float)) and math.isfinite(self.max_drop) and 0 <= self.max_drop <= 1):
            raise EdgeKDError(f"--max-drop must be 0 to 100 points, got {self.max_drop * 100:g}", "e.g. --max-drop 1")
        from onnx.defs import onnx_opset_version

        newest = onnx_opset_version()  # the dynamo exporter starts at 18; onnx cannot check what it does not know
        if not 18 <= self.opset <= newest:
            raise EdgeKDError(f"--opset must be 18 to {newest}, got {self.opset}", "e.g. --opset 18")


def _as_batch(x, what: str) -> np.ndarray:
    if getattr(x, "lazy", False):  # edgekd.data.NormalizedImages: read a slice at a time, never all at once
        if x.ndim != 4 or x.dtype != np.float32:
            raise EdgeKDError(f"{what} inputs must be float32 NCHW, got {x.dtype} with shape {x.shape}",
                              "normalise images to float32 (N, C, H, W) before exporting")
        return x
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise EdgeKDError(f"{what} inputs must be a float NCHW array, got {x.dtype} with shape {x.shape}",
                          "normalise images to float32 (N, C, H, W) before exporting")
    return np.ascontiguousarray(x, dtype=np.float32)


def resolve_formats(formats) -> list[str]:
    """``"all"``, a comma-separated string or a list -> registered format names (validated)."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    names: list[str] = []
    for name in formats:
        if name == "all":
            names.extend(n for n in FORMATS.names() if n not in names)
            continue
        FORMATS.get(name)  # raises a one-line error with a suggestion
        if name not in names:
            names.append(name)
    if not names:
        raise EdgeKDError("no export formats given", f"pass --formats with some of: {', '.join(FORMATS.names())}, or all")
    return names


def one_line(err: BaseException, limit: int = 240) -> str:
    """A failure as one readable line (exporters raise long multi-line errors), with its type."""
    return first_line(err, limit, with_type=True)


def parity(reference: np.ndarray, outputs: np.ndarray, inputs_label: str) -> dict:
    """Numerical agreement of an artifact's logits with the PyTorch model's on the same inputs."""
    outputs = np.asarray(outputs, dtype=np.float32).reshape(reference.shape)
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float((outputs.argmax(1) == reference.argmax(1)).mean()) if len(reference) else 1.0,
        "inputs": inputs_label,
        "n": int(len(reference)),
        # the scale the differences are relative to (logits near 0 make any diff look small)
        "reference_max_abs": float(np.abs(reference).max()) if reference.size else 0.0,
    }



