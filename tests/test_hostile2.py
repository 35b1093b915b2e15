"""The defects a hostile user found (issue 27): nothing trusted by mistake (ingest, symlinked photo folders, lists)
and every user mistake one line with exit 2 (or 1 for a failed check), never an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_gate import make_onnx, make_run  # noqa: E402  (the gate tests' real tiny ONNX run folder)
from test_hostile import one_line, run_cli  # noqa: E402


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("EDGEKD_CONFIG_DIR", str(tmp_path / "config"))  # devices registered here stay here
    return make_run(tmp_path / "run")


# --- item 2: ingest trusts only timings of this run's files, on this run's target ---------------------------

def _results(run: Path, *, sha: str | None = None, name: str = "jetson-nano", target: str | None = "jetson-nano") -> Path:
    from edgekd.fsutil import file_sha256

    row = {"model": "student.onnx", "runtime": "onnxruntime", "batch": 1, "status": "ok", "runs": 10,
           "latency_ms": {"p50": 0.25}, "sha256": sha or file_sha256(run / "artifacts" / "student.onnx")}
    doc = {"format": "edgekd-device-results", "format_version": 1, "device": {"name": name}, "results": [row]}
    if target:
        doc["target"] = target
    path = run.parent / "res.json"
    path.write_text(json.dumps(doc))
    return path


def test_ingest_refuses_timings_of_another_model_by_hash(capsys, run):
    from edgekd.fsutil import file_sha256

    other = make_onnx(run.parent / "other.onnx", hidden=5)
    before = (run / "report.json").read_bytes()
    code, _, err = run_cli(capsys, "ingest", _results(run, sha=file_sha256(other)), run)
    line = one_line(code, err, 2, "another model", file_sha256(other), file_sha256(run / "artifacts" / "student.onnx"))
    assert "student.onnx" in line
    assert (run / "report.json").read_bytes() == before
    # The same file under its own hash is ingested.
    code, out, err = run_cli(capsys, "ingest", _results(run), run)
    assert code == 0 and "measured:jetson-nano  student.onnx -> onnx" in out, err


def test_ingest_refuses_results_recorded_on_another_target_unless_forced(capsys, run):
    results = _results(run, name="raspberry-pi-4", target="raspberry-pi-4")
    before = (run / "report.json").read_bytes()
    # --device says jetson-nano, but the file's own record says a raspberry-pi-4 measured it.
    code, _, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano")
    one_line(code, err, 2, "records its device as raspberry-pi-4", "targets 'jetson-nano'", "--force")
    assert (run / "report.json").read_bytes() == before
    code, out, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano", "--force")
    assert code == 0 and "measured:jetson-nano" in out, err
    art = json.loads((run / "report.json").read_text())["artifacts"][2]
    assert art["target_latency_source"] == "measured:jetson-nano" and art["target_latency_ms"]["p50"] == 0.25


def test_ingest_refuses_a_registered_device_of_another_target(capsys, run):
    code, _, err = run_cli(capsys, "devices", "add", "lab-pi", "--ssh", "pi@10.0.0.9", "--target", "raspberry-pi-4")
    assert code == 0, err
    results = _results(run, name="lab-pi", target="lab-pi")
    code, _, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano")
    one_line(code, err, 2, "lab-pi (a raspberry-pi-4)")
    # A device name that is no target says nothing against the run: --device is the user's word.
    code, out, err = run_cli(capsys, "ingest", _results(run, name="bench-7", target="bench-7"), run,
                             "--device", "jetson-nano")
    assert code == 0, err


# --- item 3: symlinked photo folders and lists: loops cut, one image in one split under one label ---------

def _photos(root: Path, classes=("a", "b"), per_class: int = 6, splits=("",)) -> Path:
    """Distinct tiny PNGs (every file's bytes differ) in root/[split/]<class>/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (12, 12), dtype=np.uint8)
                arr[..., :3] = 200 * c
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


def test_symlink_loops_are_cut_and_links_into_other_classes_refused(tmp_path):
    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    root = _photos(tmp_path / "photos")
    (root / "a" / "up").symlink_to("..")          # a loop: followed, it never ends
    (root / "a" / "sib").symlink_to("../b")       # b's images under label a
    with pytest.raises(EdgeKDError) as err:
        load_data(root, workers=0, calib_size=2)
    line = str(err.value)
    assert "\n" not in line and "--dedupe" in line
    assert "label 'a'" in line and "label 'b'" in line and "b/0.png" in line
    s = load_data(root, workers=0, calib_size=2, dedupe=True)
    # 12 images, each once, under its own folder's label: the linked entries are the ones dropped.
    assert len(s.train) + len(s.val) + len(s.test) == 12
    listed = [p for split in (s.train, s.val, s.test) for p in split.paths]
    assert not any("up" in Path(p).parts or "sib" in Path(p).parts for p in listed), listed
    d = s.describe()["deduped"]
    assert d["label_conflict"] == d["dropped"] > 0 and "deduped" in s.describe()
    assert s.split_options["dedupe"] is True


def test_a_file_linked_into_the_test_split_is_refused_or_kept_once(tmp_path):
    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    root = _photos(tmp_path / "photos", splits=("train", "test"))
    (root / "test" / "a" / "leak.png").symlink_to(root / "train" / "a" / "3.png")
    with pytest.raises(EdgeKDError, match=r"train/a/3.png \(train, label 'a'\) and as test/a/leak.png \(test"):
        load_data(root, workers=0, calib_size=2)
    s = load_data(root, workers=0, calib_size=2, dedupe=True)
    # Kept where the file really is (the link is the alias), once: never trained on and tested on.
    train = [p for split in (s.train, s.val) for p in split.paths]
    assert "train/a/3.png" in train and "test/a/leak.png" not in list(s.test.paths) and len(s.test) == 12
    assert s.deduped["split_conflict"] == 1


def test_a_copy_under_another_label_is_found_by_its_bytes(tmp_path):
    import shutil

    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    root = _photos(tmp_path / "photos")
    shutil.copy(root / "a" / "2.png", root / "b" / "copy.png")
    with pytest.raises(EdgeKDError, match="a/2.png .* and as b/copy.png"):
        load_data(root, workers=0, calib_size=2)
    s = load_data(root, workers=0, calib_size=2, dedupe=True)
    assert len(s.train) + len(s.val) + len(s.test) == 11 and s.deduped["label_conflict"] == 2


def test_the_same_image_twice_in_one_class_is_listed_once(tmp_path):
    from edgekd.data import load_data

    root = _photos(tmp_path / "photos")
    (root / "a" / "again.png").symlink_to("0.png")
    s = load_data(root, workers=0, calib_size=2)
    assert len(s.train) + len(s.val) + len(s.test) == 12
    assert s.deduped["duplicate"] == 1 and any("1 duplicate image entry dropped" in n for n in s.notes)


@pytest.mark.parametrize("lines, words, kept", [
    # list_dup: one path twice with one label; list_conflict: one path under two labels / in two splits
    (["a/0.png,a", "a/0.png,a"], None, 12),
    (["a/0.png,a", "a/0.png,b"], ["label 'a'", "label 'b'"], 11),
    (["a/0.png,a,train", "a/0.png,a,test"], ["(train, label 'a') and as a/0.png (test"], 12),
])
def test_lists_naming_an_image_twice(tmp_path, lines, words, kept):
    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    root = _photos(tmp_path / "photos")
    rows = [f"{c}/{i}.png,{c}" for c in "ab" for i in range(1, 6)] + ["b/0.png,b"] + lines
    if any(line.count(",") == 2 for line in lines):
        rows = [r + ",train" for r in rows[:-2]] + ["a/5.png,a,test", "b/5.png,b,test"] + lines
        rows = [r for r in rows if not r.startswith(("a/5.png,a,train", "b/5.png,b,train"))]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    if words is None:
        s = load_data(root / "list.csv", workers=0, calib_size=2)
        assert s.deduped["duplicate"] == 1
    else:
        with pytest.raises(EdgeKDError) as err:
            load_data(root / "list.csv", workers=0, calib_size=2)
        for word in words:
            assert word in str(err.value)
        s = load_data(root / "list.csv", workers=0, calib_size=2, dedupe=True)
    assert len(s.train) + len(s.val) + len(s.test) == kept


# --- exit 3 -> 2: an edited teacher .safetensors ------------------------------------------------------------

def _edited_checkpoint(tmp_path: Path, spec_text) -> Path:
    from safetensors.torch import save_file

    from edgekd.models import ModelSpec, save_model
    from edgekd.models.sources import read_state_dict

    spec = ModelSpec("cnn", 10, 1, width=0.25)
    good = save_model(tmp_path / "good.safetensors", spec.build(), spec)
    d = spec.to_dict()
    text = spec_text(d) if callable(spec_text) else spec_text
    path = tmp_path / "edited.safetensors"
    save_file(read_state_dict(good), str(path), metadata={"edgekd.spec": text if isinstance(text, str) else json.dumps(text),
                                                          "edgekd.meta": "{}"})
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda d: {**d, "num_classes": -3}, ["num_classes -3"]),
    (lambda d: {**d, "extra": {"bogus": 1}}, ["does not build", "bogus"]),
    (lambda d: {**d, "arch": "torchvision:resnet18", "width": 1, "extra": {"bogus_arg": 1}}, ["bogus_arg"]),
    # A width whose weights would need hundreds of GB: refused from the shapes, nothing allocated.
    (lambda d: {**d, "width": 2e5}, ["does not match architecture cnn", "in the spec"]),
    (lambda d: '{"arch": "cnn", "num_classes": 10, "in_channels": 1, "extra": ' + "[" * 10_000 + "]" * 10_000 + "}",
     ["nested too deeply"]),
    (lambda d: "[1, 2]", ["not a JSON object"]),
    (lambda d: {**d, "colour": "red" * 10_000}, ["unknown keys colour"]),
])
def test_an_edited_checkpoint_header_is_one_line(tmp_path, edit, words):
    from edgekd.cli import error_line
    from edgekd.models.sources import load_source_model

    path = _edited_checkpoint(tmp_path, edit)
    with pytest.raises(Exception) as err:
        load_source_model(str(path))
    code, line = error_line(err.value)
    assert code == 2 and len(line) < 400, line
    for word in words:
        assert word in line, line


