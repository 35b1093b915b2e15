"""The Python API: edgekd.distill/gate with the user's own objects (a teacher nn.Module, torch Datasets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgekd
import edgekd.api
from edgekd import events
from edgekd.errors import EdgeKDError


def _mnist(mnist_arrays, n_train: int, n_test: int):
    x_train, y_train, x_test, y_test = mnist_arrays
    as_t = lambda x: torch.from_numpy(np.asarray(x[:, None] if x.ndim == 3 else x, np.float32) / 255.0)  # noqa: E731
    train = TensorDataset(as_t(x_train[:n_train]), torch.from_numpy(y_train[:n_train].astype(np.int64)))
    test = TensorDataset(as_t(x_test[:n_test]), torch.from_numpy(y_test[:n_test].astype(np.int64)))
    return train, test


def _train_teacher(train) -> nn.Module:
    """A user's own teacher, trained in plain PyTorch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def _accuracy(net, ds) -> float:
    x, y = ds.tensors
    return int((net(x).argmax(1) == y).sum()) / len(y)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, mnist_arrays):
    train, test = _mnist(mnist_arrays, 2000, 300)
    teacher = _train_teacher(train)
    out = tmp_path_factory.mktemp("api") / "run"
    rec = events.Recorder()
    # The README "Python API" example, as written there (with a small budget for the test).
    run = edgekd.distill(target="jetson-nano", teacher=teacher, data={"train": train, "test": test}, student="cnn",
                         epochs=3, widths=(0.5,), formats=("onnx",), bench_seconds=0.05, out=out, verbose=False,
                         callbacks=[rec])
    result = edgekd.gate(run, max_size_mb=5, max_latency_ms=50)
    return run, result, teacher, test, rec


