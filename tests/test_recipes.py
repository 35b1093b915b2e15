"""Per-family training recipes: declared with the family, applied where the user set nothing, no decay on BN and biases."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from edgekd.distill import TrainConfig
from edgekd.distill.recipes import RECIPES, apply_recipe, parameter_groups, recipe_for
from edgekd.models import family_traits, families


def test_each_family_declares_a_known_recipe():
    for arch in families():
        assert family_traits(arch).recipe in RECIPES
    for arch in ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "efficientnet_b0", "mnasnet", "shufflenet_v2"):
        assert recipe_for(arch).name == "mobile"
    assert recipe_for("cnn").name == "cnn" and recipe_for("mlp").name == "cnn"
    assert recipe_for("torchvision:resnet18").name == "cnn"  # a model source declares none


def test_the_recipe_fills_what_the_user_did_not_set(monkeypatch):
    from edgekd.distill import recipes

    monkeypatch.setitem(recipes.RECIPES, "mobile", recipes.Recipe("mobile", lr=2e-3, weight_decay=0.05,
                                                                  decay_norm_and_bias=False, label_smoothing=0.1))
    cfg = apply_recipe(TrainConfig(), "mobilenet_v3_small")
    assert (cfg.lr, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.label_smoothing) == (2e-3, 0.05, False, 0.1)
    assert cfg.result_dict()["decay_norm_and_bias"] is False
    mine = apply_recipe(replace(TrainConfig(), lr=5e-4), "mobilenet_v3_small", given=("lr",))
    assert mine.lr == 5e-4 and mine.weight_decay == 0.05
    same = apply_recipe(TrainConfig(), "cnn")
    assert same.result_dict() == TrainConfig().result_dict()  # the small CNN's runs (and caches) are unchanged


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def test_parameter_groups_leave_norms_and_biases_undecayed():
    net = _bn_net()
    net(torch.zeros(2, 1, 6, 6))
    conv, bn, fc = net[0], net[1], net[4]
    decay, plain = parameter_groups([net], 0.05, decay_norm_and_bias=False)
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(decay) == {id(conv.weight), id(fc.weight)} and decay["weight_decay"] == 0.05
    assert ids(plain) == {id(bn.weight), id(bn.bias), id(fc.bias)} and plain["weight_decay"] == 0.0
    (one,) = parameter_groups([net], 0.05)
    assert [id(p) for p in one["params"]] == [id(p) for p in net.parameters()]  # the old single group, same order


def test_adamw_then_shrinks_weights_but_not_bn_scales():
    net = _bn_net()
    x = torch.randn(4, 1, 6, 6)
    net(x)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(parameter_groups([net], 1.0, decay_norm_and_bias=False), lr=0.1)
    (net(x) * 0).sum().backward()  # zero gradients: only the decay moves anything
    opt.step()
    after = dict(net.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * 0.9)
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["4.bias"], before["4.bias"])


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_training_uses_the_groups(decay_norm_and_bias, tmp_path):
    from conftest import packaged_subset

    from edgekd.distill import train
    from edgekd.models import ModelSpec

    splits = packaged_subset(128, 64)
    model = ModelSpec(arch="cnn", num_classes=10, in_channels=1, width=0.25).build()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, weight_decay=5.0, schedule="constant", loss="ce", threads=1,
                      decay_norm_and_bias=decay_norm_and_bias)
    start = bn.weight.detach().clone()
    train(model, None, splits, cfg, ckpt_dir=tmp_path, progress=False)
    shrunk = float((bn.weight.detach() / start).mean())
    # lr x wd = 5% a step: two steps shrink decayed BN scales to about 0.90; Adam's own steps move them 0.02 at most
    assert (shrunk < 0.95) is decay_norm_and_bias


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mnasnet"])
def test_bn_statistics_follow_a_short_training(arch):
    """torchvision's BN momentum (0.01, MNASNet 0.0003) leaves the running statistics at their initial 0/1 after
    the few hundred steps of a small-data run, and the student in eval mode at chance (issue 27's 11%)."""
    from edgekd.models import ModelSpec

    model = ModelSpec(arch=arch, num_classes=10, in_channels=3, width=0.25, image_size=32).build().train()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32) * 2 + 3
    with torch.no_grad():
        for _ in range(30):
            model(x)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stem_out = next(m for m in model.modules() if isinstance(m, nn.Conv2d))(x)
    batch_mean = stem_out.mean((0, 2, 3))
    # 30 steps at momentum 0.1 move the running mean 96% of the way; at 0.01 only 26%
    assert torch.allclose(bn.running_mean, batch_mean, atol=0.1 * float(batch_mean.abs().max()))


def test_the_run_trains_each_family_with_its_recipe_unless_the_user_set_the_rate(monkeypatch):
    from edgekd.config import RunConfig
    from edgekd.distill import recipes
    from edgekd.pipeline import _train_config

    monkeypatch.setitem(recipes.RECIPES, "mobile", recipes.Recipe("mobile", lr=2e-3, weight_decay=0.05,
                                                                  decay_norm_and_bias=False))
    cfg = RunConfig()
    mobile = _train_config(cfg, "cpu", "mobilenet_v3_small")
    assert mobile.lr == 2e-3 and mobile.decay_norm_and_bias is False and mobile.weight_decay == 0.05
    assert _train_config(cfg, "cpu", "cnn").result_dict() == _train_config(cfg, "cpu").result_dict()
    cfg.train.lr = 5e-3
    mine = _train_config(cfg, "cpu", "mobilenet_v3_small")
    assert mine.lr == 5e-3 and mine.weight_decay == 0.05
