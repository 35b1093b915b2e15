"""`edgekd export` as a library call: load a run's student, a torchvision model or a user factory, export, report."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError

GENERATED = "generated"


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'1x3x224x224' or '3x224x224' -> (C, H, W)."""
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x") if d.strip())
    except ValueError:
        dims = ()
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3 or min(dims) < 1:
        raise EdgeKDError(f"--input {text!r} is not an input shape", "pass NxCxHxW or CxHxW, e.g. --input 1x3x224x224")
    return dims  # type: ignore[return-value]


def load_weights(model, path: str | Path):
    """Load a state dict from .safetensors, or from .pt/.pth with ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"weights file {path} does not exist", "check the --weights path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: a checkpoint from the internet must not be able to run code on load.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad header, pickle with code objects...
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:160]
        raise EdgeKDError(f"cannot read weights {path.name}: {first}",
                          "the file is truncated or not a state dict; re-save it with torch.save(model.state_dict()) "
                          "or safetensors") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise EdgeKDError(f"{path.name} holds no state dict of tensors", "save model.state_dict() instead")
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if mismatched:
        k = mismatched[0]
        raise EdgeKDError(f"weights {path.name} do not match the model: {len(mismatched)} tensors have other shapes "
                          f"(e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)",
                          "pass the architecture (and --num-classes) the weights were saved from")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise EdgeKDError(f"weights {path.name} do not match the model: {len(missing)} missing and "
                          f"{len(unexpected)} unexpected tensors (e.g. {example})",
                          "pass the architecture the weights were saved from")
    return model


def _torchvision_model(name: str, num_classes: int | None):
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        from edgekd.registry import suggest

        raise EdgeKDError(f"unknown torchvision model {name!r}", suggest(name, known, "torchvision model"))
    kwargs = {"num_classes": num_classes} if num_classes else {}
    # Random weights: nothing is downloaded at run time (pass --weights for trained ones).
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _factory_model(spec: str):
    path_text, _, factory = spec.rpartition(":")
    path = Path(path_text)
    if not factory or not path_text.endswith(".py"):
        raise EdgeKDError(f"--model {spec!r} is not FILE.py:FACTORY", "pass e.g. --model models/net.py:build")
    if not path.is_file():
        raise EdgeKDError(f"model file {path} does not exist", "check the --model path")
    # Importing the user's own model file is how a Python-defined model is obtained; it is their code.
    module_spec = importlib.util.spec_from_file_location(f"edgekd_user_model_{abs(hash(path.resolve()))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001
        raise EdgeKDError(f"importing {path} failed: {type(err).__name__}: {str(err)[:160]}", "fix the model file") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise EdgeKDError(f"{path} defines no callable {factory!r}", "name a function that returns an nn.Module")
    return fn()


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
            net = _torchvision_model(model.split(":", 1)[1], num_classes)
        else:
            net = _factory_model(model)
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
            splits = load_data(None if calib_data == "edgekd:mnist" else calib_data, **size)
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
               num_classes: int | None = None, options=None, progress: bool = True, console=None) -> dict:
    """Export a model to ``formats`` in ``out`` and write report.json (+ .md/.html); returns the report."""
    from edgekd.bench.runners import load_runner
    from edgekd.export import ExportOptions, export_all, resolve_formats
    from edgekd.export.accuracy import accuracy
    from edgekd.fsutil import run_lock
    from edgekd.report import new_report, write_reports

    names = resolve_formats(formats)
    options = options or ExportOptions()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    net, info, shape, data_source = load_source(run_dir=run_dir, model=model, weights=weights,
                                                input_shape=input_shape, num_classes=num_classes)
    inputs = _inputs(net, shape, calib_data, data_source, model_ref=model)
    if info.get("random_weights"):
        info["batchnorm"] = reestimate_batchnorm(net, inputs["calib"])
    timings["load"] = round(time.perf_counter() - t0, 2)
    out = Path(out)
    with run_lock(out):
        t0 = time.perf_counter()
        test_x, test_y = inputs["test"]
        parity_x = test_x[:512]
        try:
            artifacts = export_all(net, names, out / "artifacts", example=parity_x[:1], calib=inputs["calib"],
                                   parity_inputs=parity_x, parity_label=inputs["label"], progress=progress,
                                   options=options, validation=inputs["validation"], console=console)
        except RuntimeError as err:
            raise EdgeKDError(f"the model does not run on a {'x'.join(map(str, shape))} input: {str(err)[:160]}",
                              "pass --input with the shape the model takes") from None
        timings["export"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        rows = []
        reference_acc = None
        if test_y is not None:
            from edgekd.bench.runners import PyTorchRunner

            reference_acc = accuracy(PyTorchRunner.from_module(net).run, test_x, test_y)
        rows.append({"name": "pytorch", "role": "student", "format": "pytorch", "precision": "fp32",
                     "runtime": "pytorch", "path": None, "size_bytes": None, "status": "ok", "reason": None,
                     "accuracy": reference_acc, "accuracy_drop": 0.0 if reference_acc is not None else None,
                     "parity": None, "extra": {"params": info["params"]}})
        for art in artifacts:
            row = {"role": "student", **art.to_dict(relative_to=out), "accuracy": None, "accuracy_drop": None}
            if reference_acc is not None and art.ok:
                try:
                    row["accuracy"] = accuracy(load_runner(art).run, test_x, test_y)
                    row["accuracy_drop"] = round(reference_acc - row["accuracy"], 6)
                except EdgeKDError as err:
                    row["extra"]["accuracy_error"] = str(err)
                if row["accuracy_drop"] is not None and row["accuracy_drop"] > options.max_drop:
                    row["status"] = "failed"
                    row["reason"] = (f"test accuracy {row['accuracy']:.4f} is {row['accuracy_drop'] * 100:.2f} points "
                                     f"below PyTorch, over --max-drop {options.max_drop * 100:g}")
            rows.append(row)
        timings["accuracy"] = round(time.perf_counter() - t0, 2)
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
        write_reports(out, report)
    return report
