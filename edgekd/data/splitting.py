"""File datasets into train/val/calib/test (stratified, seeded, on the lists) and their preprocessing (size, channels, mean/std)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.files import FileSet, RawFiles, bad_files_line, stratified_pick, stratified_take
from edgekd.data.preprocess import Preprocess
from edgekd.data.splits import DataSplits
from edgekd.errors import EdgeKDError

HEADER_SAMPLE = 256     # files whose headers decide the default size and channel count
STATS_SAMPLE = 512      # training images whose pixels give mean/std when nobody gave them
MAX_DEFAULT_SIZE = 224  # a folder of phone photos trains at 224 unless --image-size says otherwise
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def make_file_splits(raw: RawFiles, *, name: str, source: str, split_options: dict, where: str, request,
                     preprocess: Preprocess | None, strict: bool, workers: int, cache_dir: Path | None,
                     progress: bool):
    from edgekd.data.loader import BadFiles

    notes = list(raw.notes)
    if raw.unreadable:
        if strict:
            path, why = raw.unreadable[0]
            raise EdgeKDError(f"{where}: {len(raw.unreadable)} file(s) cannot be read, first {path} ({why})",
                              "fix their permissions or remove them, or drop --strict to leave them out")
        notes.append(bad_files_line("listing", raw.unreadable))
    seed = split_options["seed"]
    train, val, test, _ = carve(raw, seed=seed, val_fraction=split_options["val_fraction"],
                                test_fraction=split_options["test_fraction"], where=where)
    rng = np.random.default_rng([seed, 1])
    calib = train.subset(stratified_take(train.y, split_options["calib_size"], rng), "calib")
    if len(np.unique(train.y)) < 2:
        raise EdgeKDError(f"{where}: the training files hold a single class", "provide images of at least two classes")
    bad = BadFiles(strict)
    pre = preprocess or file_preprocess(train, request, seed=seed, workers=workers, progress=progress)
    return DataSplits(train=train, val=val, calib=calib, test=test, num_classes=len(raw.classes),
                      input_shape=(pre.channels, pre.image_size, pre.image_size), name=name, source=source,
                      preprocessing=pre, classes=list(raw.classes), kind="files", workers=workers, notes=notes,
                      bad=bad, cache_dir=cache_dir, progress=progress)


def carve(raw: RawFiles, *, seed: int, val_fraction: float, test_fraction: float, where: str):
    """(train, val, test, carved names): given splits kept; missing ones carved from train by class.

    With both val/ and test/ they are used as given; with one held-out split it is the test split
    (final figures come from images nothing was selected on) and val is carved from train; with
    train alone, test then val are carved from it.
    """
    rng = np.random.default_rng(seed)
    train, carved = raw.train, []
    if raw.val is not None and raw.test is not None:
        return train, _named(raw.val, "val"), _named(raw.test, "test"), carved
    test = raw.test or raw.val
    if test is None:
        pick = stratified_pick(train.y, test_fraction, rng)
        test, train = train.subset(pick, "test"), train.subset(np.setdiff1d(np.arange(len(train)), pick), "train")
        carved.append("test")
    pick = stratified_pick(train.y, val_fraction, rng)
    if len(train) - len(pick) < 1:
        raise EdgeKDError(f"{where}: only {len(raw.train)} training images, too few to carve validation and test splits",
                          "provide more training images, or val/ and test/ folders")
    val, train = train.subset(pick, "val"), train.subset(np.setdiff1d(np.arange(len(train)), pick), "train")
    carved.append("val")
    return train, val, _named(test, "test"), carved


def _named(files: FileSet, name: str) -> FileSet:
    return FileSet(files.root, files.paths, files.y, files.sizes, files.mtimes, name)


def file_preprocess(train: FileSet, request, *, seed: int, workers: int, progress: bool = False) -> Preprocess:
    """The preprocessing of a file dataset: what was asked, else read from the files.

    Size: the median shorter side of a sample of the training images, at most 224. Channels: grey
    when every sampled image is grey, else RGB (palette, RGBA and CMYK become RGB). Mean/std: the
    teacher's or the user's, else measured on a seeded sample of training images in their
    evaluation view.
    """
    rng = np.random.default_rng([seed, 2])
    sample = rng.permutation(len(train))[:HEADER_SAMPLE]
    modes, sides = _headers(train, sample)
    if len(sample) and not sides:  # with --mean/--std given nothing else would look at a pixel before training
        raise EdgeKDError(f"none of {len(sample)} sampled training images is an image Pillow can open "
                          f"(first {train.path(int(sample[0]))})", "check that the folder holds JPEG/PNG/WebP/BMP images")
    # The normalisation a teacher (or the user) gives says how many channels the models take.
    channels = request.channels or (len(request.mean) if request.mean is not None else
                                    1 if modes and modes <= _GREY_MODES else 3)
    size = request.image_size or (int(min(MAX_DEFAULT_SIZE, max(8, np.median(sides)))) if sides else MAX_DEFAULT_SIZE)
    augment = request.photo_augment is not False
    pre = Preprocess(image_size=size, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels,
                     teacher_image_size=request.teacher_image_size, crop_pct=request.crop_pct or 1.0,
                     interpolation=request.interpolation or "bilinear",
                     train_crop="random-resized-crop" if augment else "none",
                     crop_scale=request.crop_scale or (0.08, 1.0),
                     flip=augment if request.flip is None else request.flip, mean_source="pending")
    if augment:
        pre = _chosen_views(train, pre, request, np.median(sides) if sides else size, seed, workers)
    if request.mean is not None:
        from dataclasses import replace

        return replace(pre, mean=tuple(request.mean), std=tuple(request.std), mean_source=request.mean_source)
    return _measured_stats(train, pre, rng.permutation(len(train))[:STATS_SAMPLE], workers, progress)


def _chosen_views(train: FileSet, pre: Preprocess, request, side: float, seed: int, workers: int) -> Preprocess:
    """``pre`` with the crops and flips the data call for (:mod:`edgekd.data.views`); the user's flags win."""
    from dataclasses import replace

    from edgekd import events
    from edgekd.data.views import sample_views

    if request.crop_scale is not None and request.flip is not None:
        return pre
    views = sample_views(train, pre, side=side, seed=seed, workers=workers)
    pre = replace(pre, crop_scale=request.crop_scale or views.crop_scale,
                  flip=views.flip if request.flip is None else request.flip,
                  view_reason=views.reason + ("; --crop-scale as asked" if request.crop_scale else "")
                  + ("; --flip/--no-flip as asked" if request.flip is not None else ""))
    events.info(f"training views: crops {pre.crop_scale[0]:g}-{pre.crop_scale[1]:g} of the area, "
                f"{'with' if pre.flip else 'no'} flips ({pre.view_reason})", views=pre.views(), facts=views.facts)
    return pre


