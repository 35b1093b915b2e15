"""Bad input, crashes and untrusted files: one-line errors, no half-written output, exact resume, no code run."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgekd"


# ---------------------------------------------------------------------------------------------
# Helpers: the real CLI in-process (fast) or in a subprocess (signals, privileges, untrusted files)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``edgekd ARGS`` through the same main() as the console script; (exit code, stdout, stderr)."""
    from edgekd.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def edgekd_env(cache: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    if cache is not None:
        env["EDGEKD_CACHE_DIR"] = str(cache)
    return env


def edgekd(*args: str, cache: Path | None = None, prefix: tuple[str, ...] = (), timeout: int = 600):
    return subprocess.run([*prefix, sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          env=edgekd_env(cache), timeout=timeout)


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err and lines[0].startswith("edgekd: error:"), err
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]


class RunsCode:
    """A pickle payload that would create ``marker`` when unpickled (what a malicious teacher file does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_npz):
    """Every bad input of the table below, built once."""
    import onnx
    import torch
    import yaml
    from onnx import TensorProto, helper
    from PIL import Image

    from edgekd.models import ModelSpec, save_model

    d = tmp_path_factory.mktemp("bad")
    # Targets
    good = yaml.safe_load((REPO / "targets" / "jetson-nano.yaml").read_text())
    (d / "malformed.yaml").write_text("name: jetson\nbudget_ms: [1, 2\n")
    (d / "misspelt.yaml").write_text(yaml.safe_dump({**{k: v for k, v in good.items() if k != "budget_ms"}, "budget_msx": 1.0}))
    (d / "negative.yaml").write_text(yaml.safe_dump({**good, "budget_ms": -1}))
    (d / "missing-key.yaml").write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "runtime"}))
    # Data
    (d / "empty.npz").write_bytes(b"")
    (d / "empty-dir").mkdir()
    with np.load(tiny_npz) as npz:
        arrays = {k: npz[k] for k in npz.files}
    y_test = arrays["y_test"].copy()
    y_test[3] = 42
    np.savez(d / "labels.npz", **{**arrays, "y_test": y_test})
    np.savez(d / "pickled.npz", **{**arrays, "y_train": np.array([RunsCode(d / "npz-ran-code")] * 3, dtype=object)})
    # Images of mixed sizes are welcome (each is resized); a class in val/ that train/ lacks is not.
    for split, classes in (("train", ("zero", "one")), ("val", ("zero", "two"))):
        for cls in classes:
            folder = d / "extra-class" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                side = 32 if i == 2 else 28
                Image.fromarray(np.full((side, side), 40 * i, np.uint8)).save(folder / f"{i}.png")
    # Teachers and checkpoints
    for name, classes, channels in (("teacher-5-classes", 5, 1), ("teacher-rgb", 10, 3), ("teacher-ok", 10, 1)):
        spec = ModelSpec("cnn", classes, channels, width=0.25)
        save_model(d / f"{name}.safetensors", spec.build(), spec)
    raw = (d / "teacher-ok.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "picture.png")
    torch.save({"epoch": 3, "weights": {"w": torch.zeros(64, 64)}}, d / "checkpoint.pt")
    raw = (d / "checkpoint.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save({"student": RunsCode(d / "pt-ran-code")}, d / "malicious.pt")
    (d / "malicious.pkl").write_bytes(pickle.dumps(RunsCode(d / "pkl-ran-code")))
    # ONNX: a real model, then truncated
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])])
    onnx.save(helper.make_model(graph), d / "ok.onnx")
    raw = (d / "ok.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    shutil.copy(d / "picture.png", d / "picture.onnx")
    (d / "a-file").write_text("not a folder")
    return d


def no_code_ran(files: Path) -> bool:
    return not any((files / m).exists() for m in ("npz-ran-code", "pt-ran-code", "pkl-ran-code"))


# ---------------------------------------------------------------------------------------------
# Bad input: one row of the table per test


def test_unknown_target_suggests_the_closest_name(tmp_path):
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "jetson-nan", "--out", str(out))  # the real console path, once
    assert_one_line_error(proc.returncode, proc.stderr, "unknown target", "did you mean 'jetson-nano'")
    assert not out.exists()


@pytest.mark.parametrize("name, words", [
    ("malformed.yaml", ["malformed.yaml is not valid YAML (line"]),
    ("misspelt.yaml", ["budget_msx", "did you mean 'budget_ms'"]),
    ("negative.yaml", ["budget_ms", "positive"]),
    ("missing-key.yaml", ["missing key 'runtime'"]),
    ("nowhere.yaml", ["does not exist"]),
])
def test_bad_target_yaml_names_the_problem(capsys, files, tmp_path, name, words):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--target", str(files / name), "--out", str(out))
    assert_one_line_error(code, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("data, words", [
    ("nowhere", ["does not exist"]),
    ("empty.npz", ["empty file"]),
    ("empty-dir", ["empty folder"]),
    ("extra-class", ["class folder 'two'", "train/ does not have"]),
    ("labels.npz", ["label 42", "outside the 10 classes"]),
    ("pickled.npz", ["object (pickled) arrays", "refuses"]),
])
def test_bad_data_is_a_one_line_error(capsys, files, tmp_path, data, words):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--target", "host", "--data", str(files / data), "--out", str(out))
    assert_one_line_error(code, err, *words)
    assert not out.exists()
    assert no_code_ran(files)


def test_unreadable_data_is_a_one_line_error(files, tmp_path, tiny_npz):
    data = tmp_path / "private.npz"
    shutil.copy(tiny_npz, data)
    data.chmod(0)
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "host", "--data", str(data), "--out", str(out), prefix=without_root_powers())
    assert_one_line_error(proc.returncode, proc.stderr, "private.npz", "not readable")
    assert not out.exists()


@pytest.mark.parametrize("teacher, words", [
    ("teacher-5-classes.safetensors", ["5 classes", "data has 10"]),
    ("teacher-rgb.safetensors", ["3-channel", "data has 1"]),
    ("truncated.safetensors", ["not a readable safetensors"]),
    ("random.safetensors", ["not a readable safetensors"]),
    ("picture.png", ["not a readable safetensors"]),
    ("nowhere.safetensors", ["does not exist"]),
])
def test_bad_teacher_is_a_one_line_error(capsys, files, tmp_path, tiny_npz, teacher, words):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--widths", "0.25",
                       "--teacher", str(files / teacher), "--out", str(out), "--no-progress")
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_pickled_teacher_is_refused_and_never_runs(capsys, files, tmp_path, tiny_npz):
    out = tmp_path / "run"
    args = ["distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--widths", "0.25", "--no-progress"]
    proc = edgekd(*args, "--teacher", str(files / "malicious.pt"), "--out", str(out))
    assert_one_line_error(proc.returncode, proc.stderr, str(files / "malicious.pt"), "safetensors")
    code, _, err = cli(capsys, *args, "--teacher", str(files / "malicious.pkl"), "--out", str(out))
    assert_one_line_error(code, err, str(files / "malicious.pkl"), "safetensors")
    assert not out.exists()
    assert no_code_ran(files), "unpickling the teacher ran its code"


def test_export_never_imports_or_unpickles_what_the_user_did_not_name(capsys, files, tmp_path):
    """A .py is imported only as an explicit --model FILE.py:FACTORY; --weights are read weights_only."""
    model_file = tmp_path / "model.py"
    model_file.write_text(f"from pathlib import Path\nPath({str(files / 'py-ran-code')!r}).touch()\n")
    code, _, err = cli(capsys, "export", "--model", str(model_file), "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "is not FILE.py:FACTORY")
    code, _, err = cli(capsys, "export", "--model", "torchvision:resnet18", "--weights", str(files / "malicious.pt"),
                       "--formats", "onnx", "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "malicious.pt")
    assert not (files / "py-ran-code").exists() and no_code_ran(files)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_debug_shows_the_traceback_and_keeps_the_exit_code(capsys, tmp_path):
    from edgekd.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--debug", "distill", "--target", "jetson-nan", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("edgekd: error: unknown target 'jetson-nan'")


@pytest.mark.parametrize("name, words", [
    ("malicious.pt", ["corrupt or not an edgekd checkpoint"]),
    ("malicious.pkl", ["corrupt or not an edgekd checkpoint"]),
    ("truncated.pt", ["corrupt or not an edgekd checkpoint"]),
    ("truncated.safetensors", ["corrupt or not an edgekd checkpoint"]),
    ("picture.png", ["corrupt or not an edgekd checkpoint"]),
    ("checkpoint.pt", ["not an edgekd training checkpoint"]),
])
def test_checkpoint_loader_refuses_code_and_damage(files, name, words):
    from edgekd.distill.train import load_checkpoint

    with pytest.raises(EdgeKDError) as err:
        load_checkpoint(files / name)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)
    assert no_code_ran(files), "unpickling the checkpoint ran its code"


@pytest.mark.parametrize("planted", ["truncated.pt", "malicious.pt"])
def test_resume_from_a_damaged_or_malicious_checkpoint_is_a_one_line_error(capsys, files, tmp_path, tiny_npz, planted):
    """The real `--resume` path: <out>/checkpoints/last.pt replaced by a damaged file or a code-running pickle."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    shutil.copy(files / planted, out / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, "distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--widths", "0.25",
                       "--teacher", str(files / "teacher-ok.safetensors"), "--out", str(out), "--resume", "--no-progress",
                       "--force")  # --force: the teacher is untrained (the chance check would stop first)
    assert_one_line_error(code, err, "last.pt is corrupt or not an edgekd checkpoint", "delete")
    assert no_code_ran(files)
    assert not (out / "student.safetensors").exists()
    # The folder existed: its report says which stage failed, and why (no finished report).
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "distill" and report["artifacts"] == []


