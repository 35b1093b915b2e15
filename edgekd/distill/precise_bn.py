"""Precise BatchNorm statistics: running means and variances recomputed with the weights being evaluated.

BatchNorm's running statistics are an exponential average over the last few dozen training steps, taken
while the weights moved. On a long schedule that lag does not matter; a student trained from scratch for a
few hundred steps at a high rate is another case: deep, narrow networks (EfficientNet-B0, MNASNet) answer at
chance in eval mode while the same weights with batch statistics have learnt (each layer's eval-mode input
is off by what the layers before it moved, and the error compounds with depth). Recomputing the statistics
with the final weights before every evaluation is "precise BN" (Wu & Johnson, *Rethinking "Batch" in
BatchNorm*, 2021; fvcore's ``update_bn_stats``). Only the BatchNorm layers run in training mode then:
dropout and stochastic depth stay as they are at evaluation, so the statistics are the ones eval mode meets.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor], *, autocast=None,
                          all_reduce=None) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers with their plain average over the
    batches of ``inputs`` (forwarded with the current weights); returns the number of images used.

    ``all_reduce`` (a function that averages a list of tensors over processes in place) makes every
    process hold the same statistics under DDP. With no BatchNorm layer or no input nothing changes.
    """
    import contextlib

    layers = batchnorm_layers(model)
    if not layers:
        return 0
    kept = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None   # a cumulative average: every batch weighs the same
        m.train()
    seen = 0
    try:
        with autocast or contextlib.nullcontext():
            for x in inputs:
                if len(x) < 2:  # a batch of one has no variance
                    continue
                model(x)
                seen += len(x)
    finally:
        for m, (momentum, mean, var, count) in zip(layers, kept):
            m.momentum = momentum
            if not seen:
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        for m, training in modes.items():
            m.train(training)
    if seen and all_reduce is not None:
        all_reduce([t for m in layers for t in (m.running_mean, m.running_var)])
    return seen
