"""Runs that learned nothing must not look like success: a teacher fed the wrong pixels, a student at chance."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgekd import events
from edgekd.data import ImageSet, load_data
from edgekd.distill import TrainConfig, evaluate, train
from edgekd.distill.sanity import (Verdict, chance_accuracy, check_student, check_teacher, far_below, near_chance,
                                   recorded_accuracy)
from edgekd.errors import EdgeKDError


def test_near_chance_on_the_issues_figures():
    # issue 27: ten classes; a teacher fed 224 px crops measured 11.75%, the students 9.5-18.3%.
    for acc in (0.095, 0.1175, 0.11, 0.183):
        assert near_chance(acc, 0.1, 2000)
    assert not near_chance(0.32, 0.1, 2000) and not near_chance(0.605, 0.1, 2000)
    # a handful of validation images judges nothing (a 2-epoch student at 3 of 6 against chance 2 of 6)
    assert not near_chance(0.5, 1 / 3, 6) and not near_chance(0.1, 0.1, 19) and near_chance(0.1, 0.1, 20)
    assert chance_accuracy([0, 0, 0, 1]) == 0.75


def test_far_below_its_record():
    assert far_below(0.2, 0.61, 0.1) and not far_below(0.55, 0.61, 0.1)
    assert not far_below(0.2, None, 0.1) and not far_below(0.1, 0.12, 0.1)  # a record near chance says nothing
    assert Verdict(0.2, 0.1, 500, recorded=0.61).failed


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory, mnist_arrays):
    """1,200 digits whose student sees 14 px and whose teacher is (wrongly) fed 42 px."""
    x, y = mnist_arrays[0], mnist_arrays[1]
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_test=x[1200:1500], y_test=y[1200:1500])
    return load_data(path, image_size=14, teacher_image_size=42)


@pytest.fixture(scope="module")
def teacher_at_14(small_digits, tmp_path_factory):
    """A template-matching teacher (a 14x14 kernel, global average): right at 14 px, at chance at 42 px."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 10, 14), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    splits14 = small_digits.at_image_size(14, teacher_image_size=None)
    train(model, None, splits14, TrainConfig(epochs=5, batch_size=64, lr=1e-2, loss="ce", threads=1),
          ckpt_dir=tmp_path_factory.mktemp("ck"), progress=False)
    return model.eval()


def _run(teacher, splits, *, force=False, user_size=None, info=None):
    return SimpleNamespace(teacher=teacher, splits=splits, device="cpu",
                           teacher_info=info or {"source": "user", "path": "teacher.py:make", "accuracy": 0.1},
                           cfg=SimpleNamespace(force=force, data=SimpleNamespace(teacher_image_size=user_size)))


def test_a_teacher_fed_the_wrong_size_is_shown_the_right_one(small_digits, teacher_at_14):
    assert evaluate(teacher_at_14, small_digits.val, small_digits, size=42) < 0.2
    run = _run(teacher_at_14, small_digits)
    seen = []
    with events.listening(seen.append):
        check_teacher(run)
    assert run.splits.preprocessing.teacher_size == 14 and run.splits.preprocessing.image_size == 14
    choice = run.teacher_info["input_size_choice"]
    assert choice["chosen"] == 14 and choice["was"] == 42 and choice["trials"]["14"] > 0.8
    assert run.teacher_info["accuracy"] > 0.8 and not run.teacher_info["sanity"]["near_chance"]
    assert any("teacher sees 14 px" in e.message for e in seen)


def test_a_teacher_near_chance_at_the_size_the_user_fixed_stops_the_run(small_digits, teacher_at_14):
    with pytest.raises(EdgeKDError, match=r"near chance.*sees 42 px.*--teacher-image-size.*--force") as err:
        check_teacher(_run(teacher_at_14, small_digits, user_size=42))
    assert err.value.exit_code == 2
    run = _run(teacher_at_14, small_digits, user_size=42, force=True)
    seen = []
    with events.listening(seen.append):
        check_teacher(run)  # --force: a warning, and the teacher keeps the size asked for
    assert run.splits.preprocessing.teacher_size == 42 and any(e.kind == "warning" for e in seen)


def test_a_teacher_far_below_its_record_stops_the_run(small_digits, teacher_at_14, tmp_path):
    from edgekd.models import ModelSpec, save_model

    # An edgekd checkpoint records its accuracy; scored far below it, at the size the user gave, it is refused.
    spec = ModelSpec(arch="cnn", num_classes=10, in_channels=1, width=0.25)
    path = save_model(tmp_path / "t.safetensors", spec.build(), spec, {"accuracy": 0.95})
    assert recorded_accuracy(path) == 0.95 and recorded_accuracy(tmp_path / "missing") is None
    info = {"source": "user", "path": str(path), "accuracy": 0.5}
    with pytest.raises(EdgeKDError, match="95.0% recorded"):
        check_teacher(_run(teacher_at_14, small_digits, user_size=42, info=info))


def test_a_default_teacher_that_learned_nothing_is_an_error(small_digits):
    info = {"source": "trained", "path": "cache", "accuracy": 0.11, "val_accuracy": 0.11}
    with pytest.raises(EdgeKDError, match="default teacher learned nothing.*labels follow from the images"):
        check_teacher(_run(None, small_digits, info=info))
    info = {"source": "cache", "path": "cache", "accuracy": 0.95, "val_accuracy": 0.95}
    check_teacher(_run(None, small_digits, info=info))


def test_a_student_that_learned_nothing_fails_the_run(small_digits, tmp_path):
    # Labels shuffled against the images: nothing to learn, the student stays at chance.
    rng = np.random.default_rng(0)
    base = small_digits.at_image_size(14, teacher_image_size=None)
    shuffled = replace(base, train=ImageSet(base.train.x, rng.permutation(base.train.y), "train"), _views={})
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(196, 10))
    result = train(student, None, shuffled, TrainConfig(epochs=2, batch_size=64, lr=1e-2, loss="ce", threads=1),
                   ckpt_dir=tmp_path, progress=False)
    run = SimpleNamespace(splits=shuffled, result=result, cfg=SimpleNamespace(force=False))
    with pytest.raises(EdgeKDError, match="student learned nothing") as err:
        check_student(run)
    assert err.value.exit_code == 1 and run.student_sanity["near_chance"]
    run.cfg.force = True
    check_student(run)  # --force: exported anyway, with a warning
    learned = SimpleNamespace(splits=small_digits, result=SimpleNamespace(val_accuracy=0.9), cfg=SimpleNamespace(force=False))
    check_student(learned)
    assert learned.student_sanity["near_chance"] is False
