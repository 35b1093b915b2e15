"""Latency is timed the way each runtime's own benchmark tool times it, and every figure says how it was taken."""

from __future__ import annotations

import numpy as np
import pytest

import onnxruntime  # noqa: F401  (before OpenVINO: ORT's import after heavy OpenVINO use crashed once)
from edgekd.bench.host import BenchOptions, bench_files, measure_file
from edgekd.bench.measure import measure_runner
from edgekd.bench.runners import load_runner
from edgekd.runtimes import RUNTIMES, Runner, readers_of


def _tiny_onnx(path, batch="N"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4 * 6 * 6, 5)).astype(np.float32), "g"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


ONNX_READERS = [name for name in readers_of("m.onnx") if RUNTIMES.get(name).available()[0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("vendor") / "tiny.onnx")


X = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("runtime", ONNX_READERS)
def test_timed_call_runs_the_same_inference_as_run(tiny, runtime):
    runner = load_runner(tiny, threads=1, runtime=runtime)
    prepared = runner.timed_call(X)
    prepared.call()
    np.testing.assert_allclose(prepared.output(), runner.run(X), rtol=1e-5, atol=1e-5)
    assert prepared.method == type(runner).timing_method and prepared.method


def test_onnxruntime_is_timed_through_io_binding(tiny):
    """The timed call never goes through Python's input dict: the session's own run() is gone, and the
    call still runs, reading the input bound once and writing the output bound once."""
    runner = load_runner(tiny, threads=1, runtime="onnxruntime")
    expected = runner.run(X)
    prepared = runner.timed_call(X)
    runner.session.run = None  # the per-call Python path, unusable from here on
    prepared.call()
    np.testing.assert_allclose(prepared.output(), expected, rtol=1e-5, atol=1e-5)
    assert "IO binding" in prepared.method


@pytest.mark.skipif("openvino" not in ONNX_READERS, reason="openvino is not installed")
def test_openvino_is_timed_with_its_input_set_once(tiny):
    """benchmark_app's sync mode: an infer request whose input tensor is set before timing; each call
    passes nothing."""
    runner = load_runner(tiny, threads=1, runtime="openvino")
    expected = runner.run(X)
    prepared = runner.timed_call(X)
    runner.request = None  # the runner's own request (run's path) is not the one timed
    prepared.call()
    np.testing.assert_allclose(prepared.output(), expected, rtol=1e-5, atol=1e-5)
    assert "input tensor set once" in prepared.method


def test_a_runner_without_a_vendor_path_is_timed_through_run_and_says_so(tmp_path):
    from conftest import seeded_cnn

    from edgekd.models import ModelSpec, save_model

    path = tmp_path / "m.safetensors"
    save_model(path, seeded_cnn(), ModelSpec("cnn", 10, 1, width=0.5), {"accuracy": 0.0})
    runner = load_runner(path, threads=1)
    x = np.zeros((1, 1, 28, 28), np.float32)
    stats, method = measure_runner(runner, x, runs=12)
    assert stats.runs == 12 and method == Runner.timing_method
    prepared = runner.timed_call(x)
    prepared.call()
    np.testing.assert_allclose(prepared.output(), runner.run(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runtime", ONNX_READERS)
def test_bench_rows_label_the_method(tiny, tmp_path, runtime):
    rows, _ = measure_file(tiny, runtime, [1, 2], (3, 8, 8), BenchOptions(threads=1, seconds=0.05, warmup=2))
    assert [r["method"] for r in rows] == [RUNTIMES.get(runtime).runner.timing_method] * 2
    report = bench_files([tiny], tmp_path / "out", BenchOptions(runtimes=[runtime], threads=1, seconds=0.05, warmup=2))
    (row,) = report["artifacts"]
    assert row["status"] == "ok" and row["extra"]["latency_method"] == RUNTIMES.get(runtime).runner.timing_method
    assert row["latency_ms"]["p50"] > 0