def test_resume_from_a_malicious_checkpoint_is_refused_before_training(files, tmp_path, tiny_npz):
    """--resume reads <out>/checkpoints/last.pt: a planted pickle there is refused and never runs."""
    from edgekd.data import load_data
    from edgekd.distill import TrainConfig, train
    from edgekd.models import create

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    shutil.copy(files / "malicious.pt", ckpt_dir / "last.pt")
    splits = load_data(tiny_npz)
    student = create("cnn", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(EdgeKDError, match="corrupt or not an edgekd checkpoint"):
        train(student, None, splits, TrainConfig(epochs=1, loss="ce"), ckpt_dir=ckpt_dir, resume=True, progress=False)
    assert no_code_ran(files)


@pytest.mark.parametrize("args, words", [
    (["gate", "{d}/truncated.onnx", "--max-size-mb", "1"], ["truncated.onnx is not an ONNX model"]),
    (["gate", "{d}/picture.onnx", "--max-size-mb", "1"], ["picture.onnx is not an ONNX model"]),
])
def test_corrupt_or_wrong_kind_of_onnx_is_a_one_line_error(capsys, files, args, words):
    code, _, err = cli(capsys, *[a.format(d=files) for a in args])
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("args, words", [
    (["--temperature", "0"], ["--temperature must be > 0"]),
    (["--temperature", "-2"], ["--temperature must be > 0"]),
    (["--alpha", "1.5"], ["--alpha must be in [0, 1]"]),
    (["--alpha", "-0.1"], ["--alpha must be in [0, 1]"]),
    (["--budget-ms", "-1"], ["--budget-ms must be > 0"]),
    (["--budget-ms", "0"], ["--budget-ms must be > 0"]),
    (["--epochs", "0"], ["--epochs must be >= 1"]),
    (["--epochs", "-3"], ["--epochs must be >= 1"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["--lr", "-1"], ["--lr must be > 0"]),
    (["--widths", "0.5,-1"], ["--widths must be positive"]),
    (["--max-drop", "200"], ["--max-drop"]),
    (["--overwrite", "--resume"], ["contradict"]),
    (["--device", "tpu"], ["--device"]),
    (["--formats", "onnxx"], ["onnxx", "did you mean 'onnx'"]),
    (["--epochs", "two"], ["two", "not a valid integer"]),
    (["--mixup", "-1"], ["mixup must be >= 0"]),
    (["--consistent"], ["--consistent needs --augment"]),
])
def test_out_of_range_options_are_refused(capsys, tmp_path, args, words):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--target", "host", *args, "--out", str(out))
    assert code == 2
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_resume_reads_every_training_setting_back():
    """--resume reads config.json instead of regenerating flags: every training setting comes back."""
    from edgekd.cli.distill import command, resolve_config
    from edgekd.config import RunConfig

    ctx = command.make_context("distill", ["--target", "host", "--out", "run", "--epochs", "3", "--augment",
                                           "--consistent", "--mixup", "0.4", "--mode", "self", "--generations", "3"])
    cfg = resolve_config(ctx, ctx.params)
    back = RunConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.train_overrides("cpu")["teacher_view"] == "same"
    assert back.train.mixup == 0.4 and back.train.generations == 3 and back.train.mode == "self"


def test_existing_output_folder_is_refused_unless_asked(capsys, tmp_path, tiny_npz):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "distill", "--target", "host", "--data", str(tiny_npz), "--out", str(out))
    assert_one_line_error(code, err, "already exists", "--overwrite", "--resume")
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = cli(capsys, "distill", "--target", "host", "--data", str(tiny_npz), "--out", str(out), "--resume")
    assert_one_line_error(code, err, "config.json missing")
    assert (out / "notes.txt").read_text() == "keep me"


def test_output_folder_under_a_file_is_refused_before_any_work(capsys, files, tiny_npz):
    out = files / "a-file" / "run"
    t0 = time.perf_counter()
    code, _, err = cli(capsys, "distill", "--target", "host", "--data", str(tiny_npz), "--out", str(out))
    assert_one_line_error(code, err, "is a file, not a folder")
    assert time.perf_counter() - t0 < 10, "refused only after training the teacher"


def without_root_powers() -> tuple[str, ...]:
    """A command prefix under which file permissions bind: root ignores them unless it drops CAP_DAC_*."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod cannot make a folder read-only for root")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


def test_read_only_output_folder_is_refused(tmp_path, tiny_npz):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        proc = edgekd("distill", "--target", "host", "--data", str(tiny_npz), "--out", str(parent / "run"),
                      prefix=without_root_powers())
        assert_one_line_error(proc.returncode, proc.stderr, "cannot write --out", "writable --out")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_output_folder_locked_by_another_run_is_refused(capsys, tmp_path, tiny_npz):
    from edgekd.fsutil import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        for extra in ([], ["--resume"], ["--overwrite"]):
            if extra:  # the other run has written its config: --resume and --overwrite would act on it
                (out / "config.json").write_text("{}")
            t0 = time.perf_counter()
            code, _, err = cli(capsys, "distill", "--target", "host", "--data", str(tiny_npz), "--out", str(out),
                               "--no-progress", *extra)
            assert_one_line_error(code, err, "being written by another edgekd run")
            assert time.perf_counter() - t0 < 10, "the lock was checked only after the teacher"
        assert (out / "config.json").read_text() == "{}", "--overwrite deleted a folder another run is writing"


def test_unreachable_budget_names_the_smallest_prediction(capsys, tmp_path, tiny_npz):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--widths", "0.25,0.5",
                       "--budget-ms", "0.00001", "--out", str(out))
    line = assert_one_line_error(code, err, "no candidate fits", "smallest (width 0.25", "predicted at")
    assert re.search(r"predicted at \d+\.\d+ ms", line), line
    assert not out.exists()


def test_gpu_out_of_memory_suggests_a_smaller_batch(capsys, monkeypatch):
    """A real torch.OutOfMemoryError raised inside the distill command reaches the CLI's handler."""
    import torch

    import edgekd.pipeline

    def runs_out_of_memory(opts, console=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")

    monkeypatch.setattr(edgekd.pipeline, "distill", runs_out_of_memory)
    code, _, err = cli(capsys, "distill", "--target", "host")
    assert_one_line_error(code, err, "ran out of memory", "smaller --batch-size")


# ---------------------------------------------------------------------------------------------
# Security: the package never runs code it did not ship


PATTERNS = [
    (re.compile(r"(?<![\w.])eval\("), "eval("),
    (re.compile(r"(?<![\w.])exec\("), "exec("),
    (re.compile(r"shell\s*=\s*True"), "shell=True"),
    (re.compile(r"pickle\.loads?\("), "pickle.load"),
    (re.compile(r"\bos\.system\("), "os.system("),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
]


def _source_files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    return files


def _calls(text: str, name: str):
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses)."""
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text[m.end():i - 1]


def test_no_eval_exec_shell_or_pickle_in_the_package():
    bad = []
    for f in _source_files():
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            bad += [f"{f.relative_to(REPO)}:{n}: {what}" for pattern, what in PATTERNS if pattern.search(code)]
    assert not bad, bad


def test_torch_load_is_always_weights_only_and_yaml_always_safe():
    bad = []
    for f in _source_files():
        text = f.read_text()
        for args in _calls(text, "torch.load"):
            if not re.search(r"weights_only\s*=\s*True", args):
                bad.append(f"{f.relative_to(REPO)}: torch.load({args})")
        for args in _calls(text, "yaml.load"):
            if "SafeLoader" not in args:
                bad.append(f"{f.relative_to(REPO)}: yaml.load({args})")
        if re.search(r"yaml\.(unsafe_load|full_load)\(|Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b", text):
            bad.append(f"{f.relative_to(REPO)}: unsafe YAML loader")
    assert not bad, bad


def test_python_files_are_imported_only_by_the_explicit_model_factory():
    """Only a FILE.py:FACTORY the user named (--model, --teacher, --student) imports a user's file;
    nothing else loads code by path."""
    users = sorted(str(f.relative_to(REPO)) for f in _source_files()
                   if re.search(r"spec_from_file_location|exec_module|runpy\.|SourceFileLoader", f.read_text()))
    assert users == ["edgekd/models/sources.py"], users
    text = (PACKAGE / "models" / "sources.py").read_text()
    body = text[text.index("def import_factory"):]
    body = body[:body.index("\ndef ", 1)]
    assert "spec_from_file_location" in body and text.count("spec_from_file_location") == 1


# ---------------------------------------------------------------------------------------------
# Faults: SIGKILL at several points, then --resume; Ctrl-C


@pytest.fixture(scope="module")
def kill_npz(tmp_path_factory, mnist_arrays) -> Path:
    x_train, y_train, x_test, y_test = mnist_arrays
    path = tmp_path_factory.mktemp("kill-data") / "digits.npz"
    np.savez(path, x_train=x_train[:400], y_train=y_train[:400], x_test=x_test[:100], y_test=y_test[:100])
    return path


def job_args(data: Path, out: Path) -> list[str]:
    return ["distill", "--target", "jetson-nano", "--data", str(data), "--epochs", "3", "--widths", "0.25",
            "--formats", "onnx", "--seed", "0", "--no-progress", "--bench-seconds", "0.05", "--out", str(out),
            "--force"]  # 3 epochs on a tiny set test resuming, not accuracy: a near-chance student only warns


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kill_npz):
    """An uninterrupted run (teacher trained from scratch in its own cache) to compare resumed runs with."""
    root = tmp_path_factory.mktemp("reference")
    proc = edgekd(*job_args(kill_npz, root / "run"), cache=root / "cache")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"report": json.loads((root / "run" / "report.json").read_text()), "cache": root / "cache"}


def start_then_kill(args: list[str], cache: Path, ready, sig=signal.SIGKILL, timeout=300) -> subprocess.Popen:
    """Start ``edgekd ARGS``; once ``ready()`` is true send ``sig``; return the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", *args], env=edgekd_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point:\n{out[-1500:]}\n{err[-1500:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the kill point was never reached")
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=120)
    return proc


