"""`edgekd export` as a library call: load a run's student, a torchvision model or a user factory, export, report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.models.sources import call_factory, import_factory, load_weights, torchvision_model  # noqa: F401

GENERATED = "generated"


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'1x3x224x224' or '3x224x224' -> (C, H, W), small enough that the calibration images fit in memory."""
    from edgekd.hardware.measure import check_input_fits
    from edgekd.modelfile import parse_shape

    dims = parse_shape(text, "--input")
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3:
        raise EdgeKDError(f"--input {text!r} is not an input shape", "pass NxCxHxW or CxHxW, e.g. --input 1x3x224x224")
    check_input_fits((160, *dims), "exporting with generated calibration and parity images")
    return dims  # type: ignore[return-value]


def load_source(*, run_dir: Path | None, model: str | None, weights: Path | None, input_shape: str | None,
                num_classes: int | None = None):
    """The model to export, what it is, and its (C, H, W) input; plus the run's data source if any."""
    import torch

    data_source = None
    if run_dir is not None:
        if model is not None:
            raise EdgeKDError("pass either RUN_DIR or --model, not both", "see edgekd export --help")
        from edgekd.models import load_model

        from edgekd.report import REPORT_NAME, load_report

        if not (Path(run_dir) / REPORT_NAME).is_file():
            raise EdgeKDError(f"{run_dir} is not an edgekd run folder (no report.json)",
                              "pass the folder edgekd distill wrote, or --model")
        report = load_report(run_dir)
        student = Path(run_dir) / (report.get("student") or {}).get("path", "student.safetensors")
        net, spec, _ = load_model(weights or student)
        data = report.get("data") or {}
        shape = tuple(data.get("input_shape") or ()) or None
        data_source = data if data.get("source") else None  # the run's record: its splits and preprocessing
        info = {"source": f"run:{run_dir}", "arch": spec.arch, "width": spec.width, "depth": spec.depth}
    elif model is not None:
        if model.startswith("torchvision:"):
            net = torchvision_model(model.split(":", 1)[1], num_classes)
        else:
            net = call_factory(import_factory(model), model)
        if not isinstance(net, torch.nn.Module):
            raise EdgeKDError(f"--model {model} returned {type(net).__name__}, not a torch.nn.Module",
                              "the factory must return the model")
        if weights is not None:
            load_weights(net, weights)
        info = {"source": model, "weights": str(weights) if weights else "random (no --weights)"}
        shape = None
        if weights is None:
            info["random_weights"] = True
    else:
        raise EdgeKDError("nothing to export", "pass a run folder or --model torchvision:NAME | FILE.py:FACTORY")
    if input_shape:
        shape = parse_input_shape(input_shape)
    if shape is None:
        shape = (3, 224, 224)
    info["params"] = int(sum(p.numel() for p in net.parameters()))
    return net.eval(), info, tuple(shape), data_source


def reestimate_batchnorm(net, x: np.ndarray, batch: int = 16) -> str:
    """Give a randomly initialised model realistic BatchNorm statistics from ``x``.

    Freshly initialised torchvision models keep running_mean 0 / running_var 1, so activations shrink
    layer after layer and logits come out near 1e-9 (mobilenet_v3_small) or 1e-14 (efficientnet_b0):
    every format would then "match" PyTorch trivially. Re-estimating the statistics makes logits
    O(1), so parity and INT8 calibration measure something.
    """
    import torch

    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "none"
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            net(torch.from_numpy(x[i:i + batch]))
    net.eval()
    return f"re-estimated on {len(x)} generated inputs (random weights)"


def _inputs(net, shape, calib_data, data_source, *, seed: int = 0, model_ref: str | None = None):
    """(calib, validation, parity/test inputs and labels, data description, label for parity inputs)."""
    from edgekd.data import load_data, load_data_like
    from edgekd.data.preprocess import teacher_preprocess

    if calib_data is not None or data_source is not None:
        if calib_data is None:  # the run's own data, split and preprocessed exactly as the run did
            splits = load_data_like(data_source)
        else:  # the user's images at the model's input size and channels, with the model's own normalisation
            size = {"image_size": shape[1], "channels": shape[0]} if len(shape) == 3 and shape[1] == shape[2] else {}
            own = teacher_preprocess(model_ref) if model_ref else None
            if own and len(own["mean"]) == shape[0]:
                size.update(mean=own["mean"], std=own["std"], crop_pct=own["crop_pct"])
            splits = load_data(None if calib_data == "edgekd:mnist" else calib_data, **size, option="--calib-data")
        if tuple(splits.input_shape) != tuple(shape):
            raise EdgeKDError(f"the data's images are {'x'.join(map(str, splits.input_shape))} but the model takes "
                              f"{'x'.join(map(str, shape))}", "pass --input matching the data, or other --calib-data")
        val = splits.normalized("val")
        n_val = min(1000, len(val))
        return {"calib": np.asarray(splits.normalized("calib")), "validation": (val.head(n_val), splits.labels("val")[:n_val]),
                "test": (splits.normalized("test"), splits.labels("test")), "data": splits.describe(), "label": "test split"}
    # No data: calibration and parity on generated N(0, 1) images (normalised inputs), labelled so.
    rng = np.random.default_rng(seed)
    big = int(np.prod(shape)) > 50_000
    calib = rng.standard_normal((32 if big else 128, *shape)).astype(np.float32)
    parity = rng.standard_normal((16 if big else 128, *shape)).astype(np.float32)
    data = {"name": GENERATED, "source": GENERATED, "input_shape": list(shape),
            "note": "no --calib-data: calibration and parity use generated N(0,1) inputs; no accuracy is measured",
            "splits": {"calib": {"name": "calib", "size": len(calib)}, "test": {"name": "parity", "size": len(parity)}}}
    return {"calib": calib, "validation": None, "test": (parity, None), "data": data, "label": GENERATED}


