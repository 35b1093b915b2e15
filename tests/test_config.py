"""RunConfig: the one home of every distill option (flags generated from it, config files, validation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.config import RunConfig, all_keys
from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]


def edgekd(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def _cfg(*words: str) -> RunConfig:
    from edgekd.cli.distill import command, resolve_config

    ctx = command.make_context("distill", list(words))
    return resolve_config(ctx, ctx.params)


def test_every_option_is_one_flag_and_every_flag_one_option():
    from edgekd.cli.distill import CLI_ONLY, _walk, command

    params = {p.name for p in command.params}
    generated = {param for param, *_ in _walk()}
    assert params - generated == set(CLI_ONLY)
    assert len(generated) == len(all_keys())


def test_flat_keys_resolve_to_their_section_and_unknown_keys_name_the_closest():
    cfg = RunConfig().set("epochs", 3).set("dkd_beta", 2.0).set("budget_ms", 1.5)
    assert (cfg.train.epochs, cfg.train.dkd_beta, cfg.selection.budget_ms) == (3, 2.0, 1.5)
    with pytest.raises(EdgeKDError, match="did you mean 'epochs'"):
        RunConfig().set("epoch", 3)
    with pytest.raises(EdgeKDError, match="did you mean"):
        RunConfig.from_dict({"train": {"temprature": 2}})
    with pytest.raises(EdgeKDError, match="must be an integer"):
        RunConfig().set("epochs", "three")


def test_loss_parameters_reach_the_loss():
    """dkd_beta / at_beta were unreachable from the command line."""
    cfg = _cfg("--loss", "dkd", "--dkd-beta", "2", "--at-beta", "500")
    assert cfg.train_overrides("cpu")["loss_opts"] == {"dkd_beta": 2.0, "at_beta": 500.0}
    from edgekd.distill import TrainConfig, build_loss

    tc = TrainConfig(**cfg.train_overrides("cpu"))
    loss = build_loss(tc.loss, temperature=tc.temperature, **tc.loss_opts)
    assert loss.terms[0].dkd_beta == 2.0


@pytest.mark.parametrize("words, message", [
    (("--width", "0.5", "--widths", "0.25,0.5"), "--width and --widths contradict"),
    (("--widths", "0.25,0.25"), "repeats a width"),
    (("--crop-scale", "2,1"), "--crop-scale must be"),
    (("--crop-scale", "0.5,0.2"), "--crop-scale must be"),
    (("--width", "1e9"), "--width must be in (0, 64]"),
    (("--student-weights", "/nonexistent/w.safetensors"), "does not exist"),
    (("--consistent",), "--consistent needs --augment"),
])
def test_contradictions_and_bad_values_are_refused_before_anything_runs(words, message):
    with pytest.raises(EdgeKDError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _cfg(*words).validate()


def test_unreadable_student_weights_are_refused_before_the_folder_exists(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not weights")
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "host", "--student-weights", str(bad), "--out", str(out), "--no-progress")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_print_config_round_trips_through_config_and_flags_override_it(tmp_path):
    proc = edgekd("distill", "--print-config", "--epochs", "3", "--max-drop", "2", "--teacher", "a.safetensors")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "run.yaml"
    path.write_text(proc.stdout)
    cfg = RunConfig.load(path)
    assert cfg.train.epochs == 3 and cfg.export.max_drop == pytest.approx(0.02) and cfg.teacher.spec == "a.safetensors"
    again = _cfg("--config", str(path), "--epochs", "5")
    assert again.train.epochs == 5 and again.export.max_drop == pytest.approx(0.02)  # the flag wins, the rest stays
    (tmp_path / "bad.yaml").write_text("train:\n  epocs: 3\n")
    proc = edgekd("distill", "--config", str(tmp_path / "bad.yaml"), "--print-config")
    assert proc.returncode == 2 and "did you mean 'train.epochs'" in proc.stderr


def test_sweep_refuses_duplicate_widths_before_training(tmp_path):
    proc = edgekd("sweep", "--target", "host", "--widths", "0.25,0.25", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "repeats a width" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_sweep_refuses_a_distill_run_folder_without_overwrite(tmp_path):
    """It used to replace the distill run's report.json with the sweep's, exit 0."""
    run = tmp_path / "run"
    run.mkdir()
    report = {"schema_version": 1, "edgekd_version": "0", "created": "x", "command": "distill", "artifacts": []}
    (run / "report.json").write_text(json.dumps(report))
    proc = edgekd("sweep", "--target", "host", "--widths", "0.25", "--out", str(run), "--epochs", "1")
    assert proc.returncode == 2 and "holds a distill run" in proc.stderr, proc.stderr
    assert json.loads((run / "report.json").read_text()) == report


FAST_FAILURES = [  # (command line, exit code, what its one line says)
    (["distill", "--target", "nope"], 2, "edgekd: error: unknown target 'nope'; known targets: host"),
    (["distill", "--data", "/nonexistent/data.npz"], 2, "edgekd: error: --data /nonexistent/data.npz does not exist"),
    (["distill", "--data", "/nonexistent/data.npz", "--print-config"], 2, "does not exist"),
    (["distill", "--epochs", "0"], 2, "edgekd: error: --epochs must be >= 1, got 0"),
    (["distill", "--width", "1e9"], 2, "--width must be in (0, 64]"),
    (["distill", "--no-such-flag"], 2, "edgekd: error: No such option '--no-such-flag'"),
    (["report", "/nonexistent/run"], 2, "edgekd: error: /nonexistent/run does not exist"),
    (["search", "--target", "nope"], 2, "edgekd: error: unknown target 'nope'"),
    (["sweep", "--target", "nope"], 2, "edgekd: error: unknown target 'nope'"),
    (["predict", "--target", "nope"], 2, "edgekd: error: unknown target 'nope'"),
    (["distill", "--print-config"], 0, ""),
    (["distill", "--help"], 0, ""),
    (["gate", "--help"], 0, ""),
    (["--help"], 0, ""),
]


def test_the_command_line_refuses_bad_input_without_loading_torch():
    """`edgekd distill --target nope` imported torch and torchvision (seconds of CPU) before its one-line error:
    parsing, validating and refusing a command line load none of torch, torchvision, onnx or openvino."""
    script = (
        "import contextlib, io, json, sys\n"
        "from edgekd.cli import main\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    out.append([code, err.getvalue()])\n"
        "heavy = [m for m in ('torch', 'torchvision', 'onnx', 'openvino', 'onnxruntime') if m in sys.modules]\n"
        "print(json.dumps({'results': out, 'heavy': heavy}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([argv for argv, *_ in FAST_FAILURES])],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, code, line), (got_code, stderr) in zip(FAST_FAILURES, got["results"]):
        assert got_code == code, (argv, stderr)
        if code:
            assert len(stderr.strip().splitlines()) == 1 and line in stderr, (argv, stderr)
    assert got["heavy"] == []
