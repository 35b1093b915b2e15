"""`edgekd runner --out edgekd_runner.py`: write the standalone on-device latency runner."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


@click.command("runner")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgekd_runner.py"), show_default=True,
              help="Where to write the script (a folder gets edgekd_runner.py).")
@click.option("--overwrite", is_flag=True, help="Replace a file that already exists.")
def command(out: Path, overwrite: bool) -> None:
    """Write a single-file latency runner to copy to a device.

    It needs Python >= 3.6, numpy and one runtime (onnxruntime, openvino, tensorrt+pycuda or a LiteRT
    interpreter), times the model files it is given and writes a JSON that `edgekd ingest RESULTS.json
    RUN_DIR` merges into the run's report as measured:<device>.
    """
    from edgekd.bench.runner_script import write_runner_script

    path = write_runner_script(out, overwrite=overwrite)
    click.echo(f"wrote {path}")
    # Quoted: a name with spaces pasted into a shell as printed must still be one argument.
    click.echo(f"on the device:  python3 {shlex.quote(path.name)} artifacts/*.onnx --device-name <target> "
               "--out results.json")
    click.echo("back here:      edgekd ingest results.json RUN_DIR")
