"""Image files as data: generated folders of mixed sizes and modes with bad files, CSV/JSON lists,
stratified splits of file lists, the training views, and the teacher-output cache."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.data import load_data
from edgekd.errors import EdgeKDError

CLASSES = ("ant", "bee", "cat")
MODES = ("RGB", "L", "RGBA", "P", "LA", "I;16")


def _image(rng, c: int, size, mode: str):
    """A picture whose colour says its class (so a tiny model can learn it), in any Pillow mode."""
    from PIL import Image

    w, h = size
    base = np.zeros((h, w, 3), np.uint8)
    base[..., c] = 180
    arr = np.clip(base + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if mode == "I;16":
        return Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257))
    return im.convert(mode)


def make_folder(root, per_class: int = 20, *, seed: int = 0, bad: bool = True, splits=("",)):
    """root/[split/]<class>/NN.(jpg|png|webp|bmp) of random sizes 12..90 px in every mode, plus a
    corrupt, a truncated and an empty file when ``bad``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(CLASSES):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                mode = MODES[i % len(MODES)]
                ext = ("png", "jpg", "webp", "bmp")[i % 4] if mode in ("RGB", "L") else "png"
                im = _image(rng, c, tuple(int(v) for v in rng.integers(12, 90, 2)), mode)
                im.save(folder / f"{i:02d}.{ext}")
    if bad:
        first = root / splits[0] / CLASSES[0] if splits[0] else root / CLASSES[0]
        (first / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
        good = (first / "01.jpg").read_bytes()
        (first / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (first / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("photos") / "photos")


def test_folder_of_mixed_sizes_and_modes(photos):
    s = load_data(photos, image_size=24, calib_size=12, workers=0)
    assert s.kind == "files" and s.input_shape == (3, 24, 24) and s.classes == list(CLASSES)
    # 63 files listed, the empty one left out at listing with one line; test then val carved per class
    assert len(s.train) + len(s.val) + len(s.test) == 62
    assert any("empty.png" in n and "empty file" in n for n in s.notes)
    for split in ("train", "val", "test"):
        counts = np.bincount(s.split(split).y, minlength=3)
        assert counts.max() - counts.min() <= 2, (split, counts)  # stratified
    pre = s.describe()["preprocess"]
    assert pre["image_size"] == 24 and pre["channels"] == 3 and pre["train_crop"] == "random-resized-crop"
    assert pre["mean_source"].startswith("train-sample") and len(pre["mean"]) == 3
    for split in ("train", "val", "calib", "test"):
        views = s.eval_images(split)
        x = views.uint8(0, len(views))
        assert x.shape == (len(views), 3, 24, 24) and x.dtype == np.uint8
    # the corrupt and truncated files are skipped, counted and named; the rest decode
    bad = s.describe()["bad_files"]
    names = {b["path"].split(os.sep)[-1] for split in bad.values() for b in split["first"]}
    assert names == {"corrupt.jpg", "truncated.jpg"} and sum(v["count"] for v in bad.values()) == 2
    assert sum(len(s.eval_images(n)) for n in ("train", "val", "test")) == 60


def test_default_size_and_grey(tmp_path):
    from PIL import Image

    for c in CLASSES:
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("L", (40 + i, 30), 10 * i + CLASSES.index(c)).save(tmp_path / c / f"{i}.png")
    s = load_data(tmp_path, workers=0, calib_size=4)
    assert s.input_shape == (1, 30, 30)  # median shorter side; every image grey -> one channel
    assert s.preprocessing.mean_source.startswith("train-sample")


def test_strict_refuses_a_bad_file(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6)
    with pytest.raises(EdgeKDError, match="empty.png"):  # unreadable at listing: refused before anything runs
        load_data(root, image_size=16, workers=0, strict=True, calib_size=4)
    (root / CLASSES[0] / "empty.png").unlink()
    s = load_data(root, image_size=16, workers=0, strict=True, calib_size=4)
    with pytest.raises(EdgeKDError, match=r"(corrupt|truncated)\.jpg cannot be read.*--strict") as err:
        for split in ("train", "val", "test"):
            s.eval_images(split)
    assert "\n" not in str(err.value)


def test_split_determinism_and_hashes(tmp_path):
    root = make_folder(tmp_path / "d", per_class=30, bad=False)
    a, b = load_data(root, image_size=16, workers=0), load_data(root, image_size=16, workers=0)
    other = load_data(root, image_size=16, workers=0, seed=1)
    assert a.describe()["splits"] == b.describe()["splits"]
    assert a.val.sha256() != other.val.sha256()
    names = {n: {a.split(n).paths[i] for i in range(len(a.split(n)))} for n in ("train", "val", "calib", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    assert names["calib"] <= names["train"]
    # the hash is of the list (path, label, size, mtime), so touching a file changes it; pixels are never hashed
    f = root / CLASSES[1] / "00.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = load_data(root, image_size=16, workers=0)
    assert again.fingerprint() != a.fingerprint()


def test_given_splits_are_kept(tmp_path):
    root = make_folder(tmp_path / "d", per_class=8, bad=False, splits=("train", "val", "test"))
    s = load_data(root, image_size=16, workers=0, calib_size=4)
    assert (len(s.train), len(s.val), len(s.test)) == (24, 24, 24)
    (root / "val" / "dog").mkdir()
    (root / "val" / "ant" / "00.png").rename(root / "val" / "dog" / "00.png")
    with pytest.raises(EdgeKDError, match="class folder 'dog' that train/ does not have"):
        load_data(root, workers=0)


def test_empty_class_folder_is_one_line(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6, bad=False)
    (root / "dog").mkdir()
    s = load_data(root, image_size=16, workers=0, calib_size=4)
    assert s.num_classes == 4 and any("dog" in n and "never sees" in n for n in s.notes)


def test_csv_and_json_lists(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=10, bad=False)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rows = [(str(p.relative_to(tmp_path)), p.parent.name, "test" if i % 5 == 0 else "train") for i, p in enumerate(files)]
    (tmp_path / "list.csv").write_text("path,label,split\n" + "\n".join(",".join(r) for r in rows) + "\nimgs/missing.png,ant,train\n")
    s = load_data(tmp_path / "list.csv", image_size=16, workers=0, calib_size=4)
    assert s.classes == list(CLASSES) and len(s.test) == 6 and len(s.train) + len(s.val) == 24
    assert any("missing.png" in n for n in s.notes)
    assert s.eval_images("test").uint8(0, 6).shape == (6, 3, 16, 16)
    doc = {"train": [{"path": r[0], "label": r[1]} for r in rows if r[2] == "train"],
           "test": [[r[0], r[1]] for r in rows if r[2] == "test"]}
    (tmp_path / "list.json").write_text(json.dumps(doc))
    j = load_data(tmp_path / "list.json", image_size=16, workers=0, calib_size=4)
    assert j.test.sha256() == s.test.sha256()
    (tmp_path / "bad.csv").write_text("imgs/ant/00.png,ant,validation\n")
    with pytest.raises(EdgeKDError, match="unknown split 'validation'"):
        load_data(tmp_path / "bad.csv")


def test_preprocess_from_user_and_round_trip(photos):
    s = load_data(photos, image_size=20, mean="0.485,0.456,0.406", std=[0.229, 0.224, 0.225], workers=0, calib_size=4)
    pre = s.describe()["preprocess"]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["mean_source"] == "user"
    # the recorded preprocessing rebuilds the same splits and the same normalised pixels
    from edgekd.data import load_data_like

    again = load_data_like(json.loads(json.dumps(s.describe())), workers=0)
    assert again.preprocessing == s.preprocessing and again.test.sha256() == s.test.sha256()
    np.testing.assert_array_equal(np.asarray(again.normalized("calib")), np.asarray(s.normalized("calib")))
    x = s.eval_images("calib").uint8(0, 2).astype(np.float32) / 255.0
    want = (x - np.array(pre["mean"], np.float32)[:, None, None]) / np.array(pre["std"], np.float32)[:, None, None]
    np.testing.assert_allclose(s.normalized("calib")[0:2], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(EdgeKDError, match="--mean and --std go together"):
        load_data(photos, mean="0.5,0.5,0.5", workers=0)
    with pytest.raises(EdgeKDError, match="3 value"):
        load_data(photos, mean="0.5", std="0.2", channels=3, workers=0)


def _epoch(splits, workers: int, epoch: int = 1, teacher: bool = True):
    from edgekd.data.batches import FileBatches

    src = FileBatches(splits, batch_size=8, seed=3, device=torch.device("cpu"), channels_last=False,
                      teacher_view=teacher, workers=workers)
    try:
        return [(b.idx.clone(), b.x.clone(), None if b.x_teacher is None else b.x_teacher.clone())
                for _, b in src.epoch(epoch) if b is not None]
    finally:
        src.close()


def test_training_views_do_not_depend_on_workers(photos):
    """Crops and flips derive from (seed, epoch, row): 0 and 2 worker processes give the same batches,
    and the teacher sees the student's crop at its own size."""
    s = load_data(photos, image_size=16, teacher_image_size=32, workers=0, calib_size=4)
    in_process, two_workers = _epoch(s, 0), _epoch(s, 2)
    assert len(in_process) == len(two_workers) == len(s.train) // 8
    for (i0, x0, t0), (i2, x2, t2) in zip(in_process, two_workers):
        assert torch.equal(i0, i2) and torch.equal(x0, x2) and torch.equal(t0, t2)
    idx, x, xt = in_process[0]
    assert x.shape[-1] == 16 and xt.shape[-1] == 32
    small = torch.nn.functional.interpolate(xt, size=16, mode="bilinear", antialias=True)
    assert (small - x).abs().mean() < 0.15 * x.abs().mean()  # the same crop, resized
    other_epoch = _epoch(s, 0, epoch=2, teacher=False)
    assert not torch.equal(other_epoch[0][1], x)
    # bad files in the training split are dropped from their batch and counted, never a crash
    assert "train" in s.bad.by_split or "val" in s.bad.by_split or "test" in s.bad.by_split


def test_array_data_keeps_its_fast_path(tiny_npz):
    s = load_data(tiny_npz, calib_size=8)
    assert s.kind == "array" and s.input_shape == (1, 28, 28)
    big = load_data(tiny_npz, calib_size=8, image_size=40, channels=3)
    assert big.input_shape == (3, 40, 40)
    x = big.eval_images("test").uint8(0, 4)
    assert x.shape == (4, 3, 40, 40) and (x[:, 0] == x[:, 1]).all()
    from edgekd.data.batches import ArrayBatches

    src = ArrayBatches(big.train, big.preprocessing, batch_size=16, seed=0, device=torch.device("cpu"),
                       channels_last=False, shift_px=2)
    _, batch = next(iter(src.epoch(0)))
    assert batch.x.shape == (16, 3, 40, 40)


def test_memory_mapped_npz_and_idx(tmp_path, monkeypatch):
    from edgekd.data import formats

    monkeypatch.setattr(formats, "MAP_FILES_ABOVE", 1000)
    import edgekd.data as data

    monkeypatch.setattr(data, "MAP_ABOVE_BYTES", 1000)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 16, 16, 3), dtype=np.uint8)
    y = np.arange(300) % 3
    np.savez(tmp_path / "big.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    s = load_data(tmp_path / "big.npz", calib_size=8)
    assert isinstance(s.train.base, np.memmap) and s.train.index is not None
    np.testing.assert_array_equal(s.test.x, x[200:].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(s.train.rows(np.array([2, 0])), x[:200][s.train.index[[2, 0]]].transpose(0, 3, 1, 2))


def test_teacher_output_cache_keys_and_values(tmp_path, photos):
    from edgekd.distill.outputs import TeacherOutputCache, cache_key
    from edgekd.models import ModelSpec

    s = load_data(photos, image_size=16, workers=0, calib_size=4)
    torch.manual_seed(0)
    teacher = ModelSpec("cnn", 3, 3, width=0.25).build()
    key = cache_key(s, teacher, seed=0, view="same")
    assert key == cache_key(s, teacher, seed=0, view="same")
    assert key != cache_key(s, teacher, seed=1, view="same")              # other random crops
    assert cache_key(s, teacher, seed=0, view="clean") == cache_key(s, teacher, seed=1, view="clean")
    assert key != cache_key(s.at_image_size(20), teacher, seed=0, view="same")  # other pixels
    other = ModelSpec("cnn", 3, 3, width=0.25).build()
    assert key != cache_key(s, other, seed=0, view="same")              # other weights
    cache = TeacherOutputCache.open(tmp_path, key, len(s.train), 3, views_vary=True, epochs=2)
    rows = np.array([5, 1, 7])
    assert cache.get(0, rows) is None and cache.misses == 3
    stored = cache.put(0, rows, torch.tensor([[1.0001, 2.0, 3.0]] * 3))
    assert stored.dtype == torch.float32 and stored[0, 0].item() == float(np.float16(1.0001))
    again = TeacherOutputCache.open(tmp_path, key, len(s.train), 3, views_vary=True, epochs=2)
    assert torch.equal(again.get(0, rows), stored) and again.get(1, rows) is None  # per epoch view
    assert list(again.missing(0, np.array([1, 2, 5]))) == [2]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A run on image files with loader workers, killed (SIGKILL, whole process group) after a
    mid-epoch checkpoint and resumed with another number of workers, ends with the same weights as
    an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from edgekd.models import ModelSpec, save_model

    root = make_folder(tmp_path / "d", per_class=24)
    spec = ModelSpec("cnn", 3, 3, width=0.25)
    torch.manual_seed(0)
    save_model(tmp_path / "teacher.safetensors", spec.build(), spec, {"accuracy": 0.0})
    base = [sys.executable, "-m", "edgekd.distill", "--data", str(root), "--teacher", str(tmp_path / "teacher.safetensors"),
            "--width", "0.25", "--epochs", "3", "--batch-size", "6", "--image-size", "24", "--device", "cpu",
            "--checkpoint-every-steps", "2"]
    env = dict(os.environ, EDGEKD_CACHE_DIR=str(tmp_path / "cache-a"))
    subprocess.run(base + ["--out", str(tmp_path / "a"), "--workers", "2"], env=env, check=True, capture_output=True)

    env["EDGEKD_CACHE_DIR"] = str(tmp_path / "cache-b")  # the killed run computes its teacher outputs itself
    proc = subprocess.Popen(base + ["--out", str(tmp_path / "b"), "--workers", "2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = tmp_path / "b" / "last.pt", time.time() + 600
    try:
        while True:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.time() < deadline
            if ckpt.exists():
                try:
                    state = torch.load(ckpt, map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - being replaced right now
                    state = {}
                if state.get("step", 0) > 0:  # a mid-epoch checkpoint: kill now, in the middle of an epoch
                    break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no handler runs, no checkpoint is written on the way out
        proc.wait()
    assert not (tmp_path / "b" / "final.safetensors").exists()
    subprocess.run(base + ["--out", str(tmp_path / "b"), "--workers", "1", "--resume"], env=env, check=True,
                   capture_output=True)
    a, b = load_file(tmp_path / "a" / "final.safetensors"), load_file(tmp_path / "b" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / r / "result.json").read_text()) for r in ("a", "b"))
    assert ra["accuracy"] == rb["accuracy"] and rb["resumed_from_epoch"] is not None


@pytest.mark.slow
def test_photo_folder_end_to_end_preprocessing_applied_everywhere(tmp_path):
    """`edgekd distill` on a folder of mixed JPEG/PNG files (bad ones included) through the real CLI;
    then `edgekd bench` (another runtime) and `edgekd export RUN` rebuild the splits from the report's
    preprocessing record and measure the same accuracies: calibration and evaluation see the same pixels."""
    import subprocess

    root = make_folder(tmp_path / "photos", per_class=20)
    # this checkout's edgekd, whatever `edgekd` on PATH is
    env = dict(os.environ, EDGEKD_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = tmp_path / "run"

    def edgekd(*args):
        done = subprocess.run([sys.executable, "-m", "edgekd", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    out = edgekd("distill", "--target", "host", "--data", str(root), "--epochs", "2", "--image-size", "24",
                 "--width", "0.5", "--formats", "onnx,ort-int8", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                 "--workers", "1", "--out", str(run), "--no-progress", "--bench-seconds", "0.05")
    assert "empty.png" in out and "2 image file(s) could not be decoded" in out
    report = json.loads((run / "report.json").read_text())
    data = report["data"]
    assert data["kind"] == "files" and data["input_shape"] == [3, 24, 24]
    assert data["preprocess"]["mean"] == [0.5] * 3 and data["preprocess"]["mean_source"] == "user"
    lists = json.loads((run / data["file_lists"]).read_text())
    assert {k: len(v) for k, v in lists.items()} == {k: v["size"] for k, v in data["splits"].items()}
    rows = {r["name"]: r for r in report["artifacts"] if r["role"] == "student"}
    assert rows["ort-int8"]["status"] == "ok" and rows["onnx"]["accuracy"] == rows["pytorch"]["accuracy"]

    edgekd("bench", str(run), "--runtimes", "onnxruntime,openvino", "--seconds", "0.05")
    after = {r["name"]: r for r in json.loads((run / "report.json").read_text())["artifacts"]}
    n_test = data["splits"]["test"]["size"]
    assert abs(after["onnx@openvino"]["accuracy"] - rows["onnx"]["accuracy"]) <= 1 / n_test + 1e-9

    edgekd("export", str(run), "--formats", "ort-int8", "--out", str(tmp_path / "ex"))
    ex = json.loads((tmp_path / "ex" / "report.json").read_text())
    assert ex["data"]["preprocess"] == data["preprocess"]
    again = {r["name"]: r for r in ex["artifacts"]}
    assert again["ort-int8"]["accuracy"] == rows["ort-int8"]["accuracy"]  # same calibration images, same pixels


def test_loader_workers_never_fork_the_training_process(photos):
    """Workers start from a forkserver (or spawn), never by forking a process that may hold JAX."""
    from edgekd.data.batches import FileBatches

    s = load_data(photos, image_size=16, workers=1, calib_size=4)
    src = FileBatches(s, batch_size=8, seed=0, device=torch.device("cpu"), channels_last=False)
    try:
        assert src.loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
        assert src.loader.num_workers == 1 and src.loader.persistent_workers
    finally:
        src.close()


def test_resume_refuses_other_data(tmp_path, tiny_npz):
    from edgekd.distill import TrainConfig, train
    from edgekd.models import ModelSpec

    spec = ModelSpec("cnn", 10, 1, width=0.25)
    cfg = TrainConfig(epochs=2, batch_size=128, loss="ce", checkpoint_every_steps=3)
    train(spec.build(), None, load_data(tiny_npz), cfg, ckpt_dir=tmp_path, progress=False)
    other = load_data(tiny_npz, seed=1)  # another validation split: the checkpoint is not for these data
    with pytest.raises(EdgeKDError, match="written for other data"):
        train(spec.build(), None, other, cfg, ckpt_dir=tmp_path, resume=True, progress=False)


def test_resume_config_keeps_the_pixel_options():
    """--resume reads config.json back: the pixel options survive the round trip through it."""
    from edgekd.cli.distill import command, resolve_config
    from edgekd.config import RunConfig

    words = ["--target", "host", "--out", "run", "--image-size", "128", "--teacher-image-size", "224",
             "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--workers", "2", "--strict", "--no-augment",
             "--crop-scale", "0.25,1", "--no-flip"]
    ctx = command.make_context("distill", words)
    cfg = resolve_config(ctx, ctx.params)
    back = RunConfig.from_dict(cfg.to_dict())
    d = back.data
    assert (d.image_size, d.teacher_image_size, d.workers) == (128, 224, 2)
    assert d.mean == (0.485, 0.456, 0.406) and d.crop_scale == (0.25, 1.0)
    assert d.strict and d.augment is False and d.flip is False and back == cfg


def test_channels_follow_the_normalisation(tiny_npz, photos):
    """A 3-channel normalisation (a torchvision teacher's, or --mean/--std) makes grey data RGB, and back."""
    grey_as_rgb = load_data(tiny_npz, calib_size=8, mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    x = grey_as_rgb.eval_images("test").uint8(0, 3)
    assert grey_as_rgb.input_shape == (3, 28, 28) and (x[:, 0] == x[:, 2]).all()
    rgb_as_grey = load_data(photos, image_size=16, workers=0, calib_size=4, mean="0.5", std="0.25")
    assert rgb_as_grey.input_shape == (1, 16, 16) and rgb_as_grey.eval_images("calib").uint8(0, 2).shape[1] == 1