# --- messages that said the wrong thing ------------------------------------------------------------------

def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (16, 16), 7).save(path, format="PNG")
    return path


@pytest.mark.parametrize("name, words, not_words", [
    ("picture.pth", ["is a PNG image, not PyTorch weights"], ["pickle"]),
    ("picture.png", ["is a PNG image"], ["pickle"]),
    ("folder", ["is a folder"], ["does not exist"]),
])
def test_what_is_not_weights_is_named_for_what_it_is(tmp_path, name, words, not_words):
    from edgekd.errors import EdgeKDError
    from edgekd.models.sources import read_state_dict

    path = tmp_path / name
    path.mkdir() if name == "folder" else _png(path)
    with pytest.raises(EdgeKDError) as err:
        read_state_dict(path, "--teacher-weights")
    assert all(w in str(err.value) for w in words) and not any(w in str(err.value) for w in not_words), err.value
    assert "--teacher-weights" in str(err.value)


def test_a_png_named_npz_is_not_called_pickled(tmp_path):
    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    with pytest.raises(EdgeKDError) as err:
        load_data(_png(tmp_path / "data.npz"))
    assert "is a PNG image, not an .npz file" in str(err.value) and "pickle" not in str(err.value)


def test_calib_data_errors_name_calib_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("from torch import nn\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))\n")
    code, _, err = run_cli(capsys, "export", "--model", "net.py:build", "--calib-data", tmp_path / "nowhere", "--formats", "onnx",
                           "--input", "1x1x4x4", "--out", tmp_path / "e")
    line = one_line(code, err, 2, "--calib-data")
    assert "--data " not in line


