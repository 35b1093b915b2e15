"""Memory stays flat: evaluation batches are bounded by pixels, so a teacher at 224 px never holds a 512-image batch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from edgekd.data.loader import EVAL_BATCH_PIXELS, ArrayEval, eval_batch_size
from edgekd.data.preprocess import Preprocess


def test_eval_batches_are_capped_by_pixels_not_by_count():
    assert eval_batch_size(512, (3, 224, 224)) == EVAL_BATCH_PIXELS // (224 * 224) == 64
    assert eval_batch_size(512, (1, 28, 28)) == 512   # digits keep their large batches
    assert eval_batch_size(512, (3, 64, 64)) == 512
    assert eval_batch_size(512, (3, 4096, 4096)) == 1


def test_array_eval_views_come_in_bounded_batches():
    pre = Preprocess(image_size=224, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = np.random.default_rng(0).integers(0, 255, (150, 3, 32, 32), dtype=np.uint8)
    views = ArrayEval(x, np.zeros(150, np.int64), pre, 224)
    sizes = [len(b) for _, b in views.batches(512)]
    assert sizes == [64, 64, 22] and all(b.shape[1:] == (3, 224, 224) for _, b in views.batches(512))


SCRIPT = r"""
import resource, sys
import numpy as np, torch
from edgekd.data import make_splits, RawData
from edgekd.distill.evaluate import predict_logits
torch.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.integers(0, 255, (400, 3, 32, 32), dtype=np.uint8)
y = np.arange(400) % 4
splits = make_splits(RawData(x, y, x[:100], y[:100]), name="t", source="t", calib_size=16).at_image_size(224)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(8, 4))
seen = []
model[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
predict_logits(model, splits.train.x, splits, batch_size=512, size=224)  # warm: allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
predict_logits(model, splits.train.x, splits, batch_size=512, size=224)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(max(seen), round(grew))
"""


def test_a_224px_evaluation_does_not_hold_a_512_image_batch():
    """The teacher's pass over a split at 224 px: at most 64 images a batch (was all of them, 1.3 GB of
    activations for this one conv); the resident peak grows by well under that."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    biggest, grew_mb = (int(v) for v in out.stdout.split())
    assert biggest <= 64
    assert grew_mb < 500
