"""`edgekd runner --out edgekd_runner.py`: write the standalone on-device latency runner."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("runner")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgekd_runner.py"), show_default=True,
              help="Where to write the script (a folder gets edgekd_runner.py).")
def command(out: Path) -> None:
    """Write a single-file latency runner to copy to a device.

    It needs Python >= 3.6, numpy and one runtime (onnxruntime, openvino, tensorrt+pycuda or a LiteRT
    interpreter), times the model files it is given and writes a JSON that `edgekd ingest RESULTS.json
    RUN_DIR` merges into the run's report as measured:<device>.
    """
    from edgekd.bench.runner_script import write_runner_script

    path = write_runner_script(out)
    click.echo(f"wrote {path}")
    click.echo("on the device:  python3 edgekd_runner.py artifacts/*.onnx --device-name <target> --out results.json")
    click.echo("back here:      edgekd ingest results.json RUN_DIR")
