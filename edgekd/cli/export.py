"""`edgekd export`: export and quantize a run's student or your own model to every deployment format."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--model", default=None,
              help="torchvision:NAME (random weights unless --weights) or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="State dict to load (.safetensors, or .pt/.pth read with weights_only=True).")
@click.option("--input", "input_shape", default=None, help="Input shape NxCxHxW, e.g. 1x3x224x224 (default: the data's).")
@click.option("--num-classes", type=click.IntRange(1, 1_000_000), default=None, help="Classifier size for torchvision models.")
@click.option("--formats", default="onnx,ort-int8,openvino-fp16,openvino-int8", show_default=True,
              help="Comma-separated formats, or all.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Labelled data (IDX folder, ImageFolder, .npz) for calibration, the accuracy gate and test "
                   "accuracy; without it, generated inputs are used and labelled so.")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="ONNX Runtime INT8 calibration method.")
@click.option("--per-tensor", is_flag=True, help="Per-tensor instead of per-channel INT8 weight scales.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Largest INT8 accuracy drop in points; remedies are tried above it, then the artifact fails.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (>= 18 for the dynamo exporter).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Write into an --out folder that already holds files.")
def command(run_dir, model, weights, input_shape, num_classes, formats, calib_data, calibration, per_tensor,
            max_drop, opset, out, overwrite) -> None:
    """Export RUN_DIR's student, or --model, to each of --formats, with parity and accuracy checks.

    Writes the artifacts under OUT/artifacts and OUT/report.json (+ report.md, report.html).
    """
    from edgekd.cli.render import make_console, print_report, rendering
    from edgekd.export import ExportOptions
    from edgekd.export.standalone import run_export

    options = ExportOptions(calibration=calibration, per_channel=not per_tensor, max_drop=max_drop / 100.0,
                            opset=opset)
    console = make_console()
    with rendering(console):
        report = run_export(out=out, formats=formats, run_dir=run_dir, model=model, weights=weights,
                            input_shape=input_shape, calib_data=calib_data, num_classes=num_classes,
                            options=options, overwrite=overwrite)
    print_report(console, report, selection=False)
    failed = [a["name"] for a in report["artifacts"] if a["status"] == "failed"]
    console.print(f"[bold]Wrote[/] {out / 'report.json'}"
                  + (f"  [red]failed: {', '.join(failed)}[/]" if failed else ""))
    from edgekd.errors import refuse_if_nothing_worked

    refuse_if_nothing_worked([a for a in report["artifacts"] if a.get("format") != "pytorch"], "format",
                             f"see the reasons in {out / 'report.md'}")
