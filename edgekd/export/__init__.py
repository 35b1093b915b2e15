"""Export a PyTorch model to every deployment format: a format table, one exporter per format, parity checks."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd import events
from edgekd.errors import EdgeKDError, first_line
from edgekd.registry import Registry, import_modules

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


def _reference_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    if not len(x):
        return np.zeros((0,), np.float32)
    with torch.inference_mode():
        try:
            return np.concatenate([model(torch.from_numpy(x[i:i + 256])).float().numpy()
                                   for i in range(0, len(x), 256)])
        except RuntimeError:
            # models whose code pins the batch (x.view(1, -1)) take one image at a time
            return np.concatenate([model(torch.from_numpy(x[i:i + 1])).float().numpy() for i in range(len(x))])


@contextlib.contextmanager
def _quiet():
    """Silence the print()s and progress bars of ORT, NNCF, torch.onnx and ExecuTorch while they run."""
    import logging

    # NNCF imports torch's C++-extension helper, which logs a CUDA warning on GPU-less machines; the
    # ORT mobile converter and torch.export log INFO lines about temporary files.
    noisy = [logging.getLogger(n) for n in ("torch.utils.cpp_extension", "ort_format_model.utils",
                                            "torch._export", "torch.export", "nncf", "executorch")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def export_one(job: ExportJob, name: str, out_dir: Path, *, reference: np.ndarray | None,
               parity_inputs: np.ndarray | None, parity_label: str) -> Artifact:
    """Run one exporter into a staging folder, check parity, then move its files into ``out_dir``.

    Files appear in ``out_dir`` only after the artifact is complete and checked, main file last (an
    OpenVINO .xml only once its .bin is in place), so a crash never leaves a half artifact behind.
    """
    fmt: Format = FORMATS.get(name)
    row = dict(name=name, format=fmt.format, precision=fmt.precision, runtime=fmt.runtime)
    ok, why = fmt.available()
    if not ok and fmt.device_kit is None:
        return Artifact(**row, path=None, size_bytes=0, status="skipped", reason=why)
    filename = fmt.filename.format(stem=job.options.stem)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=out_dir))
    started = time.perf_counter()
    try:
        dest = staging / filename
        if not ok:
            return _ship_device_kit(job, fmt, dest, out_dir, row, why, started)
        with _quiet():
            extra = dict(fmt.export(job, dest) or {})
        if not dest.is_file():
            raise EdgeKDError(f"the {name} exporter wrote no {filename}")
        extra["export_seconds"] = round(time.perf_counter() - started, 3)
        check = None
        if reference is not None and parity_inputs is not None and extra.get("runnable", True):
            from edgekd.bench.runners import load_runner

            runner_ok, runner_why = _runtime_available(fmt.runtime)
            if runner_ok:
                with _quiet():
                    runner = load_runner(dest, runtime=fmt.runtime)
                    check = parity(reference, runner.run(parity_inputs), parity_label)
                if fmt.precision == "fp32":
                    tol = job.options.parity_tolerance * max(1.0, float(np.abs(reference).max()))
                    check["tolerance"] = tol
                    if check["max_abs_diff"] > tol:
                        raise EdgeKDError(
                            f"{name} logits differ from PyTorch by {check['max_abs_diff']:.3g} "
                            f"(tolerance {tol:.3g}) on {parity_label} inputs",
                            "an exporter or runtime changed the numerics; report the model")
            else:
                extra["parity_skipped"] = runner_why
        extra.pop("runnable", None)
        files = sorted(staging.iterdir(), key=lambda p: (p.name == filename, p.name))
        for f in files:  # main file last
            os.replace(f, out_dir / f.name)
        final = out_dir / filename
        size = sum((out_dir / f.name).stat().st_size for f in files)
        extra["files"] = [f.name for f in files]
        return Artifact(**row, path=final, size_bytes=size, status="ok", parity=check, extra=extra)
    except Exception as err:  # noqa: BLE001 - one format failing never aborts the others
        return Artifact(**row, path=None, size_bytes=0, status="failed", reason=one_line(err),
                        extra={"export_seconds": round(time.perf_counter() - started, 3)})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ship_device_kit(job, fmt: Format, dest: Path, out_dir: Path, row: dict, why: str, started: float) -> Artifact:
    """The artifact cannot be built here: write what the device needs to build it, and say so."""
    try:
        with _quiet():
            extra = dict(fmt.device_kit(job, dest) or {})
    except Exception as err:  # noqa: BLE001
        return Artifact(**row, path=None, size_bytes=0, status="skipped",
                        reason=f"{why} (and the device build kit failed: {one_line(err)})")
    files = sorted(dest.parent.iterdir(), key=lambda p: (p.suffix == ".sh", p.name))  # script last
    for f in files:
        os.replace(f, out_dir / f.name)
    extra["files"] = [f.name for f in files]
    extra["export_seconds"] = round(time.perf_counter() - started, 3)
    script = extra.get("build_script")
    reason = f"{why}; build it on the device with {script}" if script else why
    return Artifact(**row, path=None, size_bytes=0, status="skipped", reason=reason, extra=extra)


def _builds_on_device(runtime: str | None) -> bool:
    from edgekd.runtimes import RUNTIMES

    return runtime in RUNTIMES and RUNTIMES.get(runtime).builds_on_device


def _runtime_available(runtime: str) -> tuple[bool, str]:
    from edgekd.runtimes import RUNTIMES

    return RUNTIMES.get(runtime).available()


def export_all(model, formats, out_dir: str | os.PathLike, *, example: np.ndarray, calib: np.ndarray,
               parity_inputs: np.ndarray | None, progress: bool = True, parity_label: str = "test split",
               options: ExportOptions | None = None, target=None, console=None,  # console unused: events
               validation: tuple[np.ndarray, np.ndarray] | None = None) -> list[Artifact]:
    """Export ``model`` to each of ``formats`` in ``out_dir`` and check each against PyTorch.

    ``example`` fixes the input shape (batch is dynamic where the format allows), ``calib`` feeds
    INT8 calibration, ``parity_inputs`` are run through PyTorch and every artifact. A format that
    fails becomes ``status="failed"`` with a one-line reason; one that cannot run on this machine
    (TensorRT without a GPU) is ``"skipped"`` with the reason. Neither stops the other formats.
    ``target`` (an edgekd.hardware.Target) tailors device-specific outputs, e.g. the trtexec build
    command written next to the ONNX for a Jetson.

    With ``validation`` (normalised images, labels; a split disjoint from calibration and test), each
    quantized artifact's top-1 accuracy is measured against the PyTorch model's; a drop over
    ``options.max_drop`` triggers the format's remedies (per-channel vs per-tensor, calibration
    method, sensitive layers kept in float, NNCF accuracy control), the best measured is kept, what
    was tried is recorded in ``extra["accuracy_gate"]``, and an artifact still over the limit fails.
    """
    names = resolve_formats(formats)
    options = options or ExportOptions()
    if target is not None and _builds_on_device(getattr(target, "runtime", None)):
        # Engines are device-specific: for a TensorRT device ship the ONNX plus the exact build command.
        options.jetson = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    parity_x = _as_batch(parity_inputs, "parity") if parity_inputs is not None else None
    reference = _reference_logits(model, parity_x) if parity_x is not None else None
    artifacts: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=out_dir) as scratch:
        job = ExportJob(model, example=example, calib=calib, options=options, scratch=Path(scratch))
        val_reference = None
        if validation is not None:
            val_x, val_y = _as_batch(validation[0], "validation"), np.asarray(validation[1])
            job.validation = (val_x, val_y)
            val_reference = float((_reference_logits(model, val_x).argmax(1) == val_y).mean())
        with events.progress("export", "export", total=len(names)) if progress else contextlib.nullcontext() as bar:
            for i, name in enumerate(names, 1):
                if bar is not None:
                    bar.update(i - 1, description=f"export {name}")
                art = export_one(job, name, out_dir, reference=reference, parity_inputs=parity_x,
                                 parity_label=parity_label)
                if val_reference is not None and art.ok and art.precision != "fp32":
                    art = _gate(job, art, out_dir, val_reference, reference=reference, parity_inputs=parity_x,
                                parity_label=parity_label)
                artifacts.append(art)
                _tell_exported(i, len(names), art)
            if bar is not None:
                bar.update(len(names))
    return artifacts


def _gate(job: ExportJob, art: Artifact, out_dir: Path, val_reference: float, **export_kw) -> Artifact:
    """Accuracy gate with remedies; each remedy is exported into its own scratch folder first."""
    from edgekd.export.accuracy import gate

    if not _runtime_available(art.runtime)[0]:
        art.extra["accuracy_gate"] = {"skipped": f"{art.runtime} cannot run here"}
        return art
    max_drop = job.options.max_drop
    trials = Path(tempfile.mkdtemp(prefix=".remedies-", dir=out_dir))
    try:
        def export_tracking(j: ExportJob) -> Artifact:
            candidate = export_one(j, art.name, Path(tempfile.mkdtemp(dir=trials)), **export_kw)
            candidate.extra["_options"] = {k: getattr(j.options, k) for k in ("calibration", "per_channel", "exclude")}
            return candidate

        try:
            best, tried = gate(job, art, export_tracking, validation=job.validation,
                               reference_accuracy=val_reference, max_drop=max_drop)
        except Exception as err:  # noqa: BLE001 - a broken gate must not hide the artifact's status
            art.extra["accuracy_gate"] = {"error": one_line(err)}
            return art
        if best is not art:
            chosen_options = best.extra.pop("_options", {})
            files = [best.path.parent / f for f in best.extra["files"]]
            for f in sorted(files, key=lambda p: p == best.path):
                os.replace(f, out_dir / f.name)
            for f in art.extra.get("files", []):
                if f not in best.extra["files"]:
                    (out_dir / f).unlink(missing_ok=True)
            best.path = out_dir / best.path.name
            if art.name == "ort-int8":
                job.qdq_overrides = chosen_options
        best.extra.pop("_options", None)
        final = max((t for t in tried if "val_accuracy" in t), key=lambda t: t["val_accuracy"])
        best.extra["accuracy_gate"] = {"validation_images": int(len(job.validation[1])),
                                       "reference_val_accuracy": val_reference, "max_drop": max_drop,
                                       "val_accuracy": final["val_accuracy"], "tried": tried,
                                       "passed": val_reference - final["val_accuracy"] <= max_drop}
        if not best.extra["accuracy_gate"]["passed"]:
            for f in best.extra.get("files", []):
                (out_dir / f).unlink(missing_ok=True)
            tried_names = ", ".join(t["remedy"] for t in tried[1:]) or "nothing (no remedies for this format)"
            best.status, best.path, best.size_bytes = "failed", None, 0
            best.reason = (f"validation accuracy {final['val_accuracy']:.4f} is "
                           f"{(val_reference - final['val_accuracy']) * 100:.2f} points below PyTorch "
                           f"({val_reference:.4f}), over the {max_drop * 100:g}-point limit; tried {tried_names}")
        return best
    finally:
        shutil.rmtree(trials, ignore_errors=True)


def _progress_line(i: int, n: int, art: Artifact) -> str:
    head = f"export [{i}/{n}] {art.name:<15}"
    secs = art.extra.get("export_seconds", 0.0)
    if art.status == "ok":
        text = f"{head} ok {secs:5.1f} s {art.size_bytes / 1e6:6.2f} MB"
        if art.parity:
            text += f" max|Δ| {art.parity['max_abs_diff']:.1e} top-1 {art.parity['top1_agreement'] * 100:.1f}%"
        return text
    return f"{head} {art.status}: {art.reason}"


def _tell_exported(i: int, n: int, art: Artifact) -> None:
    """An ``artifact_exported`` event (a ``warning`` for a format that failed)."""
    figures = {"format": art.name, "path": str(art.path) if art.path else None, "status": art.status,
               "size_mb": round(art.size_bytes / 1e6, 4) if art.size_bytes else None, "reason": art.reason}
    if art.status == "failed":
        events.warning(_progress_line(i, n, art), **figures)
    else:
        events.emit("artifact_exported", _progress_line(i, n, art), **figures)


# Exporters (to_*.py) register themselves in the format table on import; the table order ("all") is the
# import order: these first, then any other to_*.py in this folder, which is all a new format needs.
import_modules(__name__, __path__, prefix="to_", first=("to_onnx", "to_openvino", "to_executorch", "to_tensorrt",
                                                          "to_litert"))
from edgekd.export import accuracy as _accuracy  # noqa: E402,F401  (remedies per format)
