"""Precise BN (edgekd.distill.precise_bn): BatchNorm statistics recomputed with the weights being evaluated."""
from __future__ import annotations

from dataclasses import replace

import torch
from conftest import packaged_subset, seeded_cnn
from torch import nn

from edgekd.distill import TrainConfig, train
from edgekd.distill.precise_bn import recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    # Dropout before a BN layer: its statistics must be those eval mode (no dropout) meets.
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Dropout(0.5), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.BatchNorm2d(4, momentum=0.01))


def _batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 3, 8, 8, generator=g) * 2.0 + 5.0 for _ in range(n)]


def test_statistics_are_the_average_over_the_batches_with_eval_mode_elsewhere():
    model = _net()
    batches = _batches()
    assert recalibrate_batchnorm(model, iter(batches)) == 6 * 32
    bn1, bn2 = model[2], model[5]
    with torch.no_grad():
        pre = [model[0](x) for x in batches]  # dropout off: eval mode
        mean = torch.stack([p.mean((0, 2, 3)) for p in pre]).mean(0)
        var = torch.stack([p.var((0, 2, 3), unbiased=True) for p in pre]).mean(0)
    assert torch.allclose(bn1.running_mean, mean, atol=1e-4)
    assert torch.allclose(bn1.running_var, var, rtol=1e-4)
    # the momentum is the layer's own again, the modes are as they were
    assert bn1.momentum == 0.1 and bn2.momentum == 0.01 and model.training and model[1].training
    # eval mode now reproduces a batch-statistics forward of the same data (a single batch: exactly)
    one = _net()
    recalibrate_batchnorm(one, iter(batches[:1]))
    one.eval()
    with torch.no_grad():
        ref = _net()
        ref.load_state_dict(one.state_dict())
        ref.eval()
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        # (to float error and the unbiased variance BN keeps: 1,152 values a channel)
        assert torch.allclose(one(batches[0]), ref(batches[0]), atol=5e-3)


def test_no_batch_norm_or_no_input_changes_nothing():
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), iter(_batches(1))) == 0
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, iter([])) == 0
    assert recalibrate_batchnorm(model, iter([torch.randn(1, 3, 8, 8)])) == 0  # a batch of one has no variance
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[2].momentum == 0.1


def test_training_evaluates_with_statistics_of_the_final_weights(tmp_path):
    """After training, the student's BN statistics are those its final weights give on the first training
    batches of the last epoch: recalibrating again on those changes nothing. With precise_bn_images=0 they
    are the running averages, which differ."""
    splits = packaged_subset(256, 64)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=2e-2, threads=1, loss="ce", precise_bn_images=64)
    student = seeded_cnn(0, 0.5)
    result = train(student, None, splits, cfg, ckpt_dir=tmp_path / "a", progress=False)
    from edgekd.data.batches import train_batches

    batches = train_batches(splits, batch_size=32, seed=0, device=torch.device("cpu"), channels_last=True)
    xs = [b.x for step, b in batches.epoch(0) if step < 2]
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    assert recalibrate_batchnorm(student, iter(xs)) == 64
    again = {k: v for k, v in student.state_dict().items() if "running" in k}
    assert stats and all(torch.allclose(stats[k], again[k], rtol=1e-3, atol=1e-4) for k in stats)
    plain = seeded_cnn(0, 0.5)
    train(plain, None, splits, replace(cfg, precise_bn_images=0), ckpt_dir=tmp_path / "b", progress=False)
    assert not all(torch.allclose(stats[k], plain.state_dict()[k], atol=1e-3) for k in stats)
    assert 0.0 <= result.accuracy <= 1.0
