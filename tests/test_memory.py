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


def _write_folder(root, n: int, classes: int = 4, size: int = 16) -> None:
    """root/train/cNN/IIIII.png: ``n`` distinct tiny images (the content differs, so no duplicate check trips)."""
    from PIL import Image

    rng = np.random.default_rng(n)
    for c in range(classes):
        (root / "train" / f"c{c:02d}").mkdir(parents=True)
    for i in range(n):
        px = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(px).save(root / "train" / f"c{i % classes:02d}" / f"{i:05d}.png", compress_level=0)


def _held_per_run(root, cache) -> tuple[int, int]:
    """Bytes the Python heap (numpy arrays included) holds after load_data and one epoch of training batches
    over the folder, and its peak on the way."""
    import gc
    import tracemalloc

    from edgekd.data import load_data
    from edgekd.data.batches import FileBatches

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    splits = load_data(root, image_size=16, workers=0, cache_dir=cache, seed=0)
    for split in ("calib", "val", "test"):
        assert len(splits.normalized(split)[0:4]) == 4   # decoded once into the cache, read a slice at a time
    batches = FileBatches(splits, batch_size=64, seed=0, device=torch.device("cpu"), channels_last=False, workers=0)
    seen = sum(len(b.idx) for _, b in batches.epoch(0) if b is not None)
    batches.close()
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen >= len(splits.train) - 64
    del splits, batches
    return held - base, peak - base


def test_what_a_run_holds_per_image_file_stays_small(tmp_path):
    """Memory flat in the number of files: the list of a folder's files, its splits, labels, hashes and the
    epoch's order cost a few dozen bytes per file (paths packed in one blob, numpy columns), not a Python
    object or a decoded image per file. The slope between 300 and 3,000 files is what grows with the folder."""
    got = {}
    for n in (300, 3000):
        root = tmp_path / f"f{n}"
        _write_folder(root, n)
        got[n] = _held_per_run(root, tmp_path / f"cache{n}")
    held = (got[3000][0] - got[300][0]) / 2700
    peak = (got[3000][1] - got[300][1]) / 2700
    # a decoded 16-px uint8 image is 768 bytes, a Python str path ~70 and a dict entry ~100 more
    assert held < 200, f"{held:.0f} bytes held per file"
    assert peak < 1500, f"{peak:.0f} bytes per file at the peak"


def test_the_teachers_uncached_forward_on_a_training_batch_goes_in_chunks(tmp_path):
    """Without the teacher-output cache (feature losses, mixup, arrays with cache_teacher off) a 224-px training
    batch of 128 went through the teacher whole: its activations doubled a photo run's peak. Now at most
    EVAL_BATCH_PIXELS a forward, and the loss sees the same logits."""
    from edgekd.data import RawData, make_splits
    from edgekd.distill import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 3, 16, 16), dtype=np.uint8)
    y = np.arange(300) % 4
    splits = make_splits(RawData(x, y, x[:40], y[:40]), name="t", source="t", calib_size=16).at_image_size(
        32, teacher_image_size=224)   # the student at 32 px, the teacher at 224

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 4))

    torch.manual_seed(0)
    teacher, student = net(), net()
    seen = []
    teacher[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
    cfg = TrainConfig(epochs=1, batch_size=128, loss="kd", cache_teacher=False, threads=1, channels_last=False)
    result = train(student, teacher, splits, cfg, ckpt_dir=tmp_path, progress=False)
    assert len(splits.train) >= 256 and result.history[0]["train_accuracy"] >= 0
    assert max(seen) <= 64 and seen.count(64) >= 4   # two training batches of 128, two chunks each


def test_the_chunks_give_the_whole_batchs_features_and_logits():
    """Feature losses read the teacher's stage outputs: chunked, they are the whole batch's, in order."""
    from types import SimpleNamespace

    from edgekd.distill.train import _Forward, _frozen_forward

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(4, 4)).eval()
    net = _Forward(teacher, ["0", "2"])
    x = torch.randn(80, 3, 224, 224)
    seen = []
    teacher[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
    with torch.no_grad():
        feats, logits = _frozen_forward(SimpleNamespace(teacher_net=net), x)
        whole_feats, whole_logits = net(x)
    assert seen[:2] == [64, 16]
    assert len(feats) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(feats, whole_feats))
    assert torch.allclose(logits, whole_logits, atol=1e-6)
