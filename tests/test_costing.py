"""Fast costing (edgekd.hardware.fastcost) against the ONNX path it stands in for, for every family."""

from __future__ import annotations

import pytest
import torch

from edgekd.hardware import load_target
from edgekd.hardware.fastcost import fast_cost, trace_graph
from edgekd.hardware.graph import cached_onnx, graph_cost
from edgekd.hardware.latency import predict_cost
from edgekd.hardware.select import evaluate_candidate
from edgekd.models import create, create_kwargs, families, family_traits

RUNTIMES = [("onnxruntime", "fp32"), ("tensorrt", "int8"), ("xnnpack", "fp32"), ("none", "fp16")]


def _config(i: int, arch: str):
    """Tiny candidates, half of them below 64 px (the stride-1 stem) and at the family's deepest depth."""
    traits = family_traits(arch)
    c = traits.default_input[0]
    if i % 2:
        return 0.25, max(traits.depths), [1, c, 24, 24]
    return 0.5, 1, [1, c, 64, 64]


@pytest.mark.parametrize("i,arch", list(enumerate(families())))
def test_fast_cost_equals_the_onnx_graphs_cost(i, arch):
    width, depth, shape = _config(i, arch)
    path = cached_onnx(arch, num_classes=7, input_shape=shape, width=width, depth=depth, **create_kwargs(arch, shape))
    for runtime, precision in RUNTIMES:
        fast, params = fast_cost(arch, num_classes=7, input_shape=shape, width=width, depth=depth,
                                 runtime=runtime, precision=precision)
        ref = graph_cost(path, runtime=runtime, precision=precision)
        assert fast.unknown_ops == ref.unknown_ops == []
        assert (fast.flops, fast.params, fast.weight_bytes, fast.peak_activation_bytes) == \
               (ref.flops, ref.params, ref.weight_bytes, ref.peak_activation_bytes), (arch, runtime)
        assert [(k.op_class, k.ops, k.flops, k.output_shape, k.geometry) for k in fast.kernels] == \
               [(k.op_class, k.ops, k.flops, k.output_shape, k.geometry) for k in ref.kernels], (arch, runtime)
    for target in ("jetson-orin-nano", "raspberry-pi-5"):
        t = load_target(target)
        fast_ms = predict_cost(fast_cost(arch, num_classes=7, input_shape=shape, width=width, depth=depth,
                                         runtime=t.runtime, precision=t.precision)[0], t).total_ms
        ref_ms = predict_cost(graph_cost(path, runtime=t.runtime, precision=t.precision), t).total_ms
        assert fast_ms == pytest.approx(ref_ms, rel=0.02), (arch, target)
    assert params == sum(p.numel() for p in create(arch, num_classes=7, in_channels=shape[1], width=width,
                                                   depth=depth, **create_kwargs(arch, shape)).parameters())


def test_fast_cost_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    from edgekd.hardware import fastcost

    kw = dict(num_classes=3, input_shape=[1, 1, 16, 16], width=0.25, depth=1, runtime="tensorrt", precision="int8")
    first, params = fast_cost("cnn", **kw)
    files = list((tmp_path / "costs").glob("cnn-*.json"))
    assert len(files) == 1
    fastcost._TRACED.clear()
    again, params_again = fast_cost("cnn", **kw)   # read back: the same kernels, nothing traced
    assert not fastcost._TRACED and params_again == params
    assert [vars(k) for k in again.kernels] == [vars(k) for k in first.kernels] and again.flops == first.flops
    files[0].write_text("{not json")   # a damaged entry is costed again, not an error
    assert fast_cost("cnn", **kw)[0].flops == first.flops
    # An entry cached under other costing rules (an edgekd whose graph costing has changed) is not read.
    monkeypatch.setattr(fastcost, "cost_rules_digest", lambda: "other rules")
    fast_cost("cnn", **kw)
    assert len(list((tmp_path / "costs").glob("cnn-*.json"))) == 2


def test_fast_cost_cache_keys_hold_across_processes(tmp_path, monkeypatch):
    """A runtime's fusion rules are in the key (ncnn's hold frozensets, whose order follows the hash seed)."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    code = ("from edgekd.hardware.fastcost import fast_cost; fast_cost('cnn', num_classes=3, input_shape=[1, 1, 16, 16], "
            "width=0.25, depth=1, runtime='ncnn', precision='fp32')")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
    assert len(list((tmp_path / "costs").glob("cnn-*.json"))) == 1


def test_trace_names_ops_it_has_no_rule_for_as_unknown():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    graph, unhandled = trace_graph(Odd(), [1, 2, 3, 3])
    assert unhandled == ["cumsum"]
    from edgekd.hardware.graph import shaped_graph_cost

    assert shaped_graph_cost(graph, runtime="onnxruntime", precision="fp32").unknown_ops == ["cumsum"]


def test_a_predicted_search_exports_nothing_and_agrees_with_the_onnx_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    target = load_target("raspberry-pi-5")
    kw = dict(target=target, num_classes=5, input_shape=(3, 32, 32), width=0.25, resolution=40)
    fast = evaluate_candidate("mobilenet_v3_small", **kw)
    assert not (tmp_path / "graphs").exists()
    ref = evaluate_candidate("mobilenet_v3_small", costing="onnx", **kw)
    assert list((tmp_path / "graphs").glob("*.onnx"))
    assert (fast.flops, fast.params, fast.image_size) == (ref.flops, ref.params, 40)
    assert fast.predicted_ms == pytest.approx(ref.predicted_ms, rel=0.02)
    with pytest.raises(Exception, match="unknown costing"):
        evaluate_candidate("cnn", costing="fx", **kw)


def test_an_onnx_teacher_is_predicted_from_its_file(tmp_path):
    """Issue 27.4: --teacher model.onnx with --target jetson-nano crashed predicting the teacher's latency
    (the module that calls ONNX Runtime was handed to the exporter)."""
    from conftest import packaged_subset, seeded_cnn

    from edgekd.bench.evaluate import benchmark_artifacts
    from edgekd.hardware.graph import export_onnx
    from edgekd.models import ModelSpec, save_model
    from edgekd.models.sources import OnnxModel

    splits = packaged_subset(64, 32)
    export_onnx(seeded_cnn(1, width=0.25), (1, 1, 28, 28), tmp_path / "teacher.onnx")
    student = seeded_cnn(2, width=0.25)
    save_model(tmp_path / "student.safetensors", student, ModelSpec("cnn", 10, 1, width=0.25))
    rows = benchmark_artifacts([], run_dir=tmp_path, teacher=OnnxModel(tmp_path / "teacher.onnx"), student=student,
                               splits=splits, target=load_target("jetson-nano"), student_accuracy=0.1,
                               teacher_accuracy=0.1, max_drop=0.05, seconds=0.05, teacher_path="teacher.onnx")
    teacher = next(r for r in rows if r["role"] == "teacher")
    assert teacher["target_latency_source"] == "predicted:jetson-nano", teacher.get("target_note")
    ref = predict_cost(graph_cost(tmp_path / "teacher.onnx", runtime="tensorrt", precision=teacher["target_precision"]),
                       load_target("jetson-nano"), teacher["target_precision"]).total_ms
    assert teacher["target_latency_ms"]["p50"] == pytest.approx(ref)