def run_export(*, out: Path, formats, run_dir: Path | None = None, model: str | None = None,
               weights: Path | None = None, input_shape: str | None = None, calib_data: Path | None = None,
               num_classes: int | None = None, options=None, progress: bool = True,
               overwrite: bool = False) -> dict:
    """Export a model to ``formats`` in ``out`` and write report.json (+ .md/.html); returns the report.

    ``out`` is checked before any work: a folder that holds files is refused unless ``overwrite``, and
    the run folder being exported is never an output.
    """
    from edgekd.export import ExportOptions, resolve_formats
    from edgekd.fsutil import refuse_existing_output, run_lock, writable_folder
    from edgekd.report import write_reports

    names = resolve_formats(formats)
    out = Path(out)
    if run_dir is not None and out.resolve() == Path(run_dir).resolve():
        raise EdgeKDError(f"--out {out} is the run folder being exported", "choose another --out, e.g. RUN_DIR/export")
    refuse_existing_output(out, overwrite=overwrite)
    writable_folder(out)
    options = options or ExportOptions()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    net, info, shape, data_source = load_source(run_dir=run_dir, model=model, weights=weights,
                                                input_shape=input_shape, num_classes=num_classes)
    inputs = _inputs(net, shape, calib_data, data_source, model_ref=model)
    if info.get("random_weights"):
        info["batchnorm"] = reestimate_batchnorm(net, inputs["calib"])
    timings["load"] = round(time.perf_counter() - t0, 2)
    with run_lock(out):
        t0 = time.perf_counter()
        artifacts = _export_artifacts(net, names, out, inputs, shape, options, progress)
        timings["export"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        rows = _accuracy_rows(net, artifacts, inputs, out, options, info)
        timings["accuracy"] = round(time.perf_counter() - t0, 2)
        report = _export_report(names, info, shape, calib_data, options, inputs, rows, timings)
        write_reports(out, report)
    return report


def _export_artifacts(net, names, out: Path, inputs: dict, shape, options, progress: bool) -> list:
    from edgekd.export import export_all

    parity_x = inputs["test"][0][:512]
    try:
        return export_all(net, names, out / "artifacts", example=parity_x[:1], calib=inputs["calib"],
                          parity_inputs=parity_x, parity_label=inputs["label"], progress=progress,
                          options=options, validation=inputs["validation"])
    except RuntimeError as err:
        raise EdgeKDError(f"the model does not run on a {'x'.join(map(str, shape))} input: {str(err)[:160]}",
                          "pass --input with the shape the model takes") from None


def _accuracy_rows(net, artifacts, inputs: dict, out: Path, options, info: dict) -> list[dict]:
    """The PyTorch row and one row per artifact, with its test accuracy where the inputs carry labels;
    an artifact more than ``options.max_drop`` below PyTorch fails."""
    from edgekd.export.accuracy import accuracy
    from edgekd.export.accuracy import artifact_runner
    from edgekd.runtimes.pytorch import PyTorchRunner

    test_x, test_y = inputs["test"]
    reference_acc = accuracy(PyTorchRunner.from_module(net).run, test_x, test_y) if test_y is not None else None
    rows = [{"name": "pytorch", "role": "student", "format": "pytorch", "precision": "fp32",
             "runtime": "pytorch", "path": None, "size_bytes": None, "status": "ok", "reason": None,
             "accuracy": reference_acc, "accuracy_drop": 0.0 if reference_acc is not None else None,
             "parity": None, "extra": {"params": info["params"]}}]
    for art in artifacts:
        row = {"role": "student", **art.to_dict(relative_to=out), "accuracy": None, "accuracy_drop": None}
        if reference_acc is not None and art.ok:
            try:
                row["accuracy"] = accuracy(artifact_runner(art).run, test_x, test_y)
                row["accuracy_drop"] = round(reference_acc - row["accuracy"], 6)
            except EdgeKDError as err:
                row["extra"]["accuracy_error"] = str(err)
            if row["accuracy_drop"] is not None and row["accuracy_drop"] > options.max_drop:
                row["status"] = "failed"
                row["reason"] = (f"test accuracy {row['accuracy']:.4f} is {row['accuracy_drop'] * 100:.2f} points "
                                 f"below PyTorch, over --max-drop {options.max_drop * 100:g}")
        rows.append(row)
    return rows


def _export_report(names, info: dict, shape, calib_data, options, inputs: dict, rows: list[dict],
                   timings: dict) -> dict:
    from edgekd.report import new_report

    report = new_report("export", config={
        "formats": names, "model": info["source"], "weights": info.get("weights"),
        "input_shape": list(shape), "calib_data": str(calib_data) if calib_data else None,
        "opset": options.opset, "calibration": options.calibration, "per_channel": options.per_channel,
        "max_drop": options.max_drop})
    report["model"] = info
    report["data"] = inputs["data"]
    report["artifacts"] = rows
    report["timings_s"] = timings
    try:
        from edgekd.bench.env import environment

        report["environment"] = environment()
    except Exception:  # noqa: BLE001 - environment details are nice to have, never a reason to fail
        pass
    return report
