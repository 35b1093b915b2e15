"""The run folder: where a run may write, what a killed or failed run left there, and the report of a failure."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

from edgekd.version import __version__
from edgekd.errors import EdgeKDError

# report.json statuses of a run that did not finish: a rerun of the same command may replace the folder.
UNFINISHED = ("failed", "interrupted")


def default_out_dir(target: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("edgekd-runs") / f"{target}-{stamp}"


def run_status(out: Path) -> str | None:
    """The ``status`` of ``out/report.json`` ("ok" for a finished report without one); None when there is none."""
    path = out / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report.get("status", "ok") if isinstance(report, dict) else None


def holds_files(out: Path) -> bool:
    from edgekd.fsutil import LOCK_NAME

    return out.is_dir() and any(p.name != LOCK_NAME and not p.name.endswith(".tmp") for p in out.iterdir())


def prepare_out_dir(out: Path, *, overwrite: bool, resume: bool) -> bool:
    """Refuse to clobber a finished or foreign folder unless asked to; never half-create one early.

    Returns whether the folder is to be replaced: ``overwrite``, or a run there that failed (its report
    says so), which the same command may simply run again. An interrupted run needs --resume or --overwrite.
    """
    if out.exists() and not out.is_dir():
        raise EdgeKDError(f"--out {out} exists and is not a folder", "choose another --out")
    replace = overwrite
    if holds_files(out):
        if resume:
            if not (out / "config.json").is_file():
                raise EdgeKDError(f"--resume: {out} holds no edgekd run (config.json missing)",
                                  "point --out at the run folder to resume")
        elif run_status(out) == "failed":  # an interrupted run keeps its checkpoints for --resume
            replace = True
        elif not overwrite:
            raise EdgeKDError(f"output folder {out} already exists and is not empty",
                              "pass --overwrite to replace it, --resume to continue it, or choose another --out")
    # A probe file, not os.access: root passes that for /proc and read-only mounts, and the run would
    # find out only after the teacher trained.
    from edgekd.fsutil import writable_folder

    writable_folder(out, "--out")
    if out.is_dir():
        from edgekd.fsutil import run_lock

        with run_lock(out):  # fail now, not after the teacher, if another run is writing there
            pass
    return replace


def remove_stale_temporaries(out: Path) -> None:
    """Delete what a killed run left half-written: *.tmp files and export staging folders.

    Only called under the run lock, which proves the process that wrote them is gone.
    """
    for p in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and p.name.startswith((".staging-", ".scratch-")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)


def write_unfinished_report(out: Path, *, status: str, stage: str | None, error: str, config: dict | None,
                            target: dict | None = None, hint: str = "", command: str = "distill") -> Path:
    """report.json of a run that stopped after its folder existed: which stage, and why (``gate`` and
    ``report`` explain it; a rerun of the same command replaces the folder)."""
    from edgekd.fsutil import atomic_write_json
    from edgekd.report.schema import SCHEMA_VERSION

    report = {"schema_version": SCHEMA_VERSION, "edgekd_version": __version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
              "status": status, "failed_stage": stage, "error": error, "hint": hint, "artifacts": [],
              "config": config or {}, "target": target or {"name": (config or {}).get("target")}}
    atomic_write_json(out / "report.json", report)
    return out / "report.json"
