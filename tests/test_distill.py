"""edgekd.distill: loss values, the training loop, checkpoints/resume, failure modes, the teacher cache."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.data import RawData, load_data, make_splits
from edgekd.distill import LOSSES, ModelOutputs, TrainConfig, build_loss, evaluate, get_teacher, train
from edgekd.distill.losses import soft_kl
from edgekd.errors import EdgeKDError
from edgekd.models import ModelSpec, create, save_model
from edgekd.models.cnn import CNN

# threads=1: tiny convs gain nothing from a second thread, and CI machines are often shared.
TINY = TrainConfig(epochs=2, batch_size=32, lr=1e-2, threads=1)


@pytest.fixture(scope="module")
def tiny():
    """384 train / 128 test MNIST digits: big enough to learn, small enough for seconds."""
    full = load_data()
    raw = RawData(full.train.x[:384], full.train.y[:384], full.test.x[:128], full.test.y[:128])
    return make_splits(raw, name="tiny", source="test", calib_size=32)


def _student(seed=0, width=0.5):
    torch.manual_seed(seed)
    return create("cnn", num_classes=10, in_channels=1, width=width)


@pytest.fixture(scope="module")
def tiny_teacher(tiny, tmp_path_factory):
    teacher = _student(1, width=1.0)
    train(teacher, None, tiny, replace(TINY, loss="ce", epochs=6, batch_size=32), ckpt_dir=tmp_path_factory.mktemp("t"), progress=False)
    return teacher.eval()


# ---- losses ---------------------------------------------------------------------------------


def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.randint(0, 10, (5,), generator=g)
    T, alpha = 3.0, 0.7
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(5), y].mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    loss = build_loss("kd", temperature=T, alpha=alpha)
    got = loss(ModelOutputs(s), ModelOutputs(t), y)
    assert torch.allclose(got, expected, atol=1e-6)


def test_kd_t_squared_keeps_gradient_scale():
    # Hinton et al.: soft-target gradients scale as 1/T^2; the T^2 factor makes them T-independent
    # (for small logits d/ds = T (p_s - p_t) ~ (s - t) / K whatever T is).
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(64, 10, generator=g) * 0.1, torch.randn(64, 10, generator=g) * 0.1
    norms = []
    for T in (4.0, 16.0):
        sv = s.clone().requires_grad_(True)
        soft_kl(sv, t, T).backward()
        norms.append(sv.grad.norm())
    assert 0.8 < float(norms[0] / norms[1]) < 1.25


def test_kd_alpha_one_is_pure_soft_and_zero_is_ce():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert torch.allclose(build_loss("kd", alpha=1.0, temperature=2.0)(ModelOutputs(s), ModelOutputs(t), y), soft_kl(s, t, 2.0))
    assert torch.allclose(build_loss("kd", alpha=0.0)(ModelOutputs(s), ModelOutputs(t), y), F.cross_entropy(s, y))


def test_temperature_schedule_high_to_low():
    loss = build_loss("kd", temperature=8.0, temperature_end=2.0)
    loss.set_progress(0.0)
    assert loss.terms[0].temperature == 8.0
    loss.set_progress(0.5)
    assert loss.terms[0].temperature == 5.0


@pytest.mark.parametrize("spec, pattern", [("kdd", "did you mean 'kd'"), ("kd+", "malformed"), ("kd:x", "not a number"),
                                           ("kd:-1", "positive"), ("kd+kd", "twice")])
def test_bad_loss_specs(spec, pattern):
    with pytest.raises(EdgeKDError, match=pattern):
        build_loss(spec)


@pytest.mark.parametrize("kw, pattern", [({"temperature": 0}, "temperature"), ({"alpha": 1.5}, "alpha"),
                                         ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "learning rate"),
                                         ({"optimizer": "adam2"}, "optimizer")])
def test_config_out_of_range(kw, pattern):
    with pytest.raises(EdgeKDError, match=pattern):
        replace(TINY, **kw).validate()


def test_registered_losses():
    assert {"kd", "ce"} <= set(LOSSES.names())


# ---- the loop ---------------------------------------------------------------------------------


def test_kd_learns_and_teacher_stays_frozen(tiny, tiny_teacher, tmp_path):
    before = copy.deepcopy(tiny_teacher.state_dict())
    student = _student()
    result = train(student, tiny_teacher, tiny, replace(TINY, epochs=3, cache_teacher=False), ckpt_dir=tmp_path, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.accuracy > 0.2 and result.epochs_run == 3  # chance is 0.1; 33 steps on 346 images
    after = tiny_teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too: eval mode
    assert all(p.grad is None and not p.requires_grad for p in tiny_teacher.parameters())
    assert (tmp_path / "last.pt").exists()


def test_teacher_cache_gives_same_result(tiny, tiny_teacher, tmp_path):
    a = train(_student(), tiny_teacher, tiny, replace(TINY, cache_teacher=True), ckpt_dir=tmp_path / "a", progress=False)
    b = train(_student(), tiny_teacher, tiny, replace(TINY, cache_teacher=False), ckpt_dir=tmp_path / "b", progress=False)
    assert abs(a.history[-1]["loss"] - b.history[-1]["loss"]) < 1e-4


def test_resume_after_an_epoch_matches_uninterrupted(tiny, tiny_teacher, tmp_path):
    cfg = replace(TINY, epochs=3, augment=True)
    full_student = _student()
    full = train(full_student, tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(line):
        raise Stop

    with pytest.raises(Stop):
        train(_student(), tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "cut", progress=False, log=stop_after_first)
    resumed_student = _student(seed=123)  # different init: everything must come from the checkpoint
    resumed = train(resumed_student, tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "cut", resume=True, progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    assert resumed.accuracy == full.accuracy
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-6)
    for k, v in full_student.state_dict().items():
        assert torch.allclose(v.float(), resumed_student.state_dict()[k].float(), atol=1e-6), k


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tiny, tiny_teacher, tmp_path):
    cfg = replace(TINY, epochs=2, augment=True)
    full_student = _student()
    full = train(full_student, tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "full", progress=False)

    class InterruptedCNN(CNN):
        calls = 0

        def forward(self, x):
            InterruptedCNN.calls += 1
            if InterruptedCNN.calls == 15:  # epoch 2, step 4 (11 steps per epoch)
                raise KeyboardInterrupt
            return super().forward(x)

    torch.manual_seed(0)
    flaky = InterruptedCNN(10, 1, width=0.5)
    with pytest.raises(EdgeKDError, match="interrupted at epoch 2 step 4.*--resume") as err:
        train(flaky, tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "cut", progress=False)
    assert err.value.exit_code == 130
    resumed_student = _student(seed=7)
    resumed = train(resumed_student, tiny_teacher, tiny, cfg, ckpt_dir=tmp_path / "cut", resume=True, progress=False)
    assert resumed.accuracy == full.accuracy
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], abs=1e-6)


def test_resume_with_other_settings_is_refused(tiny, tiny_teacher, tmp_path):
    train(_student(), tiny_teacher, tiny, replace(TINY, epochs=1), ckpt_dir=tmp_path, progress=False)
    with pytest.raises(EdgeKDError, match="other settings.*lr"):
        train(_student(), tiny_teacher, tiny, replace(TINY, epochs=1, lr=0.1), ckpt_dir=tmp_path, resume=True, progress=False)


def test_corrupt_checkpoint(tiny, tiny_teacher, tmp_path):
    train(_student(), tiny_teacher, tiny, replace(TINY, epochs=1), ckpt_dir=tmp_path, progress=False)
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(EdgeKDError, match="corrupt") as err:
        train(_student(), tiny_teacher, tiny, replace(TINY, epochs=2), ckpt_dir=tmp_path, resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_pickle_checkpoint_refused_and_never_runs(tiny, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    (tmp_path / "last.pt").write_bytes(pickle.dumps({"format": 1, "student": Exploit()}))
    with pytest.raises(EdgeKDError, match="corrupt or not an edgekd checkpoint"):
        train(_student(), None, tiny, replace(TINY, loss="ce"), ckpt_dir=tmp_path, resume=True, progress=False)
    assert not marker.exists()


class NaNAfter(torch.nn.Module):
    """A 'teacher' whose logits turn NaN after ``n`` forward calls."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls, self.w = n, 0, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        out = torch.zeros(len(x), 10)
        return out + float("nan") if self.calls > self.n else out


