"""Model-file facts in one place: the gate, bench and the latency model read the same shape, precision, size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.modelfile import (
    image_shape, input_shape, param_count, parse_shape, precision, resolve_shape, shipped_files, size_bytes,
)

PARAMS = 4 * 1 * 3 * 3 + 4 + 10 * 4 * 8 * 8 + 10


def _conv_model(path: Path, *, batch="N", external=False) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((10, 256)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import openvino as ov

    out = tmp_path_factory.mktemp("files")
    src = _conv_model(out / "m.onnx")
    ir16 = out / "m16.xml"
    ov.save_model(ov.convert_model(str(src)), str(ir16), compress_to_fp16=True)
    return {"onnx": src, "external": _conv_model(out / "ext" / "m.onnx", external=True), "ir16": ir16}


def test_onnx_and_openvino_facts_agree(files):
    for key in ("onnx", "external", "ir16"):
        path = files[key]
        assert param_count(path) == PARAMS, key
        assert input_shape(path) == (1, 1, 8, 8) and image_shape(path) == (1, 8, 8)
    assert precision(files["onnx"]) == "fp32" and precision(files["ir16"]) == "fp16"
    assert [p.name for p in shipped_files(files["external"])] == ["m.onnx", "m.onnx.data"]
    assert [p.name for p in shipped_files(files["ir16"])] == ["m16.xml", "m16.bin"]
    assert size_bytes(files["ir16"]) == sum(p.stat().st_size for p in shipped_files(files["ir16"]))


def test_gate_and_bench_read_a_file_the_same_way(files, tmp_path):
    """Size, precision and host latency settings: the gate's row and the bench row of one IR agree."""
    from edgekd.bench.host import BenchOptions, bench_files
    from edgekd.gate import Budgets, gate

    report = bench_files([files["ir16"]], tmp_path / "bench", BenchOptions(seconds=0.05, warmup=1))
    (row,) = report["artifacts"]
    assert row["precision"] == "fp16" and row["size_bytes"] == size_bytes(files["ir16"])
    result = gate([files["ir16"]], Budgets(max_size_mb=1.0, max_latency_ms=1000.0), time_budget_s=0.05)
    size, latency = result.results
    assert size.value == row["size_bytes"]
    assert latency.source.startswith("measured:host (openvino")  # the bench runner: f32 precision hint and all


@pytest.mark.parametrize("given, expected", [
    (None, (1, 1, 8, 8)), ((4, 1, 8, 8), (4, 1, 8, 8)), ((1, 8, 8), (1, 1, 8, 8)),
])
def test_shapes_the_model_takes(files, given, expected):
    assert input_shape(files["onnx"], given) == expected


@pytest.mark.parametrize("given, message", [
    ((1, 3, 8, 8), r"takes input \?x1x8x8, not 1x3x8x8"),
    ((1, 1, 7, 7), "dimension 2 is fixed at 8"),
    ((1, 8), "has 2 dimensions"),
    ((1, 1, 3_000_000_000, 8), "dimension 2 is fixed at 8"),
])
def test_shapes_the_model_cannot_take(files, given, message):
    with pytest.raises(EdgeKDError, match=message):
        input_shape(files["onnx"], given)


def test_dynamic_dimensions_need_a_shape_of_sane_size():
    assert resolve_shape([None, 3, None, None], (2, 3, 5, 7)) == (2, 3, 5, 7)
    with pytest.raises(EdgeKDError, match="dimension of 3000000000, over 2147483647"):
        resolve_shape([None, 1, None, None], (1, 1, 3_000_000_000, 3_000_000_000))
    with pytest.raises(EdgeKDError, match="elements, over"):
        resolve_shape([None, 1, None, None], (1, 1, 100_000, 100_000))
    with pytest.raises(EdgeKDError, match="dimension 2 of the model is dynamic"):
        resolve_shape([None, 3, None, None])


@pytest.mark.parametrize("text", ["", "1,a", "0x1x2", "1x-2", "x", "1" * 20, "65536x65536x65536"])
def test_parse_shape_refuses(text):
    with pytest.raises(EdgeKDError):
        parse_shape(text)


def test_parse_shape_reads_both_spellings():
    assert parse_shape("1,3,224,224") == parse_shape("1x3x224x224") == parse_shape(" 1 X 3 x 224 x 224 ") == (1, 3, 224, 224)
