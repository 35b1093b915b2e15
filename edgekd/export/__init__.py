"""Export a PyTorch model to every deployment format: a format table, one exporter per format, parity checks."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edgekd import events
from edgekd.errors import EdgeKDError
from edgekd.export.base import (  # noqa: F401  (the export API in one import)
    CALIBRATION_METHODS, FORMATS, Artifact, ExportOptions, Format, _as_batch, one_line, parity,
    register_format, resolve_formats,
)
from edgekd.export.job import ExportJob
from edgekd.registry import import_modules


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
            runner_ok, runner_why = _runtime_available(fmt.runtime)
            if runner_ok:
                from edgekd.export.accuracy import artifact_runner

                with _quiet():
                    runner = artifact_runner(Artifact(**row, path=dest, size_bytes=0, status="ok"))
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
               options: ExportOptions | None = None, target=None,
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
