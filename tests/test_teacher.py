"""The default teacher's recipe (early stopping, cache key), the worth-it check, and --tune."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import packaged_subset, seeded_cnn

from edgekd.data import ImageSet
from edgekd.distill import TrainConfig, evaluate, train
from edgekd.distill import teacher as teacher_mod
from edgekd.distill.worth import WORTH_Z, check_teacher_worth, compare, refuse_unless_worth
from edgekd.errors import EdgeKDError
from edgekd.models import ModelSpec

TINY = TrainConfig(epochs=2, batch_size=32, lr=1e-2, threads=1)


@pytest.fixture(scope="module")
def tiny():
    """600 train / 200 test MNIST digits."""
    return packaged_subset(600, 200)


def _cnn(seed=0, width=0.5):
    return seeded_cnn(seed, width)


# ---- early stopping ----------------------------------------------------------------------------


def test_early_stopping_stops_at_the_plateau_and_keeps_the_best_epoch(tiny, tmp_path):
    cfg = replace(TINY, loss="ce", epochs=60, schedule="plateau", patience=2, lr_drops=1)
    model = _cnn()
    seen = []
    result = train(model, None, tiny, cfg, ckpt_dir=tmp_path, progress=False, on_epoch=seen.append)
    vals = [h["val_accuracy"] for h in result.history]
    assert result.epochs_run < cfg.epochs and len(seen) == result.epochs_run
    assert "plateau" in result.stop_reason and "1 tenfold" in result.stop_reason
    # the first epoch with the best validation accuracy is the one kept, whatever came after it
    assert result.best_epoch == vals.index(max(vals)) + 1
    assert result.val_accuracy == max(vals) == evaluate(model, tiny.val, tiny)
    assert result.epochs_run - result.best_epoch >= cfg.patience
    # the rate was divided by 10 once, at the first plateau
    lrs = sorted({round(h["lr"], 8) for h in result.history}, reverse=True)
    assert lrs == [cfg.lr, round(cfg.lr / 10, 8)]
    # a resume of a run that had stopped does not train on
    again = _cnn(5)
    resumed = train(again, None, tiny, cfg, ckpt_dir=tmp_path, resume=True, progress=False)
    assert resumed.epochs_run == result.epochs_run and resumed.best_epoch == result.best_epoch
    assert evaluate(again, tiny.val, tiny) == result.val_accuracy


def test_without_patience_all_epochs_run(tiny, tmp_path):
    result = train(_cnn(), None, tiny, replace(TINY, loss="ce"), ckpt_dir=tmp_path, progress=False)
    assert result.epochs_run == 2 and result.stop_reason == "ran the 2 epochs asked for"


@pytest.mark.parametrize("cfg, pattern", [(dict(patience=-1), "patience"), (dict(schedule="plateau"), "needs a patience"),
                                          (dict(lr_drops=-1), "lr_drops")])
def test_early_stopping_settings_checked(cfg, pattern):
    with pytest.raises(EdgeKDError, match=pattern):
        replace(TINY, **cfg).validate()


# ---- the default teacher's recipe -------------------------------------------------------------------


def test_teacher_cache_key_covers_the_recipe(tiny, monkeypatch):
    specs = [teacher_mod.default_teacher_spec(tiny, r) for r in range(len(teacher_mod.TEACHER_RUNGS))]
    cfg = teacher_mod.teacher_config(tiny)
    key = teacher_mod.teacher_cache_key(tiny, specs, cfg)
    assert key == teacher_mod.teacher_cache_key(tiny, specs, teacher_mod.teacher_config(tiny))
    # The students' KD settings play no part in a teacher trained on labels: a new KD default keeps the cache.
    assert teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, alpha=0.1, temperature=2.0)) == key
    changed = {
        "patience": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, patience=cfg.patience + 1)),
        "plateau schedule": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, schedule="plateau")),
        "lr drops": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, schedule="plateau", lr_drops=2)),
        "flip": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, flip=not cfg.flip)),
        "schedule": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, schedule="cosine")),
        "lr": teacher_mod.teacher_cache_key(tiny, specs, replace(cfg, lr=cfg.lr / 2)),
        "ladder": teacher_mod.teacher_cache_key(tiny, specs[:1], cfg),
        "no label smoothing": teacher_mod.teacher_cache_key(tiny, specs, teacher_mod.teacher_config(tiny, label_smoothing=0.0)),
        # Smoothing chosen by the caller holds on every rung, unlike the recipe's (dropped after an underfit).
        "smoothing on every rung": teacher_mod.teacher_cache_key(
            tiny, specs, cfg, teacher_mod.rung_smoothing(cfg, len(specs), explicit=True)),
    }
    assert teacher_mod.rung_smoothing(cfg, 2) == [0.1, 0.0]
    assert teacher_mod.rung_smoothing(cfg, 2, explicit=True) == [0.1, 0.1]
    assert cfg.label_smoothing == 0.1 and teacher_mod.teacher_config(tiny, label_smoothing=0.0).label_smoothing == 0.0
    monkeypatch.setattr(teacher_mod, "TEACHER_STEPS", teacher_mod.TEACHER_STEPS + 1)
    changed["step budget"] = teacher_mod.teacher_cache_key(tiny, specs, cfg)
    monkeypatch.setattr(teacher_mod, "UNDERFIT_TRAIN_ACCURACY", 0.5)
    changed["underfit threshold"] = teacher_mod.teacher_cache_key(tiny, specs, cfg)
    monkeypatch.setattr(teacher_mod, "UNDERFIT_LABEL_SMOOTHING", 0.05)
    changed["smoothing after an underfit"] = teacher_mod.teacher_cache_key(tiny, specs, cfg)
    monkeypatch.setattr(teacher_mod, "RECIPE_VERSION", teacher_mod.RECIPE_VERSION + 1)
    changed["recipe version"] = teacher_mod.teacher_cache_key(tiny, specs, cfg)
    assert key not in changed.values() and len(set(changed.values())) == len(changed)


def test_teacher_epochs_scale_with_the_data(tiny):
    small = teacher_mod.teacher_config(tiny)
    many = 60000
    x = np.resize(tiny.train.x, (many, *tiny.train.x.shape[1:]))
    big = teacher_mod.teacher_config(replace(tiny, train=ImageSet(x, np.resize(tiny.train.y, many), "train")))
    # a budget of optimiser steps: fewer epochs for more images, within the bounds
    assert teacher_mod.TEACHER_MIN_EPOCHS <= big.epochs < small.epochs <= teacher_mod.TEACHER_TRAIN.epochs
    assert small.patience >= 3 and small.schedule == "onecycle" and small.shift_px == 2
    assert big.patience == 3 and small.patience == -(-teacher_mod.TEACHER_PATIENCE_STEPS // 4)  # 540 images: 4 steps


def _mirrored(tiny):
    """The same digits made symmetric (left half mirrored onto the right): flipping keeps every label."""
    sym = tiny.train.x.copy()
    sym[..., 14:] = sym[..., :14][..., ::-1]
    vsym = tiny.val.x.copy()
    vsym[..., 14:] = vsym[..., :14][..., ::-1]
    return replace(tiny, train=ImageSet(sym, tiny.train.y, "train"), val=ImageSet(vsym, tiny.val.y, "val"))


def test_mirror_flips_only_for_mirror_symmetric_data(tiny):
    assert teacher_mod.mirror_symmetric(tiny) is False  # digits change meaning in a mirror
    assert teacher_mod.mirror_symmetric(_mirrored(tiny)) is True


def test_default_teacher_records_why_it_stopped(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    _, spec, info = teacher_mod.get_teacher(tiny, progress=False, epochs=2)
    assert info["cached"] is False and info["stop_reason"].startswith("ran its 2 epochs")
    assert len(info["history"]) == info["epochs"] == 2 and len(info["rungs"]) == 1  # capped: no ladder climb
    _, _, cached = teacher_mod.get_teacher(tiny, progress=False, epochs=2)
    assert cached["cached"] is True and cached["history"] == info["history"]
    assert cached["stop_reason"] == info["stop_reason"] and cached["best_epoch"] == info["best_epoch"]


@pytest.mark.slow
def test_an_underfitting_teacher_climbs_the_ladder_with_more_steps(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "UNDERFIT_TRAIN_ACCURACY", 1.01)  # nothing fits 101%: every rung underfits
    monkeypatch.setattr(teacher_mod, "TEACHER_STEPS", 1)                # the minimum of 3 epochs
    _, spec, info = teacher_mod.get_teacher(tiny, cache_dir=tmp_path, progress=False)
    first, second = info["rungs"]
    assert first["underfits"] and (first["width"], first["depth"]) == (4.0, 1) and first["epochs"] == 3
    assert (second["width"], second["depth"]) == (3.0, 2)
    # Short of capacity, not of regularisation: the rung after an underfitting one drops label smoothing.
    assert (first["label_smoothing"], second["label_smoothing"]) == (0.1, 0.0)
    assert info["recipe"]["rung_label_smoothing"] == [0.1, 0.0]
    assert second["epochs"] == 6 or "plateau" in second["stop_reason"]  # twice the epochs unless it stopped early
    kept = max(info["rungs"], key=lambda r: r["val_accuracy"])
    assert (spec.width, spec.depth) == (kept["width"], kept["depth"]) and info["val_accuracy"] == kept["val_accuracy"]


# ---- is the teacher worth it? ---------------------------------------------------------------------


def _preds(right_both, teacher_only, student_only, wrong_both):
    labels = np.zeros(right_both + teacher_only + student_only + wrong_both, dtype=np.int64)
    t = labels.copy()
    s = labels.copy()
    a = right_both
    s[a:a + teacher_only] = 1
    t[a + teacher_only:a + teacher_only + student_only] = 1
    t[a + teacher_only + student_only:] = 2
    s[a + teacher_only + student_only:] = 3
    return t, s, labels


@pytest.mark.parametrize("counts, worth", [((700, 30, 10, 60), True), ((700, 12, 8, 80), False),
                                           ((700, 10, 30, 60), False), ((800, 0, 0, 0), False),
                                           ((780, 9, 1, 10), True)])
def test_worth_is_a_paired_margin_on_validation(counts, worth):
    t, s, y = _preds(*counts)
    check = compare(t, s, y, {"epochs": 1})
    b, c = counts[1], counts[2]
    assert (check.teacher_only, check.student_only) == (b, c)
    assert check.worth is worth and (check.worth == (b > c and (b - c) / np.sqrt(b + c) >= WORTH_Z))
    assert ("NOT clearly better" in check.message) is (not worth)


def test_a_weak_teacher_is_not_worth_it_and_strict_refuses(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    weak = _cnn(3, width=0.25)  # one epoch of a quarter-width net: worse than the student after 6
    train(weak, None, tiny, replace(TINY, loss="ce", epochs=1), ckpt_dir=tmp_path / "weak", progress=False)
    student = ModelSpec("cnn", 10, 1, width=0.5)
    check = check_teacher_worth(weak.eval(), tiny, student, replace(TINY, epochs=6))
    assert not check.worth and check.student_val_accuracy > check.teacher_val_accuracy
    assert check.probe["cached"] is False and check.probe["epochs"] == 6
    with pytest.raises(EdgeKDError, match="--strict: the teacher is not worth distilling from"):
        refuse_unless_worth(check)
    again = check_teacher_worth(weak.eval(), tiny, student, replace(TINY, epochs=6))
    assert again.probe["cached"] is True and again.student_val_accuracy == check.student_val_accuracy


# ---- --tune ---------------------------------------------------------------------------------------


class _Tripwire(ImageSet):
    """A test split that fails the moment anything reads its images or labels."""

    def __getattribute__(self, name):
        if name in ("x", "y"):
            raise AssertionError(f"the test split's .{name} was read during tuning")
        return object.__getattribute__(self, name)

    def __len__(self):
        return 200


def test_tuning_never_reads_the_test_split_and_resumes(tiny, tiny_teacher_for_tune, tmp_path):
    import optuna  # noqa: F401  (the test extra installs it: a missing one fails here)
    from edgekd.distill.tune import tune_kd

    sealed = replace(tiny, test=_Tripwire.__new__(_Tripwire))
    spec = ModelSpec("cnn", 10, 1, width=0.25)
    base = replace(TINY, epochs=3)
    first = tune_kd(spec, tiny_teacher_for_tune, sealed, base, n_trials=2, minutes=5, work_dir=tmp_path)
    assert len(first.trials) == 2 and (tmp_path / "optuna.journal").is_file()
    assert first.trials[0]["params"] == {"temperature": base.temperature, "alpha": base.alpha, "loss": "kd",
                                         "lr": base.lr, "views": "none"}  # the defaults are trial 1
    assert first.to_dict()["space"]["views"] == ["none", "shifted", "consistent"]  # array data: views searched
    assert first.best_val_accuracy == max(t["val_accuracy"] for t in first.trials if t["state"] == "complete")
    assert all(base.lr / 4 <= t["params"]["lr"] <= base.lr * 4 for t in first.trials)  # rates around the run's
    resumed = tune_kd(spec, tiny_teacher_for_tune, sealed, base, n_trials=3, minutes=5, work_dir=tmp_path, resume=True)
    assert [t["number"] for t in resumed.trials] == [0, 1, 2]  # one more trial, the first two kept
    assert resumed.trials[:2] == first.trials
    fresh = tune_kd(spec, tiny_teacher_for_tune, sealed, base, n_trials=1, minutes=5, work_dir=tmp_path)
    assert len(fresh.trials) == 1  # without resume the search starts over


@pytest.fixture(scope="module")
def tiny_teacher_for_tune(tiny, tmp_path_factory):
    teacher = _cnn(1, width=1.0)
    train(teacher, None, tiny, replace(TINY, loss="ce", epochs=4), ckpt_dir=tmp_path_factory.mktemp("t"), progress=False)
    return teacher.eval()


# ---- the CLI: the warning, --strict and --tune ------------------------------------------------------


def run_cli(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def untrained_teacher(tmp_path_factory):
    from edgekd.models import save_model

    path = tmp_path_factory.mktemp("weak") / "untrained.safetensors"
    return save_model(path, _cnn(7, width=1.0).eval(), ModelSpec("cnn", 10, 1, width=1.0))


@pytest.mark.slow
def test_cli_strict_refuses_a_teacher_not_worth_it(tiny_npz, untrained_teacher, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("distill", "--target", "host", "--data", str(tiny_npz), "--teacher", str(untrained_teacher),
                   "--epochs", "2", "--widths", "0.25", "--formats", "onnx", "--strict", "--force", "--no-progress",
                   "--out", str(out))  # --force: past the chance check, to the worth check
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--strict: the teacher is not worth distilling from" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_cli_warns_and_tunes(tiny_npz, untrained_teacher, tmp_path):
    import optuna  # noqa: F401  (the test extra installs it: a missing one fails here)
    out = tmp_path / "run"
    proc = run_cli("distill", "--target", "host", "--data", str(tiny_npz), "--teacher", str(untrained_teacher),
                   "--epochs", "2", "--widths", "0.25", "--formats", "onnx", "--tune", "2", "--tune-minutes", "5",
                   "--no-progress", "--bench-seconds", "0.05", "--force", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning:" in proc.stdout and "NOT clearly better" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert report["teacher"]["worth"]["worth"] is False and report["warnings"]
    assert len(report["tuning"]["trials"]) == 2 and config["tuning"]["trials"] == report["tuning"]["trials"]
    assert config["tuned"] == report["tuning"]["best"]
    assert report["student"]["train"]["temperature"] == report["tuning"]["best"]["temperature"]
    assert (out / "tune" / "optuna.journal").is_file()
    md = (out / "report.md").read_text()
    assert "## Tuning (validation split only)" in md and "NOT clearly better" in md


@pytest.mark.slow
def test_kd_benchmark_refuses_gap_closed_when_the_teacher_is_no_better(tiny_npz, untrained_teacher, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_mnist.py"
    proc = subprocess.run([sys.executable, str(script), "--data", str(tiny_npz), "--subset", "1000,200",
                           "--teacher", str(untrained_teacher),
                           "--seeds", "1", "--epochs", "2", "--threads", "1", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "(900 train, 100 val, 200 test)" in proc.stdout  # --subset drew 1,000 of 1,200 and 200 of 300
    assert "refusing to report gap_closed" in proc.stdout and "not better than scratch" in proc.stdout
    assert "gap_closed=" not in proc.stdout
    assert not (tmp_path / "kd-seed0").exists()  # it stopped before distilling


def test_tuned_views_unfold_into_the_training_settings():
    from edgekd.distill.tune import TuneResult, tuned_config, views_of

    base = replace(TINY, augment=False)
    assert views_of(base) == "none"
    for views, augment, teacher_view in (("shifted", True, "clean"), ("consistent", True, "same"), ("none", False, None)):
        cfg = tuned_config(base, TuneResult(best={"temperature": 2.0, "views": views}, best_val_accuracy=0.9))
        assert cfg.temperature == 2.0 and cfg.augment is augment and views_of(cfg) == views and cfg.flip is False
        if teacher_view:
            assert cfg.teacher_view == teacher_view
    # the mirrored views: flips alone (no shifts) or with shifts, the teacher labelling each view
    flipped = tuned_config(base, TuneResult(best={"views": "flipped"}, best_val_accuracy=0.9))
    assert (flipped.augment, flipped.flip, flipped.shift_px, flipped.teacher_view) == (True, True, 0, "same")
    both = tuned_config(base, TuneResult(best={"views": "consistent+flips"}, best_val_accuracy=0.9))
    assert (both.augment, both.flip, both.shift_px, both.teacher_view) == (True, True, base.shift_px, "same")
    assert views_of(flipped) == "flipped" and views_of(both) == "consistent+flips"
    # a base with flips on is brought back to none by the "none" views
    assert tuned_config(both, TuneResult(best={"views": "none"}, best_val_accuracy=0.9)).flip is False


def test_a_trial_scores_the_student_it_leaves():
    from edgekd.distill.tune import _score

    curve = [0.5, 0.91, 0.88]  # a lucky middle epoch
    assert _score(curve, TINY) == 0.88  # the last epoch is the student kept
    assert _score(curve, replace(TINY, patience=3)) == 0.91  # with patience the best epoch is kept
    assert _score([], TINY) == 0.0


def test_mirrored_views_searched_only_for_mirror_symmetric_data(tiny):
    from edgekd.distill.tune import search_space

    assert search_space(tiny)["views"][1] == ("none", "shifted", "consistent")  # digits: no flips
    assert search_space(_mirrored(tiny))["views"][1] == ("none", "shifted", "consistent", "flipped", "consistent+flips")


def test_trials_are_pruned_only_in_the_last_quarter_of_their_epochs():
    from edgekd.distill.tune import pruning_starts

    assert [pruning_starts(n) for n in (1, 3, 4, 16, 48)] == [1, 2, 3, 12, 36]


def test_learning_rate_searched_around_the_configured_one(tiny):
    from edgekd.distill.tune import LR_FACTOR, search_space

    assert search_space(tiny)["lr"] == ("float_log", 1e-2 / LR_FACTOR, 1e-2 * LR_FACTOR)
    kind, low, high = search_space(tiny, lr=2e-3)["lr"]
    assert kind == "float_log" and low == pytest.approx(5e-4) and high == pytest.approx(8e-3)


def test_a_second_run_waits_for_the_probe_another_run_is_training(tiny, tmp_path, monkeypatch):
    """Two runs on the same data started together train the student-alone probe once: the second blocks
    on the first's lock and then reads the first's result."""
    import threading

    from edgekd.distill.worth import scratch_predictions
    from edgekd.fsutil import wait_lock

    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    student, cfg = ModelSpec("cnn", 10, 1, width=0.25), replace(TINY, epochs=1)
    first, probe = scratch_predictions(tiny, student, cfg)
    assert probe["cached"] is False
    (entry,) = tmp_path.glob("scratch-*.json")
    saved = entry.read_bytes()
    entry.unlink()  # as if the first run were still training it
    result = {}
    with wait_lock(tmp_path / f".{entry.stem}.lock"):
        second = threading.Thread(target=lambda: result.update(out=scratch_predictions(tiny, student, cfg)))
        second.start()
        second.join(timeout=2)
        assert second.is_alive()  # blocked on the lock, not training its own probe
        entry.write_bytes(saved)  # the first run finishes and writes its result
    second.join(timeout=120)
    pred, probe = result["out"]
    assert probe["cached"] is True and (pred == first).all()
