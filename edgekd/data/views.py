"""Training views chosen from the data: whether a mirror keeps an image's label, and how much of it a random crop may cut away.

ImageNet's views (a random-resized crop of 0.08-1 of the area, then a left-right flip) suit photos of
objects: the object survives being cut to a corner and mirrored. Characters, digits, text and most
centred small images do not: a crop of a twelfth of a 28-pixel digit is a stroke, and a mirrored
"2" or "Z" is another symbol. What the images are is judged on a seeded sample of the training
images, in their evaluation view at a small size:

- *centred on a plain background*: the outer ring of the images (an eighth of the side) varies
  much less than the whole images (digits, characters, product shots on white);
- *small*: the median shorter side is at most :data:`SMALL_SIDE` pixels (thumbnails, CIFAR-like);
- *mirror-asymmetric*: mirrored images classified by the nearest class mean of the other half of
  the sample keep less than :data:`MIRROR_KEEP` of the originals' accuracy above chance. Where that
  classifier is itself near chance (photos, where a class mean is a blur) the test says nothing and
  the flip stays.

Centred or small images train on crops of :data:`CENTRED_CROP_SCALE` of the area; mirror-asymmetric
ones without flips. The choice and its reason are part of the preprocessing record (``report.json``
``data.preprocess.view_reason``, ``data.views``). ``--crop-scale`` and ``--flip/--no-flip`` win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PHOTO_CROP_SCALE = (0.08, 1.0)      # torchvision's ImageNet reference recipe
CENTRED_CROP_SCALE = (0.6, 1.0)     # the crop keeps most of the symbol: a shift and a zoom, not a detail
SMALL_SIDE = 64
PLAIN_BORDER = 0.35                 # ring std / whole std below this: a plain background
MIRROR_KEEP = 0.75
DECIDES = 0.1                       # the class-mean classifier must beat chance by this to judge mirrors
SAMPLE = 512                        # images decoded to judge (at VIEW_SIZE pixels)
VIEW_SIZE = 32


@dataclass(frozen=True)
class Views:
    """The training views chosen for a dataset and why."""

    flip: bool
    crop_scale: tuple[float, float]
    reason: str
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"flip": self.flip, "crop_scale": list(self.crop_scale), "reason": self.reason, **self.facts}


def border_ratio(x: np.ndarray) -> float:
    """Std of the outer ring's pixels over std of all pixels, across images: ~0 for a plain
    background, ~1 for photos."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    r = max(1, min(h, w) // 8)
    ring = np.concatenate([x[..., :r, :].reshape(len(x), -1), x[..., -r:, :].reshape(len(x), -1),
                           x[..., r:-r, :r].reshape(len(x), -1), x[..., r:-r, -r:].reshape(len(x), -1)], axis=1)
    whole = float(x.std())
    return float(ring.std()) / whole if whole > 0 else 1.0


def mirror_test(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(plain, mirrored, chance) accuracy of a nearest-class-mean classifier whose means come from one
    half of the images and which is scored on the other half, as they are and mirrored left-right."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    fit, score = order[: len(order) // 2], order[len(order) // 2:]
    f = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    classes = np.unique(y[fit])
    if len(classes) < 2 or not len(score):
        return 0.0, 0.0, 1.0
    means = np.stack([f[fit][y[fit] == k].mean(0) for k in classes])

    def accuracy(images: np.ndarray) -> float:
        d = (images * images).sum(1, keepdims=True) - 2 * images @ means.T + (means * means).sum(1)
        return float((classes[d.argmin(1)] == y[score]).mean())

    mirrored = np.asarray(x, dtype=np.float32)[score][..., ::-1].reshape(len(score), -1)
    counts = np.bincount(y[score])
    return accuracy(f[score]), accuracy(mirrored), float(counts.max() / counts.sum())


def choose(x: np.ndarray, y: np.ndarray, side: float, *, seed: int = 0) -> Views:
    """The views for images ``x`` (uint8 N x C x H x W) of labels ``y`` whose median shorter side on disk is ``side``."""
    plain_bg = border_ratio(x)
    plain, mirrored, chance = mirror_test(x, y, seed)
    centred, small = plain_bg < PLAIN_BORDER, side <= SMALL_SIDE
    decides = plain - chance >= DECIDES
    keeps = (mirrored - chance) / max(plain - chance, 1e-9)
    asymmetric = decides and keeps < MIRROR_KEEP
    facts = {"border_ratio": round(plain_bg, 3), "median_side": float(side),
             "mirror_accuracy": [round(plain, 3), round(mirrored, 3), round(chance, 3)], "sample": int(len(y))}
    why = []
    if centred or small:
        scale = CENTRED_CROP_SCALE
        kind = " and ".join(k for k, on in (("centred on a plain background", centred),
                                            (f"small ({side:g} px)", small)) if on)
        why.append(f"images {kind}: crops of {scale[0]:g}-{scale[1]:g} of the area")
    else:
        scale = PHOTO_CROP_SCALE
        why.append(f"photo-like images: crops of {scale[0]:g}-{scale[1]:g} of the area")
    if asymmetric:
        why.append(f"no flips (mirrored images keep {max(keeps, 0):.0%} of the class-mean accuracy above chance)")
    elif decides:
        why.append(f"flips (mirrored images keep {keeps:.0%} of the class-mean accuracy above chance)")
    else:
        why.append("flips (the images are too varied for the mirror test to judge)")
    return Views(flip=not asymmetric, crop_scale=scale, reason="; ".join(why), facts=facts)


def sample_views(train, pre, *, side: float, seed: int, workers: int) -> Views:
    """:func:`choose` on a seeded sample of the training files ``train`` (a FileSet) decoded by the
    evaluation rule of ``pre`` at a small size."""
    from dataclasses import replace

    from edgekd.data.loader import EvalDataset, make_loader

    rng = np.random.default_rng([seed, 3])
    pick = np.sort(rng.permutation(len(train))[:SAMPLE])
    subset = train.subset(pick, "train")
    size = min(VIEW_SIZE, pre.image_size)
    order = [list(range(i, min(i + 128, len(subset)))) for i in range(0, len(subset), 128)]
    xs, ys = [], []
    for batch in make_loader(EvalDataset(subset, replace(pre, crop_pct=1.0), size), order,
                             workers if len(order) > 1 else 0):
        if batch["x"] is not None:
            xs.append(batch["x"].numpy())
            ys.append(subset.y[batch["idx"].numpy()])
    if not xs:
        return Views(flip=True, crop_scale=PHOTO_CROP_SCALE, reason="no sampled image decoded: ImageNet views")
    return choose(np.concatenate(xs), np.concatenate(ys), side, seed=seed)