def test_an_unknown_torchvision_teacher_is_named_not_asked_for_weights(tmp_path):
    from edgekd.data import load_data
    from edgekd.distill.teacher import load_user_teacher
    from edgekd.errors import EdgeKDError

    splits = load_data(None, calib_size=8)
    with pytest.raises(EdgeKDError) as err:
        load_user_teacher("torchvision:resnet1800", splits)
    assert "unknown torchvision model 'resnet1800'" in str(err.value) and "resnet18" in str(err.value)
    assert "weights" not in str(err.value)


def test_unknown_loss_says_losses():
    from edgekd.distill.losses import LOSSES
    from edgekd.errors import EdgeKDError

    with pytest.raises(EdgeKDError) as err:
        LOSSES.get("kdd")
    assert "known losses:" in str(err.value) and "losss" not in str(err.value)


def test_the_runner_command_quotes_a_name_with_spaces(capsys, tmp_path, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "runner", "--out", tmp_path / "my runner.py")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "on the device:" in ln)
    assert shlex.split(line.split(":", 1)[1])[1] == "my runner.py"


# --- exit 3 -> 2: folders, nested files, profiling nothing ------------------------------------------------

@pytest.mark.parametrize("given_stats", [False, True])
def test_a_folder_where_no_image_opens_is_one_line(tmp_path, given_stats):
    from edgekd.data import load_data
    from edgekd.errors import EdgeKDError

    rng = __import__("numpy").random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            (tmp_path / c / f"{i}.png").write_bytes(rng.bytes(100 + i))
    # With --mean/--std (or a teacher's) nothing measured the pixels, and training met zero images.
    stats = {"mean": "0.5", "std": "0.25"} if given_stats else {}
    with pytest.raises(EdgeKDError, match="sampled training images"):
        load_data(tmp_path, workers=0, calib_size=2, **stats)


