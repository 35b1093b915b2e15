"""Property-based tests: no target YAML, dataset file or CLI option value makes edgekd raise anything but EdgeKDError."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Text as a shell can pass it: no NUL (argv and paths cannot hold one), no lone surrogates.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | text
yaml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=12)


def _shipped_profile() -> dict:
    return yaml.safe_load((REPO / "targets" / "jetson-nano.yaml").read_text())


def _load_target_text(content: str):
    from edgekd.hardware import load_target

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "device.yaml"
        path.write_text(content, encoding="utf-8")
        try:
            return load_target(str(path))
        except EdgeKDError as err:
            assert "\n" not in str(err)
            return None


# ---------------------------------------------------------------------------------------------
# Target profiles


@FUZZ
@given(st.text(max_size=300) | st.sampled_from(["", "---", "[", "{a: 1", "name: !!python/object:os.system ls",
                                                 "&a [*a]", "? [a, b]\n: 1", "budget_ms: .nan", "\t- x"]))
def test_any_yaml_text_is_a_target_or_a_one_line_error(content):
    _load_target_text(content.replace("\x00", ""))


@FUZZ
@given(drop=st.sets(st.sampled_from(sorted(_shipped_profile())), max_size=3),
       change=st.dictionaries(st.sampled_from(sorted(_shipped_profile()) + ["extra_key", "peak_gflops"]), yaml_values, max_size=3))
def test_mutated_profiles_are_targets_or_one_line_errors(drop, change):
    """Start from a valid profile and break it: missing keys, wrong types, odd numbers, unknown keys."""
    data = {k: v for k, v in _shipped_profile().items() if k not in drop}
    data.update(change)
    target = _load_target_text(yaml.safe_dump(data, allow_unicode=True))
    if target is not None:
        assert target.budget_ms > 0 and target.runtime and target.precision in target.precisions


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_as_a_target_file_are_a_one_line_error(raw):
    from edgekd.hardware import load_target

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "device.yaml"
        path.write_bytes(raw)
        try:
            load_target(str(path))
        except EdgeKDError as err:
            assert "\n" not in str(err)


# ---------------------------------------------------------------------------------------------
# Dataset loaders


dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.int64, np.uint16, np.float16, np.float32, np.float64,
                          np.bool_, np.complex64, "U3", "S2"])
small_arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=5, max_side=12)))
KEYS = ["x_train", "y_train", "x_test", "y_test", "x_val", "y_val", "other"]


def _load_npz_dict(arrays: dict):
    from edgekd.data import load_data

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, **arrays)
        try:
            splits = load_data(path, calib_size=8)
        except EdgeKDError as err:
            assert "\n" not in str(err)
            return None
    return splits


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), small_arrays, max_size=7))
def test_any_npz_contents_load_or_give_a_one_line_error(arrays):
    splits = _load_npz_dict(arrays)
    if splits is not None:
        for s in (splits.train, splits.val, splits.calib, splits.test):
            assert s.x.dtype == np.uint8 and s.x.ndim == 4 and s.y.dtype == np.int64 and len(s.x) == len(s.y)


@st.composite
def almost_valid_npz(draw):
    """Image-like arrays with plausible shapes, then one or two things wrong: deeper code paths than random arrays."""
    n_train, n_test = draw(st.integers(0, 12)), draw(st.integers(0, 6))
    side = draw(st.sampled_from([4, 8, 12]))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    layout = draw(st.sampled_from(["nhw", "nchw", "nhwc"]))

    def images(n):
        shape = {"nhw": (n, side, side), "nchw": (n, channels or 1, side, side), "nhwc": (n, side, side, channels or 1)}[layout]
        dt = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int64]))
        return draw(hnp.arrays(dt, shape, elements=hnp.from_dtype(np.dtype(dt), allow_nan=True, allow_infinity=True)
                               if dt != np.uint8 else None))

    def labels(n):
        dt = draw(st.sampled_from([np.int64, np.int8, np.float32, np.uint8]))
        return draw(hnp.arrays(dt, (n,), elements=st.integers(0 if dt == np.uint8 else -2, 12)))

    out = {"x_train": images(n_train), "y_train": labels(n_train), "x_test": images(n_test), "y_test": labels(n_test)}
    if draw(st.booleans()):
        out["y_test"] = labels(max(0, n_test + draw(st.integers(-1, 1))))
    return out


@FUZZ
@given(almost_valid_npz())
def test_almost_valid_npz_loads_or_gives_a_one_line_error(arrays):
    splits = _load_npz_dict(arrays)
    if splits is not None:
        assert 2 <= splits.num_classes and int(splits.test.y.max()) < splits.num_classes
        assert min(splits.input_shape[1:]) >= 8 and splits.input_shape[0] in (1, 3)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["data.npz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte"]))
def test_any_bytes_as_a_data_file_are_a_one_line_error(raw, name):
    from edgekd.data import load_data

    with tempfile.TemporaryDirectory() as d:
        if name.endswith(".npz"):
            path = Path(d) / name
        else:  # an IDX folder with one damaged file among good headers
            path = Path(d) / "idx"
            path.mkdir()
            for other in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
                if not name.startswith(other):
                    (path / other).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
            (path / name).write_bytes(raw)
        if name.endswith(".npz"):
            path.write_bytes(raw)
        try:
            load_data(path)
        except EdgeKDError as err:
            assert "\n" not in str(err)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["train", "val", "test"]), st.sampled_from(["a", "b", ".hidden"]),
                          st.sampled_from(["png", "PNG", "jpg", "txt", "bmp"]), st.integers(1, 12),
                          st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "garbage"])), max_size=8))
def test_any_image_folder_tree_loads_or_gives_a_one_line_error(files):
    from PIL import Image

    from edgekd.data import load_data

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "tree"
        for i, (split, cls, ext, side, mode) in enumerate(files):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i}.{ext}"
            if mode == "garbage":
                path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(side)))
            else:
                Image.new(mode, (side, side)).save(path, format="PNG")  # whatever the suffix says
        root.mkdir(exist_ok=True)
        try:
            load_data(root)
        except EdgeKDError as err:
            assert "\n" not in str(err)


# ---------------------------------------------------------------------------------------------
# CLI option values: whatever the user types, one line on stderr and a non-zero exit, never a traceback


number_words = (st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.integers(-10**20, 10**20).map(str)
                | st.sampled_from(["", "nan", "inf", "-inf", "1e400", "0x10", "1,2", "0.5,", ",", "1_000", "½", " 3 "]))
OPTION_VALUES = {
    "--temperature": number_words | text,
    "--alpha": number_words | text,
    "--budget-ms": number_words | text,
    "--epochs": number_words | text,
    "--batch-size": number_words,
    "--lr": number_words,
    "--widths": st.lists(number_words, max_size=4).map(",".join) | text,
    "--width": number_words,
    "--max-drop": number_words,
    "--seed": number_words,
    "--target": text | st.sampled_from(["jetson-nano", "host", "pixel-7", "jetson_nano", "JETSON-NANO", "../x.yaml", "/"]),
    "--formats": text | st.sampled_from(["onnx", "all", "onnx,,ort-int8", "tensorrt-fp16", "ONNX"]),
    "--device": text | st.sampled_from(["cuda", "cuda:7", "cpu", "mps", "cuda:x"]),
    "--loss": text | st.sampled_from(["kd", "kd+at:0.5", "kd+", "kd:2", "dkd", "+", "kd+kd"]),
}


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cli")


@FUZZ
@given(options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda opts: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in opts})))
def test_any_distill_option_values_give_one_line_and_no_traceback(options, capsys, nowhere):
    """--data points nowhere, so a run whose options are all valid also stops at once, with one line."""
    from edgekd.cli import main

    assume(all("--debug" not in v for v in options.values()))
    out = nowhere / "run"
    argv = ["distill", "--data", str(nowhere / "no-such-data.npz"), "--out", str(out), "--no-progress"]
    argv += [f"{k}={v}" for k, v in options.items()]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert stop.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("edgekd: error:"), err
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists()