def _headers(train: FileSet, sample) -> tuple[set[str], list[int]]:
    """Modes and shorter sides from the headers of ``sample`` (Pillow reads no pixels to answer)."""
    from PIL import Image

    modes, sides = set(), []
    for i in sample:
        try:
            with Image.open(train.path(int(i))) as im:
                modes.add(im.mode)
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - a bad file is counted when it is read for training
            continue
    return modes, sides


def _measured_stats(train: FileSet, pre: Preprocess, sample, workers: int, progress: bool) -> Preprocess:
    from dataclasses import replace

    from edgekd.data.loader import EvalDataset, make_loader

    subset = train.subset(np.sort(sample), "train")
    order = [list(range(i, min(i + 64, len(subset)))) for i in range(0, len(subset), 64)]
    sums, count = np.zeros((2, pre.channels), np.float64), 0
    for batch in make_loader(EvalDataset(subset, pre, pre.image_size), order, workers if len(order) > 1 else 0):
        if batch["x"] is None:
            continue
        px = batch["x"].numpy().transpose(1, 0, 2, 3).reshape(pre.channels, -1).astype(np.float64) / 255.0
        sums += (px.sum(axis=1), (px * px).sum(axis=1))
        count += px.shape[1]
    if not count:
        raise EdgeKDError(f"none of {len(subset)} sampled training images could be decoded (first {train.path(int(sample[0]))})",
                          "check that the folder holds JPEG/PNG/WebP/BMP images")
    m = sums[0] / count
    s = np.sqrt(np.maximum(sums[1] / count - m * m, 0.0))
    return replace(pre, mean=tuple(float(v) for v in m), std=tuple(float(max(v, 1e-3)) for v in s),
                   mean_source=f"train-sample ({len(subset)} images)")