def _nested(path: Path, text: str = "[" * 10_000 + "]" * 10_000) -> Path:
    path.write_text(text)
    return path


def test_deep_measurement_yaml_and_device_list_are_one_line(capsys, run, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, "calibrate", "--target", "jetson-nano", "--measurements",
                           _nested(tmp_path / "deep.yaml"))
    one_line(code, err, 2, "nested too deeply")
    config = tmp_path / "config"
    config.mkdir()
    _nested(config / "devices.json", '{"version": 1, "devices": ' + "[" * 10_000 + "]" * 10_000 + "}")
    code, _, err = run_cli(capsys, "devices", "list")
    one_line(code, err, 2, "device list", "unreadable")


def test_profile_with_every_probe_skipped_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKD_CONFIG_DIR", str(tmp_path))
    code, _, err = run_cli(capsys, "profile", "--count", "4", "--max-mflops", "0.000001")
    one_line(code, err, 2, "only 0 of the 4 probe networks", "--max-mflops")


# --- bench on a device: options checked before SSH; the device list said once --------------------------

@pytest.mark.parametrize("flag, value, words", [
    ("--timeout", "nan", ["--timeout nan is not a finite number of seconds"]),
    ("--seconds", "-1", ["--seconds -1.0 is not a finite number of seconds"]),
])
def test_device_bench_options_are_checked_before_ssh(capsys, run, flag, value, words):
    # Port 1 on localhost: a connection attempt would fail with an SSH error, not the option's.
    code, _, err = run_cli(capsys, "devices", "add", "lab-nano", "--ssh", "nobody@127.0.0.1:1", "--target", "jetson-nano")
    assert code == 0, err
    code, _, err = run_cli(capsys, "bench", run, "--device", "lab-nano", flag, value)
    one_line(code, err, 2, *words)


def test_an_unknown_device_lists_the_devices_once(capsys, run):
    for name in ("lab-nano", "lab-pi"):
        assert run_cli(capsys, "devices", "add", name, "--ssh", "pi@10.0.0.9", "--target", "jetson-nano")[0] == 0
    code, _, err = run_cli(capsys, "bench", run, "--device", "lab-nan")
    line = one_line(code, err, 2, "unknown device 'lab-nan'", "did you mean 'lab-nano'")
    assert line.count("lab-pi") == 1, line


