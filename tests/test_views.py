"""Training views chosen from the data: digits get mild crops and no mirrors, photos keep ImageNet's views."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data import load_data
from edgekd.data.views import CENTRED_CROP_SCALE, PHOTO_CROP_SCALE, border_ratio, choose, mirror_test


def _digit_folder(root, mnist_arrays, n: int = 300):
    from PIL import Image

    x, y = mnist_arrays[0][:n], mnist_arrays[1][:n]
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"d{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def _photo_folder(root, n: int = 120, side: int = 96):
    """Colour scenes: a class-coloured square at a random place on a textured background."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 200, 60], [40, 60, 220]])
    for i in range(n):
        label = i % 3
        img = (rng.random((side, side, 3)) * 120 + 60).astype(np.uint8)
        cy, cx = rng.integers(side // 5, side - side // 5, 2)
        img[max(0, cy - 16):cy + 16, max(0, cx - 16):cx + 16] = colours[label]
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{label}" / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_arrays):
    return _digit_folder(tmp_path_factory.mktemp("digits") / "digits", mnist_arrays)


def test_border_ratio_tells_plain_backgrounds_from_scenes(mnist_arrays):
    digits = mnist_arrays[0][:200, None]
    scenes = np.random.default_rng(0).integers(0, 255, (200, 3, 32, 32), dtype=np.uint8)
    assert border_ratio(digits) < 0.2 < 0.8 < border_ratio(scenes)


def test_mirror_test_on_digits_and_on_symmetric_digits(mnist_arrays):
    x, y = mnist_arrays[0][:800, None], mnist_arrays[1][:800]
    plain, mirrored, chance = mirror_test(x, y)
    assert plain > 0.6 and mirrored < plain - 0.2 and chance < 0.2
    sym = x.copy()
    sym[..., 14:] = sym[..., :14][..., ::-1]  # left half mirrored onto the right: a flip changes nothing
    plain, mirrored, _ = mirror_test(sym, y)
    assert mirrored == pytest.approx(plain)


def test_digits_get_mild_crops_and_no_flips(mnist_arrays):
    views = choose(mnist_arrays[0][:800, None], mnist_arrays[1][:800], side=28)
    assert views.crop_scale == CENTRED_CROP_SCALE and views.flip is False
    assert "no flips" in views.reason and "plain background" in views.reason


def test_noise_the_mirror_test_cannot_judge_keeps_flips():
    rng = np.random.default_rng(1)
    views = choose(rng.integers(0, 255, (300, 3, 32, 32), dtype=np.uint8), rng.integers(0, 5, 300), side=256)
    assert views.flip is True and views.crop_scale == PHOTO_CROP_SCALE and "too varied" in views.reason


def test_a_digit_folder_trains_on_views_that_fit_it(digits):
    splits = load_data(digits, workers=0)
    pre = splits.preprocessing
    assert pre.train_crop == "random-resized-crop" and pre.crop_scale == CENTRED_CROP_SCALE and pre.flip is False
    views = splits.describe()["views"]
    assert views["flip"] is False and views["crop_scale"] == list(CENTRED_CROP_SCALE) and "no flips" in views["reason"]


def test_the_users_flags_win(digits):
    pre = load_data(digits, workers=0, flip=True).preprocessing
    assert pre.flip is True and pre.crop_scale == CENTRED_CROP_SCALE and "as asked" in pre.view_reason
    pre = load_data(digits, workers=0, crop_scale="0.08,1").preprocessing
    assert pre.crop_scale == (0.08, 1.0) and pre.flip is False
    pre = load_data(digits, workers=0, photo_augment=False).preprocessing
    assert pre.train_crop == "none" and pre.flip is False


def test_photos_keep_the_imagenet_views(tmp_path):
    pre = load_data(_photo_folder(tmp_path / "photos"), workers=0).preprocessing
    assert pre.crop_scale == PHOTO_CROP_SCALE and pre.flip is True and "photo-like" in pre.view_reason


def test_the_choice_is_announced(digits):
    from edgekd import events

    seen = []
    with events.listening(seen.append):
        load_data(digits, workers=0)
    lines = [e for e in seen if e.kind == "info" and e.message.startswith("training views")]
    assert len(lines) == 1 and lines[0]["views"]["flip"] is False
