"""Runners: every local runtime loads its model file and reproduces the PyTorch logits; bad files fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.bench.runners import RUNTIMES, PyTorchRunner, available_runtimes, load_runner, runtime_for_file
from edgekd.errors import EdgeKDError
from edgekd.export import FORMATS, export_all


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 14 * 14, 10)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One exported file per runtime that can run here (FP32 where the format offers it)."""
    out = tmp_path_factory.mktemp("runners")
    x = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    wanted = [n for n in ("onnx", "openvino-fp16", "executorch", "litert") if FORMATS.get(n).available()[0]]
    arts = export_all(_model(), wanted, out, example=x[:1], calib=x[:8], parity_inputs=None, progress=False)
    return out, x, {a.runtime: a for a in arts}


def _reference(x):
    with torch.inference_mode():
        return _model()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "executorch", "litert"])
def test_runner_reproduces_pytorch(runtime, files):
    # Every one of these runtimes is installed by the test extra: one that does not load is a failure.
    ok, why = RUNTIMES.get(runtime).available()
    assert ok, why
    out, x, arts = files
    assert runtime in arts, f"no format for {runtime} was exported"
    art = arts[runtime]
    assert art.status == "ok", art.reason
    runner = load_runner(art, threads=1)
    assert runner.name == runtime
    for batch in (1, 7, 40):
        y = runner.run(x[:batch])
        assert y.shape == (batch, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, _reference(x[:batch]), atol=1e-2 if art.precision == "fp16" else 1e-4)
    assert runtime in runner.versions() or any(runtime in k for k in runner.versions())
    assert load_runner(art.path).name == runtime  # chosen by suffix too


def test_pytorch_runner_from_module():
    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    runner = PyTorchRunner.from_module(_model(), threads=1)
    np.testing.assert_allclose(runner.run(x), _reference(x), atol=1e-6)
    assert "torch" in runner.versions()


def test_pytorch_runner_loads_edgekd_checkpoint(tmp_path):
    from edgekd.models import ModelSpec, create, save_model

    spec = ModelSpec("cnn", num_classes=10, in_channels=1, width=0.25)
    model = create("cnn", num_classes=10, in_channels=1, width=0.25).eval()
    path = save_model(tmp_path / "m.safetensors", model, spec)
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_runner(path).run(x), ref, atol=1e-6)


def test_bad_input_is_one_line_error(files):
    out, x, arts = files
    runner = load_runner(arts["onnxruntime"])
    with pytest.raises(EdgeKDError, match="float32 NCHW"):
        runner.run(x[:2].astype(np.float64))
    with pytest.raises(EdgeKDError, match="float32 NCHW"):
        runner.run(x[0, 0])


def test_truncated_and_missing_files_are_one_line_errors(files, tmp_path):
    out, x, arts = files
    data = arts["onnxruntime"].path.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgeKDError, match="onnxruntime cannot load .*cut.onnx") as err:
        load_runner(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(EdgeKDError, match="does not exist"):
        load_runner(tmp_path / "missing.onnx")
    xml = arts["openvino"].path
    lone = tmp_path / "lone.xml"
    lone.write_bytes(xml.read_bytes())
    with pytest.raises(EdgeKDError, match=r"lone.bin is missing"):
        load_runner(lone)
    cut_bin = tmp_path / "cut.xml"
    cut_bin.write_bytes(xml.read_bytes())
    (tmp_path / "cut.bin").write_bytes(xml.with_suffix(".bin").read_bytes()[:100])
    with pytest.raises(EdgeKDError, match="openvino cannot load"):
        load_runner(cut_bin).run(x[:1])


def test_unknown_suffix_and_runtime():
    with pytest.raises(EdgeKDError, match=r"no runtime runs \.h5 files"):
        runtime_for_file("model.h5")
    with pytest.raises(EdgeKDError, match="did you mean 'openvino'"):
        RUNTIMES.get("openvno")
    assert runtime_for_file("a.ort") == "onnxruntime" and runtime_for_file("b.pte") == "executorch"
    assert runtime_for_file("c.engine") == "tensorrt" and runtime_for_file("d.xml") == "openvino"


def test_every_runtime_says_whether_it_is_available():
    status = available_runtimes()
    assert set(status) == {"pytorch", "onnxruntime", "openvino", "executorch", "tensorrt", "litert"}
    for name, (ok, why) in status.items():
        assert isinstance(ok, bool) and why
    ok, why = status["tensorrt"]
    if not ok:
        assert "tensorrt" in why.lower() or "gpu" in why.lower()