def assert_only_complete_files(folder: Path) -> list[str]:
    """Every file a killed run left is whole (temporaries aside); report.json is absent or valid JSON."""
    import onnx

    from edgekd.distill.train import load_checkpoint
    from edgekd.models import load_model

    checked = []
    if not folder.exists():
        return checked
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_dir() or f.name.endswith(".tmp") or any(p.startswith((".staging-", ".scratch-")) for p in rel.parts):
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".safetensors":
            load_model(f)
        elif f.suffix == ".pt":
            load_checkpoint(f)
        elif f.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(f)))
        checked.append(str(rel))
    return checked


def resume_and_compare(args: list[str], cache: Path, out: Path, reference: dict) -> dict:
    proc = edgekd(*args, "--resume", cache=cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    ref = reference["report"]
    assert report["teacher"]["accuracy"] == ref["teacher"]["accuracy"]
    assert report["student"]["accuracy"] == ref["student"]["accuracy"], "resumed run differs from the uninterrupted one"
    assert [h["loss"] for h in report["student"]["history"]] == pytest.approx(
        [h["loss"] for h in ref["student"]["history"]], abs=1e-6)
    onnx_row = next(a for a in report["artifacts"] if a["role"] == "student" and a["name"] == "onnx")
    ref_row = next(a for a in ref["artifacts"] if a["role"] == "student" and a["name"] == "onnx")
    assert onnx_row["status"] == "ok" and onnx_row["accuracy"] == ref_row["accuracy"]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".staging-", ".scratch-"))]
    assert not leftovers, leftovers
    return report


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume_matches_an_uninterrupted_run(tmp_path, kill_npz, reference):
    """One run killed three times (teacher training, distillation after epoch 1, export), resumed each time."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = job_args(kill_npz, out)
    # 1. During teacher training (after its first epoch checkpoint, before its weights exist).
    start_then_kill(args, cache, lambda: any(cache.glob("teacher-*.ckpt/*/last.pt")))  # rung<N>/last.pt
    assert not list(cache.glob("teacher-*.safetensors")), "the teacher had finished: not killed during its training"
    assert_only_complete_files(cache)
    assert_only_complete_files(out)
    # 2. During distillation, after epoch 1 (the folder may not exist yet: --resume starts it).
    start_then_kill([*args, "--resume"], cache, lambda: (out / "checkpoints" / "last.pt").exists())
    assert list(cache.glob("teacher-*.safetensors")), "the resumed run did not finish the teacher"
    assert not (out / "report.json").exists()
    assert {"config.json", "checkpoints/last.pt"} <= set(assert_only_complete_files(out))
    # 3. During export.
    start_then_kill([*args, "--resume"], cache, lambda: (out / "artifacts").exists())
    assert not (out / "report.json").exists()
    assert {"config.json", "checkpoints/last.pt", "student.safetensors"} <= set(assert_only_complete_files(out))
    # 4. Resumed to the end: the same numbers as the run that was never interrupted.
    report = resume_and_compare(args, cache, out, reference)
    assert len(report["student"]["history"]) == 3


@pytest.mark.slow
def test_ctrl_c_during_distillation_saves_and_says_how_to_resume(tmp_path, kill_npz, reference):
    out = tmp_path / "run"
    args = job_args(kill_npz, out)
    proc = start_then_kill(args, reference["cache"], lambda: (out / "checkpoints" / "last.pt").exists(),
                           sig=signal.SIGINT)
    assert proc.returncode == 130, proc.stderr_text
    line = assert_one_line_error(proc.returncode, proc.stderr_text, "interrupted", "resume with: edgekd distill")
    assert (out / "checkpoints" / "last.pt").is_file()
    assert_only_complete_files(out)
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["edgekd", "distill"] and "--resume" in command and str(out) in command
    # The printed command, run as printed, finishes the job with the uninterrupted result.
    done = edgekd(*command[1:], cache=reference["cache"])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["accuracy"] == reference["report"]["student"]["accuracy"]