# --- gate: a foreign baseline refused; nothing exported is a failed check -----------------------------

@pytest.mark.parametrize("change, words", [
    (lambda r: r.update(target={"name": "raspberry-pi-4", "runtime": "onnxruntime", "precision": "fp32"}),
     ["target raspberry-pi-4", "jetson-nano"]),
    (lambda r: r["data"]["splits"]["test"].update(sha256="f" * 64), ["test data"]),
    (lambda r: r["data"].update(num_classes=3, input_shape=[3, 32, 32]),
     ["another task"]),
])
def test_gate_refuses_a_baseline_of_another_target_or_dataset(capsys, run, change, words):
    import shutil

    mine = json.loads((run / "report.json").read_text())
    mine["data"].update(num_classes=10, input_shape=[1, 4, 4])
    (run / "report.json").write_text(json.dumps(mine))
    other = shutil.copytree(run, run.parent / "other")
    report = json.loads((other / "report.json").read_text())
    change(report)
    (other / "report.json").write_text(json.dumps(report))
    code, _, err = run_cli(capsys, "gate", run, "--no-config", "--baseline", other, "--max-growth", "5")
    one_line(code, err, 2, *words)
    code, _, err = run_cli(capsys, "gate", run, "--no-config", "--baseline", run, "--max-growth", "5")
    assert code == 0, err


def test_gate_recommended_on_a_run_whose_only_export_failed_is_a_failed_check(capsys, run):
    report = json.loads((run / "report.json").read_text())
    onnx = next(a for a in report["artifacts"] if a["name"] == "onnx")
    onnx.update(status="failed", reason="export crashed", path=None)
    report["artifacts"] = [a for a in report["artifacts"] if a["format"] == "pytorch"] + [onnx]
    report["recommended"] = None
    (run / "report.json").write_text(json.dumps(report))
    code, out, err = run_cli(capsys, "gate", run, "--no-config", "--artifact", "recommended", "--max-size-mb", "10")
    assert code == 1, out + err
    assert "export crashed" in out + err


def test_report_of_one_run_honours_out(capsys, run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, out, err = run_cli(capsys, "report", run, "--out", run.parent / "elsewhere", "--quiet")
    assert code == 0, err
    written = {p.name for p in (run.parent / "elsewhere").iterdir()}
    assert {"report.json", "report.md"} <= written, written
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the run is left as it was
    code, _, err = run_cli(capsys, "report", run, "--out", run.parent / "elsewhere", "--quiet")
    one_line(code, err, 2, "already holds a report.json", "--overwrite")
    code, _, err = run_cli(capsys, "report", run, "--out", run.parent / "elsewhere", "--quiet", "--overwrite")
    assert code == 0, err


# --- export and bench: every format or file failed is not a success -------------------------------------

def test_export_and_bench_where_everything_failed_exit_1(capsys, tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Odd(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(16, 3)\n\n    def forward(self, x):\n"
        "        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():\n"
        "            raise RuntimeError('this model refuses to be exported')\n        return self.fc(x.flatten(1))\n\n\n"
        "def build():\n    return Odd()\n")
    code, _, err = run_cli(capsys, "export", "--model", "net.py:build", "--input", "1x1x4x4", "--formats", "onnx",
                           "--out", "e")
    line = err.strip().splitlines()[-1]
    assert code == 1 and "every format failed" in line and "refuses to be exported" in line, err
    assert (tmp_path / "e" / "report.json").is_file()  # the report of what failed is still written
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.nowhere")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.nowhere", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bad.onnx"))
    code, _, err = run_cli(capsys, "bench", "bad.onnx", "--seconds", "0.05", "--out", "b")
    line = err.strip().splitlines()[-1]
    assert code == 1 and "every measurement failed" in line and "NoSuchOp" in line, err
    good = make_onnx(tmp_path / "good.onnx")
    code, _, err = run_cli(capsys, "bench", "bad.onnx", good, "--seconds", "0.05", "--out", "b2")
    assert code == 0, err  # one file measured: the failure is in the report, the command did its job
