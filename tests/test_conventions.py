"""Habits the code base keeps: defaults written once, one error-line helper, declared imports, file modes, locks."""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDError, first_line

REPO = Path(__file__).resolve().parents[1]


def test_distill_cli_defaults_are_the_option_dataclasses():
    from edgekd.cli import option_defaults
    from edgekd.cli.distill import command
    from edgekd.distill import TrainConfig
    from edgekd.pipeline import DistillOptions, resume_command

    params = command.make_context("distill", []).params
    d, t = option_defaults(DistillOptions), option_defaults(TrainConfig)
    for name in ("target", "seed", "device", "temperature", "alpha", "loss", "bench_seconds"):
        assert params[name] == getattr(d, name), name
    assert params["max_drop"] == pytest.approx(d.max_drop * 100)  # points on the command line
    for name in ("mode", "generations", "finetune_epochs", "mixup"):
        assert params[name] == getattr(t, name), name
    # Nothing the user left at its default is repeated in the resume command.
    opts = DistillOptions(out="run", extra={"mode": t.mode, "generations": t.generations,
                                            "finetune_epochs": t.finetune_epochs})
    assert resume_command(opts) == "edgekd distill --target jetson-nano --out run --resume"
    assert "--consistent" in resume_command(DistillOptions(extra={"augment": True, "teacher_view": "same"}))
    assert "--consistent" not in resume_command(DistillOptions(extra={"augment": True, "teacher_view": "clean"}))


@pytest.mark.parametrize("err, expected", [
    (ValueError(""), "ValueError"),
    (ValueError("\n\n  \n"), "ValueError"),
    (RuntimeError("Exception from src/core.cpp:12:\nCheck 'x' failed\nthe real cause\nmore"), "the real cause"),
    (OSError("first\nsecond"), "first"),
    ("plain text\nnext", "plain text"),
    (KeyError(), "KeyError"),
])
def test_first_line_never_fails(err, expected):
    assert first_line(err) == expected
    assert first_line(err, with_type=True).endswith(expected)


def test_first_line_cuts_and_keeps_edgekd_messages_whole():
    assert first_line(ValueError("x" * 500), 50) == "x" * 47 + "..."
    assert first_line(EdgeKDError("what", "how"), with_type=True) == "what; how"
    assert first_line(ValueError("bad"), with_type=True) == "ValueError: bad"


def _declared() -> set[str]:
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_every_imported_package_is_declared():
    """A package edgekd imports is in pyproject.toml (core or an extra), so a clean install has it."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for path in (REPO / "edgekd").rglob("*.py"):
        if path.name == "device_runner.py":
            continue  # runs on the device: its runtime imports are the device's, not edgekd's
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "edgekd":
                    continue
                providers = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not providers & declared:
                    missing.setdefault(top, str(path.relative_to(REPO)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_weights_and_reports_have_the_same_file_mode(tmp_path):
    import torch

    from edgekd.fsutil import atomic_write_json
    from edgekd.models import ModelSpec, save_model

    spec = ModelSpec("cnn", 10, 1, width=0.25)
    torch.manual_seed(0)
    weights = save_model(tmp_path / "student.safetensors", spec.build(), spec)
    report = atomic_write_json(tmp_path / "report.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (weights, report)}
    assert modes == {0o666 & ~umask}


def test_the_run_lock_is_removed_when_the_run_ends(tmp_path):
    from edgekd.fsutil import LOCK_NAME, run_lock

    with run_lock(tmp_path / "run") as lock:
        assert lock.name == LOCK_NAME and lock.is_file()
        with pytest.raises(EdgeKDError, match="being written by another edgekd run"):
            with run_lock(tmp_path / "run"):
                pass
        assert lock.is_file()  # a refused second run does not remove the holder's lock
    assert list((tmp_path / "run").iterdir()) == []
    with run_lock(tmp_path / "run"):  # and the folder can be locked again
        pass