@pytest.mark.slow
def test_readme_example_teacher_accuracy_is_the_users_own(api_run):
    run, result, teacher, test, _ = api_run
    assert run.report["status"] == "ok"
    assert run.report["teacher"]["accuracy"] == pytest.approx(_accuracy(teacher, test), abs=1e-9)
    assert result.passed and result.checks
    assert run.recommended and run.artifacts
    assert (run.out / "teacher.safetensors").is_file()
    config = json.loads((run.out / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["selection"]["widths"] == [0.5]


@pytest.mark.slow
def test_the_report_says_whether_the_teacher_itself_fits_the_budget(api_run):
    """The teacher costed like a candidate (the target's precision, its own input): the report says if it fits,
    and the run warns when it does, since shipping it may beat any smaller student."""
    from edgekd.hardware.select import teacher_as_candidate

    run, _, teacher, _, rec = api_run
    on = run.report["teacher"]["on_target"]
    assert on["costed"] and on["precision"] == run.report["target"]["precision"] and on["image_size"] == 28
    assert on["fits"] == (on["predicted_ms"] <= run.report["budget_ms"])
    direct = teacher_as_candidate(teacher, target="jetson-nano", budget_ms=run.report["budget_ms"],
                                  input_shape=(1, 28, 28))
    assert on["predicted_ms"] == pytest.approx(direct.predicted_ms, rel=1e-6) and on["params"] == direct.params
    warned = [e for e in rec.of("warning") if e.data.get("teacher_fits")]
    assert bool(warned) == on["fits"]


@pytest.mark.slow
def test_the_student_is_a_pytorch_module_with_the_reported_accuracy(api_run, mnist_arrays):
    run, *_ = api_run
    student = run.student
    assert isinstance(student, nn.Module)
    assert 0.0 < run.report["student"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_callbacks_hear_the_stages_and_epochs(api_run):
    *_, rec = api_run
    stages = [e["stage"] for e in rec.of("stage_started")]
    assert stages[:3] == ["data", "select", "teacher"] and "distill" in stages and "export" in stages
    assert [e["epoch"] for e in rec.of("epoch_end")][-3:] == [1, 2, 3]


def test_verbose_false_writes_nothing(capfd, tmp_path, mnist_arrays):
    """A whole API run with verbose=False: nothing on stdout or stderr, from Python or from C++."""
    train, test = _mnist(mnist_arrays, 200, 60)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()  # untrained: force= passes the chance check
    run = edgekd.distill(target="host", teacher=teacher, data={"train": train, "test": test}, epochs=1,
                         widths=(0.25,), formats=("onnx",), bench_seconds=0.05, out=tmp_path / "run", verbose=False,
                         force=True)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert run.report["status"] == "ok"


def test_overrides_are_checked_by_name():
    with pytest.raises(EdgeKDError, match="did you mean 'epochs'"):
        edgekd.distill(epoch=3, verbose=False)
    cfg, objects = edgekd.api.build_config(epochs=3, train={"alpha": 0.7}, student="mobilenet_v3_small")
    assert (cfg.train.epochs, cfg.train.alpha, cfg.student.family, objects) == (3, 0.7, "mobilenet_v3_small", {})


def test_a_student_factory_becomes_a_family():
    def factory(width: float) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, max(1, int(32 * width))), nn.ReLU(),
                             nn.Linear(max(1, int(32 * width)), 10))

    cfg, _ = edgekd.api.build_config(student=factory)
    from edgekd.models import create

    model = create(cfg.student.family, num_classes=10, in_channels=1, width=0.5)
    assert model[1].out_features == 16


def test_api_functions_survive_importing_the_subpackages_of_the_same_name(tmp_path):
    """`import edgekd.gate` binds edgekd.gate to the package; edgekd.gate(run, ...) must still be the API's gate,
    and the package's own names must stay reachable (in a fresh interpreter: import order matters)."""
    import subprocess
    import sys

    from edgekd.rundir import write_unfinished_report

    out = tmp_path / "run"
    out.mkdir()
    write_unfinished_report(out, status="failed", stage="export", error="boom", config={"target": "host"})
    code = f"""
import edgekd.gate, edgekd.export, edgekd.bench, edgekd.report, edgekd.distill
import edgekd
from edgekd.gate import resolve_budgets
import edgekd.export as export_package
result = edgekd.gate({str(out)!r}, max_size_mb=1)
assert type(result).__name__ == "GateResult" and not result.passed, result
assert edgekd.report({str(out)!r})["status"] == "failed"
assert callable(edgekd.distill) and callable(edgekd.export) and callable(edgekd.bench)
assert edgekd.gate.resolve_budgets is resolve_budgets and hasattr(export_package, "export_all")
assert edgekd.distill.TrainConfig.__name__ == "TrainConfig"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# Fields that differ between two identical runs because they are times: the date, durations (stage timings,
# export_seconds), latencies timed on this machine and the throughput derived from them, and the machine's load
# average when the report was written. And the fields that name the run's own folder (three runs, three folders).
TIMES = ("created", "timings_s", "seconds", "export_seconds", "latency_ms", "throughput", "images_per_second",
         "load_avg")
FOLDER = ("out", "files")


def _differences(a, b, where: str = "") -> list[str]:
    """Every path where two reports differ, apart from TIMES and FOLDER."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - set(TIMES) - set(FOLDER)
        return [d for k in sorted(keys) for d in _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


@pytest.mark.slow
def test_the_same_run_three_ways_gives_the_same_report(tmp_path, tiny_npz, monkeypatch):
    """Flags, --config run.yaml and Python: one config, one report (apart from times and the run folder).

    Each run starts from an empty cache of its own: a run after another finds its student-alone probe cached
    (``teacher.worth.probe.cached``), which is the machine's state, not the run's."""
    import os
    import subprocess
    import sys

    from edgekd.models import ModelSpec, create, save_model

    torch.manual_seed(0)
    teacher = save_model(tmp_path / "teacher.safetensors", create("cnn", num_classes=10, in_channels=1).eval(),
                         ModelSpec("cnn", 10, 1))
    flags = ["--target", "jetson-nano", "--data", str(tiny_npz), "--teacher", str(teacher), "--epochs", "1",
             "--widths", "0.25", "--formats", "onnx", "--bench-seconds", "0.05", "--force", "--no-progress",
             "--threads", "1"]
    def run(name, *args):
        env = {**os.environ, "EDGEKD_CACHE_DIR": str(tmp_path / f"cache-{name}")}
        return subprocess.run([sys.executable, "-m", "edgekd", "distill", *args], capture_output=True, text=True,
                              timeout=900, env=env)

    proc = run("flags", *flags, "--out", str(tmp_path / "flags"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A CI log (--no-progress, not a terminal): one line per epoch with its figures, and the candidates in the
    # selection table only (they were also lines above it).
    assert [ln.split()[:2] for ln in proc.stdout.splitlines() if ln.startswith("epoch ")][-1] == ["epoch", "1/1"]
    assert "width 0.25: " not in proc.stdout and "Candidate students" in proc.stdout
    yaml_text = run("print", *flags, "--print-config").stdout
    (tmp_path / "run.yaml").write_text(yaml_text)
    proc = run("yaml", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache-py"))
    py = edgekd.distill(target="jetson-nano", data=str(tiny_npz), teacher=str(teacher), epochs=1, widths=(0.25,),
                        formats=("onnx",), bench_seconds=0.05, force=True, progress=False, threads=1,
                        out=tmp_path / "py", verbose=False)
    flags_report, yaml_report = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("flags", "yaml"))
    for other in (yaml_report, py.report):
        differences = _differences(flags_report, other)
        assert differences == [], "\n".join(differences)


def test_the_trial_keeps_the_proxys_pick_unless_another_is_clearly_better():
    from edgekd.pipeline.trial import TrialEntry, decide

    def entry(family, val, z):
        return TrialEntry(family, 1.0, 1, None, 1.0, 70.0, val, z, 1.0, False)

    assert decide([entry("a", 0.50, 0.0), entry("b", 0.58, 1.9)]) == 0          # better, not clearly: the proxy's
    assert decide([entry("a", 0.50, 0.0), entry("b", 0.70, 2.5), entry("c", 0.80, 3.0)]) == 2
    assert decide([entry("a", 0.50, 0.0), entry("b", 0.80, 2.5), entry("c", 0.80, 2.6)]) == 1  # tie: higher-ranked
    assert decide([entry("a", 0.50, 0.0)]) == 0


def test_a_challenger_ahead_but_not_clearly_earns_a_second_seed_and_the_pairs_are_pooled():
    from edgekd.distill.worth import compare
    from edgekd.pipeline.trial import TrialEntry, _entry, second_look

    def entry(family, z, seeds=1):
        return TrialEntry(family, 1.0, 1, None, 1.0, 70.0, 0.5, z, 1.0, False, seeds)

    # ahead but not clearly (1 <= z < 2) and run once: a second look; behind, clearly ahead or already twice: none
    assert second_look([entry("a", 0.0), entry("b", 1.4), entry("c", 0.9), entry("d", 2.0), entry("e", 1.5, 2)]) == [1]
    assert second_look([entry("a", 0.0), entry("b", -1.5)]) == []

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    def noisy(acc):  # predictions right on about ``acc`` of the images
        return np.where(rng.random(200) < acc, y, (y + 1) % 10)
    pick = [(noisy(0.5), y, {"seconds": 2.0, "cached": True}), (noisy(0.5), y, {"seconds": 3.0, "cached": False})]
    challenger = [(noisy(0.6), y, {"seconds": 1.0, "cached": True}), (noisy(0.6), y, {"seconds": 1.5, "cached": True})]
    cand = type("Cand", (), dict(family="b", width=1.0, depth=1, image_size=None, predicted_ms=1.0,
                                 accuracy_proxy=70.0))()
    once, twice = _entry(cand, challenger[:1], pick), _entry(cand, challenger, pick)
    assert once.seeds == 1 and twice.seeds == 2 and twice.seconds == 2.5 and twice.cached
    assert once.z_vs_proxy_pick == compare(challenger[0][0], pick[0][0], y, {}).z  # one seed: the pick's first run
    pooled = compare(np.concatenate([challenger[0][0], challenger[1][0]]), np.concatenate([pick[0][0], pick[1][0]]),
                     np.concatenate([y, y]), {})
    assert twice.z_vs_proxy_pick == pooled.z and twice.val_accuracy == pytest.approx(
        (np.mean(challenger[0][0] == y) + np.mean(challenger[1][0] == y)) / 2)
    assert _entry(cand, pick, pick).z_vs_proxy_pick == 0 and not _entry(cand, pick, pick).cached


SECOND_LOOK_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import edgekd.distill.worth as worth
from conftest import packaged_subset
from edgekd.distill import TrainConfig
from edgekd.hardware.select import select_student
from edgekd.pipeline import trial

trial.SECOND_LOOK_Z = -1e9   # every challenger counts as ambiguous
worth.WORTH_Z = 1e9          # and none as clearly better: the proxy's pick stays
splits = packaged_subset(384, 128)
sel = select_student("cnn,resnet", target="jetson-nano", budget_ms=0.7, num_classes=10, input_shape=(1, 28, 28))
cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2, device="cpu", precise_bn_images=0, threads=1)
out = []
for _ in range(2):
    chosen, entries = trial.run_trial(sel, splits, 2, lambda fam: cfg, cache_dir=sys.argv[1])
    out.append({"chosen_is_pick": chosen is sel.chosen, "entries": [e.to_dict() for e in entries]})
print(json.dumps(out))
"""


def test_the_trial_trains_a_second_seed_where_the_first_is_ambiguous(tmp_path):
    """Real runs on 384 digits (in a fresh process: four trainings): every challenger counted ambiguous, so
    the pick and it are trained twice (the second run with the next seed, cached apart from the first), the
    entries say so, and a repeat reads all four runs from the cache."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", SECOND_LOOK_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    first, repeat = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["chosen_is_pick"] and [e["seeds"] for e in first["entries"]] == [2, 2]
    assert first["entries"][0]["z_vs_proxy_pick"] == 0 and not first["entries"][1]["cached"]
    assert len(list(tmp_path.glob("scratch-*.json"))) == 4  # two candidates x two seeds
    assert all(e["cached"] for e in repeat["entries"])
    assert [e["z_vs_proxy_pick"] for e in repeat["entries"]] == [e["z_vs_proxy_pick"] for e in first["entries"]]


@pytest.mark.slow
def test_several_families_are_tried_on_the_users_data_before_one_is_distilled(tmp_path, mnist_arrays, monkeypatch):
    """--student a,b: the leading families' picks trained on the labels with the run's budget; the report lists
    them (the proxy's pick first), distils the one the rule keeps, and the worth check reuses its trial."""
    from edgekd.pipeline.trial import TrialEntry, decide

    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache"))
    train, test = _mnist(mnist_arrays, 1200, 200)
    teacher = _train_teacher(train)
    rec = events.Recorder()
    run = edgekd.distill(target="jetson-nano", teacher=teacher, data={"train": train, "test": test},
                         student="mobilenet_v3_small,cnn", epochs=2, widths=(0.5,), formats=("onnx",),
                         bench_seconds=0.05, budget_ms=100.0, out=tmp_path / "run", verbose=False, callbacks=[rec])
    sel = run.report["selection"]
    trial = sel["trial"]
    assert [e["family"] for e in trial] == ["mobilenet_v3_small", "cnn"]  # the proxy ranks the published family first
    assert all(0.0 <= e["val_accuracy"] <= 1.0 and e["seconds"] >= 0 for e in trial) and trial[0]["z_vs_proxy_pick"] == 0
    kept = trial[decide([TrialEntry(**e) for e in trial])]
    assert run.report["student"]["arch"] == kept["family"] == sel["chosen"]["family"]
    probe = run.report["teacher"]["worth"]["probe"]
    assert probe["arch"] == kept["family"] and probe["cached"] is True  # the trial's run, not trained twice
    if kept["seeds"] == 1:  # after a second look the entry pools two seeds; the worth check has the first
        assert run.report["teacher"]["worth"]["student_val_accuracy"] == pytest.approx(kept["val_accuracy"])
    assert any(e.kind == "stage_start" and e.data.get("name") == "trial" for e in rec.events) or \
        any("trial" in str(e.message) for e in rec.events)


def test_the_trial_tries_the_teachers_family_when_the_proxy_leaves_it_out():
    import torchvision

    from edgekd.hardware.select import select_student
    from edgekd.pipeline.trial import teacher_family, trial_candidates

    sel = select_student("auto", target="raspberry-pi-5", budget_ms=1.15, num_classes=10, input_shape=(3, 64, 64),
                         precisions=["int8"])
    plain = trial_candidates(sel, 3)
    assert plain[0] is sel.chosen and len({c.family for c in plain}) == 3
    assert "resnet" not in {c.family for c in plain}  # the proxy ranks the depthwise families ahead at this budget
    with_teacher = trial_candidates(sel, 3, prefer="resnet")
    assert with_teacher[:2] == plain[:2] and with_teacher[2].family == "resnet" and with_teacher[2].fits
    assert trial_candidates(sel, 3, prefer=plain[1].family) == plain  # already tried: nothing changes
    assert teacher_family(type("Spec", (), {"arch": "torchvision:resnet18"})()) == "resnet"
    assert teacher_family(None, torchvision.models.mobilenet_v2()) == "mobilenet_v2"
    assert teacher_family(type("Spec", (), {"arch": "torchvision:vgg11"})()) is None
