"""`edgekd predict`: per-kernel and total predicted latency of a model on a target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekd.errors import EdgeKDError


def _torchvision_onnx(name: str, shape: list[int]) -> Path:
    """Export a torchvision architecture with random weights (latency does not depend on the values)."""
    import hashlib

    import torch
    import torchvision

    from edgekd.hardware.graph import export_onnx
    from edgekd.hardware.targets import cache_dir

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see torchvision.models.list_models()"
        raise EdgeKDError(f"unknown torchvision model {name!r}", hint)
    key = hashlib.sha256(f"{name}|{shape}|{torch.__version__}|{torchvision.__version__}".encode()).hexdigest()[:16]
    path = cache_dir() / "graphs" / f"torchvision-{name}-{'x'.join(map(str, shape))}-{key}.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        export_onnx(torchvision.models.get_model(name, weights=None), shape, path)
    return path


def _run_dir_onnx(run_dir: Path) -> tuple[Path, list[int] | None]:
    """The student's FP32 ONNX in a run folder, and its input shape from report.json."""
    from edgekd.report import REPORT_NAME, load_report

    shape = None
    if (run_dir / REPORT_NAME).is_file():
        data = load_report(run_dir)
        in_shape = (data.get("data") or {}).get("input_shape")
        if in_shape:
            shape = [1, *in_shape]
        for art in data.get("artifacts", []):
            if art.get("format") == "onnx" and art.get("precision") == "fp32" and art.get("role", "student") == "student" \
                    and art.get("status", "ok") == "ok" and art.get("path"):
                return run_dir / art["path"], shape
    found = sorted(run_dir.rglob("*.onnx"))
    if not found:
        raise EdgeKDError(f"{run_dir} holds no ONNX model", "pass a run folder written by `edgekd distill`, or --onnx FILE")
    return found[0], shape


def resolve_model(model: str | None, onnx_file: str | None, run_dir: str | None, input_shape: str | None):
    """One of --model torchvision:NAME, --onnx FILE, RUN_DIR -> (onnx path, input shape or None)."""
    from edgekd.modelfile import parse_shape

    given = [x for x in (model, onnx_file, run_dir) if x]
    if len(given) != 1:
        raise EdgeKDError("give exactly one model", "pass --model torchvision:NAME, --onnx FILE or a run folder")
    shape = list(parse_shape(input_shape, "--input")) if input_shape else None
    if model:
        source, _, name = model.partition(":")
        if source != "torchvision" or not name:
            raise EdgeKDError(f"cannot read --model {model!r}", "write it as torchvision:NAME, e.g. torchvision:resnet18")
        shape = shape or [1, 3, 224, 224]
        if len(shape) == 3:
            shape = [1, *shape]
        return _torchvision_onnx(name, shape), shape
    if onnx_file:
        path = Path(onnx_file)
        if not path.is_file():
            raise EdgeKDError(f"ONNX file {path} does not exist", "check the path")
        return path, shape
    path, report_shape = _run_dir_onnx(Path(run_dir))
    return path, shape or report_shape


@click.command("predict")
@click.option("--target", "-t", required=True, help="Target name (see `edgekd targets`) or a profile .yaml path.")
@click.option("--model", "model", help="torchvision:NAME, exported with random weights (e.g. torchvision:resnet18).")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False), help="An ONNX file.")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--input", "input_shape", help="Input shape NxCxHxW (default: the model's own, 1x3x224x224 for torchvision).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Default: the target's precision.")
@click.option("--measure", is_flag=True, help="Also time the model here with ONNX Runtime (target host only).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (with predicted_ms) instead of tables.")
def command(target, model, onnx_file, run_dir, input_shape, precision, measure, as_json):
    """Predict a model's latency on a target, kernel by kernel (after the runtime's fusions)."""
    from edgekd.hardware import load_target, predict_latency_ms

    tgt = load_target(target)
    path, shape = resolve_model(model, onnx_file, run_dir, input_shape)
    pred = predict_latency_ms(path, tgt, input_shape=shape, precision=precision)
    out = pred.to_dict()
    out["model"] = str(path)
    if measure:
        if not tgt.measured:
            raise EdgeKDError(f"--measure times the model on this machine, which is not {tgt.name}", "use --target host")
        from edgekd.hardware.measure import measure_onnx_ms

        m = measure_onnx_ms(path, threads=tgt.threads, input_shape=shape)
        out["measured_ms"] = {"p50": m["p50"], "p90": m["p90"], "runs": m["runs"]}
        out["error_pct"] = 100.0 * (pred.total_ms - m["p50"]) / m["p50"]
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title=f"{Path(path).name} on {tgt.name} ({tgt.runtime}, {pred.precision})")
    for col in ("#", "kernel", "class", "MFLOPs", "KB moved", "ms", "%"):
        table.add_column(col, justify="left" if col in ("kernel", "class") else "right")
    total = pred.total_ms or 1.0
    for i, layer in enumerate(pred.layers):
        table.add_row(str(i), "+".join(layer["ops"]), layer["op_class"], f"{layer['flops'] / 1e6:.3f}",
                      f"{layer['bytes'] / 1024:.1f}", f"{layer['ms']:.4f}", f"{100 * layer['ms'] / total:.1f}")
    table.add_row("", "per-inference overhead", "", "", "", f"{pred.fixed_ms:.4f}", f"{100 * pred.fixed_ms / total:.1f}")
    console.print(table)
    console.print(f"predicted {pred.total_ms:.4g} ms  ({pred.latency_source}; {pred.flops / 1e6:.2f} MFLOPs, "
                  f"{len(pred.layers)} kernels, {pred.memory_mb:.2f} MB weights + peak activations)")
    if measure:
        console.print(f"measured  {out['measured_ms']['p50']:.4g} ms p50 here (error {out['error_pct']:+.1f}%)")
    for note in pred.notes:
        console.print(f"note: {note}")