def test_nan_loss_names_epoch_and_last_checkpoint(tiny, tmp_path):
    cfg = replace(TINY, epochs=3, cache_teacher=False)
    with pytest.raises(EdgeKDError, match="epoch 1 step 1; last good checkpoint: none"):
        train(_student(), NaNAfter(0), tiny, cfg, ckpt_dir=tmp_path / "a", progress=False)
    # 346 train images / 32 = 10 steps per epoch: teacher call 14 is epoch 2 step 4
    with pytest.raises(EdgeKDError, match=r"epoch 2 step 4; last good checkpoint: .*last\.pt") as err:
        train(_student(), NaNAfter(13), tiny, cfg, ckpt_dir=tmp_path / "b", progress=False)
    assert "--lr" in str(err.value)


def test_bf16_autocast_path_runs_on_cpu(tiny, tiny_teacher, tmp_path):
    result = train(_student(), tiny_teacher, tiny, replace(TINY, epochs=1, amp="bf16"), ckpt_dir=tmp_path, progress=False)
    assert result.amp == "bf16" and np.isfinite(result.history[0]["loss"])


def test_kd_needs_teacher(tiny, tmp_path):
    with pytest.raises(EdgeKDError, match="needs a teacher"):
        train(_student(), None, tiny, TINY, ckpt_dir=tmp_path, progress=False)


