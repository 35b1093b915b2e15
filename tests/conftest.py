"""Shared fixtures: the real MNIST files beside the repo, tiny datasets made from them, a private cache."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekd.offline import quiet_openvino_telemetry

# Tests that import OpenVINO themselves would otherwise fork their worker for its telemetry (edgekd.offline).
quiet_openvino_telemetry()

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
PACKAGED_MNIST = REPO / "edgekd" / "data" / "mnist"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never read or fill the user's real cache of teachers and calibrations."""
    cache = tmp_path_factory.mktemp("edgekd-cache")
    old = {k: os.environ.get(k) for k in ("EDGEKD_CACHE_DIR", "EDGEKD_CONFIG_DIR")}
    os.environ["EDGEKD_CACHE_DIR"] = str(cache / "cache")
    os.environ["EDGEKD_CONFIG_DIR"] = str(cache / "config")
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST IDX folder: ../shared/data/mnist when present, else the copy shipped in the package."""
    return SHARED_MNIST if SHARED_MNIST.is_dir() else PACKAGED_MNIST


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


@pytest.fixture(scope="session")
def mnist_arrays(mnist_dir):
    """(x_train, y_train, x_test, y_test) as uint8 (N, 28, 28) and int64 labels."""
    return (read_idx(mnist_dir / "train-images-idx3-ubyte.gz"), read_idx(mnist_dir / "train-labels-idx1-ubyte.gz"),
            read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz"), read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory, mnist_arrays) -> Path:
    """A small real dataset (1200 train, 300 test MNIST digits) as an .npz users would bring."""
    x_train, y_train, x_test, y_test = mnist_arrays
    path = tmp_path_factory.mktemp("data") / "tiny-mnist.npz"
    np.savez(path, x_train=x_train[:1200], y_train=y_train[:1200], x_test=x_test[:300], y_test=y_test[:300])
    return path


def packaged_subset(n_train: int, n_test: int):
    """The first ``n_train`` / ``n_test`` digits of the packaged MNIST as DataSplits (tiny, real data)."""
    from edgekd.data import RawData, load_data, make_splits

    full = load_data()
    raw = RawData(full.train.x[:n_train], full.train.y[:n_train], full.test.x[:n_test], full.test.y[:n_test])
    return make_splits(raw, name="tiny", source="test", calib_size=32)


def seeded_cnn(seed: int = 0, width: float = 0.5):
    """An edgekd cnn for 1x28x28 digits, initialised from ``seed``."""
    import torch

    from edgekd.models import create

    torch.manual_seed(seed)
    return create("cnn", num_classes=10, in_channels=1, width=width)


def slow_conv_onnx(path: Path) -> Path:
    """A conv of a few ms per call on any CPU: a long measurement is still running seconds later."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "slow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 222, 222])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
