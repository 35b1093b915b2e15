"""edgekd.data: every --data layout, the split rules, and a one-line error for each bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import DATA_FORMATS, load_data, normalize
from edgekd.errors import EdgeKDError

# The real files beside the repository (CI has them), else the identical copy shipped in the package.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
if not SHARED_MNIST.is_dir():
    SHARED_MNIST = Path(__file__).resolve().parents[1] / "edgekd" / "data" / "mnist"


@pytest.fixture(scope="module")
def packaged():
    return load_data()


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def _digits(packaged, n=60):
    return packaged.train.x[:n], packaged.train.y[:n]


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# ---- formats --------------------------------------------------------------------------------


def test_packaged_mnist_splits(packaged):
    s = packaged
    assert (len(s.train), len(s.val), len(s.calib), len(s.test)) == (7200, 800, 256, 2000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.train.x.dtype == np.uint8 and s.train.y.dtype == np.int64
    assert s.source == "edgekd:mnist"
    assert 0.1 < s.mean[0] < 0.16 and 0.28 < s.std[0] < 0.34
    d = s.describe()
    assert set(d["splits"]) == {"train", "val", "calib", "test"}
    assert d["splits"]["test"]["size"] == 2000 and len(d["splits"]["test"]["sha256"]) == 64


def test_splits_disjoint_and_calib_inside_train(packaged):
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    train, val, calib = rows(packaged.train.x), rows(packaged.val.x), rows(packaged.calib.x)
    assert not train & val
    assert calib <= train and not calib & val


def test_splits_deterministic_by_seed(packaged):
    again = load_data(seed=0)
    other = load_data(seed=1)
    assert again.fingerprint() == packaged.fingerprint()
    assert other.val.sha256() != packaged.val.sha256()
    assert other.test.sha256() == packaged.test.sha256()  # the test files are never reshuffled


def test_idx_folder_gz_and_raw(tmp_path, packaged):
    shared = load_data(SHARED_MNIST)
    assert shared.fingerprint() == packaged.fingerprint()
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in SHARED_MNIST.iterdir():
        (raw / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    assert load_data(raw).fingerprint() == packaged.fingerprint()


def test_imagefolder_grey_and_rgb(tmp_path, packaged):
    from PIL import Image

    # Folder names whose sorted order is not the digits' order: a label taken from the digit, or from the
    # order folders were found in, would name the wrong class.
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    x, y = _digits(packaged, 40)
    for mode in ("L", "RGB"):
        root = tmp_path / mode
        for split, sl in (("train", slice(0, 30)), ("val", slice(30, 40))):
            for i, (img, label) in enumerate(zip(x[sl], y[sl])):
                d = root / split / names[label]
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img[0]).convert(mode).save(d / f"{i}.png")
        s = load_data(root, calib_size=8)
        assert s.input_shape == ((1, 28, 28) if mode == "L" else (3, 28, 28))
        assert len(s.test) == 10 and len(s.train) + len(s.val) == 30
        assert s.classes == sorted(names[label] for label in set(y[:30])) and s.num_classes == len(s.classes)
        assert s.preprocessing.train_crop == "random-resized-crop"
        # Every test image, found by its pixels (they survive the PNG round trip, in every channel), is
        # labelled with the index of its own folder's name among the sorted names.
        test = s.eval_images("test").uint8(0, len(s.test))
        assert test.shape == (10, *s.input_shape)
        for img, label in zip(test, s.eval_images("test").y):
            (j,) = [j for j in range(30, 40) if np.array_equal(img[0], x[j][0])]
            assert s.classes[label] == names[y[j]]
            assert all(np.array_equal(channel, img[0]) for channel in img)


def test_imagefolder_train_val_test(tmp_path, packaged):
    from PIL import Image

    x, y = _digits(packaged, 30)
    for split, sl in (("train", slice(0, 16)), ("val", slice(16, 22)), ("test", slice(22, 30))):
        for i, (img, label) in enumerate(zip(x[sl], y[sl])):
            d = tmp_path / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(d / f"{i}.png")
    # train/ may lack a class that val/ has only if train/ has the folder; give train/ all classes
    for label in set(y[16:30]) - set(y[:16]):
        (tmp_path / "train" / str(label)).mkdir(exist_ok=True)
        extra = x[0][0].copy()
        extra[0, 0] = 1 + int(label)  # not a copy of x[0] under another label (refused as one image, two labels)
        Image.fromarray(extra).save(tmp_path / "train" / str(label) / "extra.png")
    s = load_data(tmp_path, calib_size=4)
    assert len(s.val) == 6 and len(s.test) == 8


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float01", "onehot"])
def test_npz_layouts(tmp_path, packaged, layout):
    x, y = _digits(packaged, 50)
    xs = {"NHW": x[:, 0], "NHWC": x.transpose(0, 2, 3, 1), "NCHW": x, "float01": x.astype(np.float32) / 255,
          "onehot": x}[layout]
    ys = np.eye(10, dtype=np.int64)[y] if layout == "onehot" else y
    path = _save_npz(tmp_path / "d.npz", x_train=xs[:40], y_train=ys[:40], x_test=xs[40:], y_test=ys[40:])
    s = load_data(path, calib_size=8)
    assert s.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(s.test.x, x[40:])
    np.testing.assert_array_equal(s.test.y, y[40:])


def test_npz_rgb_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    s = load_data(_save_npz(tmp_path / "rgb.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:]), calib_size=4)
    assert s.input_shape == (3, 16, 16) and len(s.mean) == 3
    np.testing.assert_array_equal(s.test.x, x[20:].transpose(0, 3, 1, 2))


def test_normalize_matches_formula(packaged):
    x = packaged.test.x[:4]
    out = normalize(x, packaged.mean, packaged.std)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, (x / 255.0 - packaged.mean[0]) / packaged.std[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(packaged.preprocess(x), out)


def test_registry_lists_formats():
    assert {"idx", "imagefolder", "npz"} <= set(DATA_FORMATS.names())


# ---- bad input: one line each -----------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(EdgeKDError, match="does not exist") as err:
        load_data(tmp_path / "nope")
    _one_line(err)


def test_empty_folder_and_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeKDError, match="empty folder") as err:
        load_data(tmp_path / "empty")
    _one_line(err)
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(EdgeKDError, match="empty file"):
        load_data(tmp_path / "e.npz")


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EdgeKDError, match="unknown data layout") as err:
        load_data(tmp_path)
    assert "idx" in _one_line(err) and "npz" in str(err.value)


def test_mixed_image_sizes_are_resized(tmp_path):
    from PIL import Image

    for k, (split, c) in enumerate((s, c) for s in ("train", "val") for c in ("a", "b")):
        (tmp_path / split / c).mkdir(parents=True)
        Image.new("L", (16, 16), k).save(tmp_path / split / c / "0.png")  # distinct: one image is in one place
    Image.new("L", (40, 16), 255).save(tmp_path / "train" / "b" / "1.png")
    s = load_data(tmp_path, workers=0, calib_size=2)
    assert s.input_shape == (1, 16, 16)
    views = s.eval_images("train").uint8(0, len(s.train))
    assert views.shape == (len(s.train), 1, 16, 16) and views.max() == 255  # the 40x16 image, centre-cropped


def test_unreadable_image_skipped_or_refused(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                colour = len(list(tmp_path.rglob("*.png")))  # distinct: one image is in one place
                Image.new("L", (16, 16), colour).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not a png")
    s = load_data(tmp_path, workers=0, calib_size=2)
    s.eval_images(s.train)
    bad = s.describe()["bad_files"]["train"]
    assert bad["count"] == 1 and bad["first"][0]["path"].endswith("bad.png")
    strict = load_data(tmp_path, workers=0, calib_size=2, strict=True)
    with pytest.raises(EdgeKDError, match="bad.png cannot be read") as err:
        strict.eval_images(strict.train)
    _one_line(err)


@pytest.mark.parametrize("case, pattern", [
    ("label_out_of_range", "outside the 10 classes"),
    ("negative_label", "negative"),
    ("length_mismatch", "41 images but 40 labels"),
    ("missing_key", "lacks array"),
    ("bad_pixels", "pixel values span"),
    ("bad_shape", "not a batch of images"),
])
def test_npz_bad_arrays(tmp_path, packaged, case, pattern):
    x, y = _digits(packaged, 50)
    arrays = dict(x_train=x[:40], y_train=y[:40].copy(), x_test=x[40:], y_test=y[40:].copy())
    arrays["y_train"][0] = 9  # make sure train has 10 classes
    if case == "label_out_of_range":
        arrays["y_test"][0] = 12
    elif case == "negative_label":
        arrays["y_train"][1] = -1
    elif case == "length_mismatch":
        arrays["x_train"] = x[:41]
    elif case == "missing_key":
        del arrays["y_test"]
    elif case == "bad_pixels":
        arrays["x_train"] = x[:40].astype(np.float32) * 3
    elif case == "bad_shape":
        arrays["x_train"] = x[:40].reshape(40, 1, 28, 28, 1)
    with pytest.raises(EdgeKDError, match=pattern) as err:
        load_data(_save_npz(tmp_path / "d.npz", **arrays))
    _one_line(err)


def test_npz_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit(str(marker))
    np.savez(tmp_path / "evil.npz", x_train=payload, y_train=np.zeros(1), x_test=payload, y_test=np.zeros(1))
    with pytest.raises(EdgeKDError, match="refuses") as err:
        load_data(tmp_path / "evil.npz")
    _one_line(err)
    assert not marker.exists()


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_not_an_npz(tmp_path):
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(EdgeKDError, match="not a readable .npz") as err:
        load_data(tmp_path / "fake.npz")
    _one_line(err)


def _copy_mnist(tmp_path) -> Path:
    root = tmp_path / "mnist"
    shutil.copytree(SHARED_MNIST, root)
    for f in root.iterdir():
        f.chmod(0o644)
    return root


def test_corrupt_gz(tmp_path):
    root = _copy_mnist(tmp_path)
    f = root / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:5000])  # truncated download
    with pytest.raises(EdgeKDError, match="not a readable gzip|truncated") as err:
        load_data(root)
    _one_line(err)


def test_bad_idx_magic(tmp_path):
    root = _copy_mnist(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(100)))
    with pytest.raises(EdgeKDError, match="bad magic") as err:
        load_data(root)
    _one_line(err)


def test_idx_truncated_payload(tmp_path):
    root = _copy_mnist(tmp_path)
    f = root / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-10]))
    with pytest.raises(EdgeKDError, match="truncated or corrupt"):
        load_data(root)


def test_idx_missing_file(tmp_path):
    root = _copy_mnist(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(EdgeKDError, match="lacks test labels"):
        load_data(root)


@pytest.mark.parametrize("kw", [{"val_fraction": 0.0}, {"val_fraction": 1.5}, {"calib_size": 0}])
def test_bad_split_options(kw):
    with pytest.raises(EdgeKDError):
        load_data(**kw)


# ---- fuzzing: no input gives a traceback ---------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_dtypes = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_])
_shapes = st.lists(st.integers(0, 12), min_size=1, max_size=5).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x_train=hnp.arrays(_dtypes, _shapes), y_train=hnp.arrays(_dtypes, _shapes),
       x_test=hnp.arrays(_dtypes, _shapes), y_test=hnp.arrays(_dtypes, _shapes))
def test_fuzz_npz_arrays(tmp_path_factory, x_train, y_train, x_test, y_test):
    path = tmp_path_factory.mktemp("fuzz") / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    try:
        s = load_data(path, calib_size=4)
    except EdgeKDError as err:
        assert "\n" not in str(err)
    else:
        assert s.train.x.dtype == np.uint8 and s.train.x.ndim == 4 and s.num_classes >= 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300), name=st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz",
                                                         "t10k-images-idx3-ubyte", "data.npz"]))
def test_fuzz_random_bytes(tmp_path_factory, blob, name):
    root = tmp_path_factory.mktemp("bytes")
    (root / name).write_bytes(blob)
    target = root / name if name.endswith(".npz") else root
    with pytest.raises(EdgeKDError) as err:
        load_data(target)
    assert "\n" not in str(err.value)