def test_evaluate_fraction(tiny, tiny_teacher):
    acc = evaluate(tiny_teacher, tiny.test, tiny)
    assert 0.3 < acc <= 1.0


def test_final_weights_written_with_spec(tiny, tiny_teacher, tmp_path):
    from edgekd.models import load_model

    spec = ModelSpec("cnn", 10, 1, width=0.5)
    student = _student()
    result = train(student, tiny_teacher, tiny, replace(TINY, epochs=1), ckpt_dir=tmp_path, progress=False, spec=spec)
    model, loaded_spec, meta = load_model(result.weights_path)
    assert loaded_spec == spec and meta["accuracy"] == result.accuracy
    assert evaluate(model, tiny.test, tiny) == result.accuracy


# ---- the teacher --------------------------------------------------------------------------------


def test_default_teacher_trained_once_then_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    first_model, spec, first = get_teacher(tiny, progress=False, epochs=1)
    assert first["cached"] is False and spec.width == 4.0
    second_model, _, second = get_teacher(tiny, progress=False, epochs=1)
    assert second["cached"] is True and second["path"] == first["path"] and second["accuracy"] == first["accuracy"]
    x = torch.from_numpy(tiny.preprocess(tiny.test.x[:8]))
    with torch.no_grad():
        assert torch.equal(first_model(x), second_model(x))
    # a damaged cache entry is retrained, not fatal
    from pathlib import Path

    Path(first["path"]).write_bytes(b"garbage")
    _, _, third = get_teacher(tiny, progress=False, epochs=1)
    assert third["cached"] is False


def test_user_teacher_checked_against_data(tiny, tiny_teacher, tmp_path):
    good = save_model(tmp_path / "good.safetensors", tiny_teacher, ModelSpec("cnn", 10, 1, width=1.0))
    model, spec, info = get_teacher(tiny, teacher_path=good, progress=False)
    assert info["accuracy"] == evaluate(tiny_teacher, tiny.test, tiny) and info["cached"] is False
    wrong_classes = save_model(tmp_path / "c.safetensors", create("cnn", num_classes=7, in_channels=1, width=0.25),
                               ModelSpec("cnn", 7, 1, width=0.25))
    with pytest.raises(EdgeKDError, match="predicts 7 classes but the data has 10"):
        get_teacher(tiny, teacher_path=wrong_classes)
    wrong_channels = save_model(tmp_path / "rgb.safetensors", create("cnn", num_classes=10, in_channels=3, width=0.25),
                                ModelSpec("cnn", 10, 3, width=0.25))
    with pytest.raises(EdgeKDError, match="3-channel images but the data has 1"):
        get_teacher(tiny, teacher_path=wrong_channels)
    with pytest.raises(EdgeKDError, match="does not exist"):
        get_teacher(tiny, teacher_path=tmp_path / "missing.safetensors")
