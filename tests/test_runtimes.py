"""Runtime descriptors: each runtime is registered once, and every consumer covers every registered runtime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.runtimes import (
    RUNTIMES, FusionRules, Runner, Runtime, format_of_file, fusion_rules, model_suffixes, readers_of, runtime_for_file,
    target_runtimes,
)

NAMES = RUNTIMES.names()


@pytest.mark.parametrize("name", NAMES)
def test_descriptor_is_complete(name):
    from edgekd.export import FORMATS

    rt = RUNTIMES.get(name)
    assert rt.name == name and rt.description
    assert issubclass(rt.runner, Runner) and rt.runner.name == name
    assert rt.suffixes and all(s.startswith(".") and s == s.lower() for s in rt.suffixes + rt.reads)
    owners = {RUNTIMES.get(n).file_format for n in NAMES}
    assert set(rt.deploy_formats) <= owners, "a runtime deploys only formats some runtime's files have"
    assert all(f in FORMATS for f in rt.export_formats), "export formats must be registered export formats"
    assert re.fullmatch(r"#[0-9a-f]{6}", rt.color)
    assert all(runtime_for_file(f"model{s}") == name for s in rt.suffixes)
    assert all(readers_of(f"model{s}")[0] == name for s in rt.suffixes)
    assert all(name in readers_of(f"model{s}") for s in rt.reads)


def test_suffixes_belong_to_one_runtime():
    owners = [s for n in NAMES for s in RUNTIMES.get(n).suffixes]
    assert len(owners) == len(set(owners))


def test_every_export_format_runs_on_a_registered_runtime():
    from edgekd.export import FORMATS

    families = {RUNTIMES.get(n).file_format for n in NAMES}
    for name, fmt in FORMATS.items():
        assert fmt.runtime in RUNTIMES, f"{name} names unknown runtime {fmt.runtime}"
        assert fmt.format in families, f"{name} is format {fmt.format}, which no runtime's files are"
        main_suffix = Path(fmt.filename.format(stem="m")).suffix
        assert runtime_for_file(f"m{main_suffix}") == fmt.runtime or fmt.runtime in readers_of(f"m{main_suffix}")


def test_litert_is_covered_like_the_others():
    rt = RUNTIMES.get("litert")
    assert "litert" in target_runtimes() and rt.fusions is not None
    assert ".tflite" in model_suffixes() and format_of_file("m.tflite") == "litert"


def test_on_device_runtimes_are_the_device_runners_backends():
    """`edgekd runner`'s file runs exactly the runtimes whose descriptors say on_device, on their files."""
    from edgekd.bench import device_runner

    on_device = [n for n in NAMES if RUNTIMES.get(n).on_device]
    assert sorted(device_runner.BACKENDS) == sorted(on_device)
    for name in on_device:
        rt = RUNTIMES.get(name)
        assert set(rt.suffixes) | set(rt.reads) <= set(device_runner.BACKENDS[name].suffixes), name


def test_unknown_runtime_is_a_one_line_error():
    with pytest.raises(EdgeKDError, match="did you mean 'openvino'"):
        RUNTIMES.get("openvno")
    with pytest.raises(EdgeKDError, match="fusion rules"):
        fusion_rules("pytorch")  # no device profile runs eager PyTorch


# --- a runtime registered only in the registry must reach every consumer ---------------------------------

class _FakeRunner(Runner):
    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)

    def _run(self, x):
        return np.zeros((len(x), 10), np.float32)


@pytest.fixture
def fake(monkeypatch):
    """A runtime that exists only as a descriptor: a consumer with its own table does not know it."""
    rt = Runtime(name="fakert", description="a runtime for tests", runner=_FakeRunner, suffixes=(".fake",),
                 file_format="fakefmt", reads=(".onnx",), deploys=("fakefmt", "onnx"), compiles_fp32=True,
                 fusions=FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Relu"}),
                                     max_epilogue=1),
                 export_formats=("ort-fp16",), builds_on_device=True, packages=("fake-dist",), color="#123456")
    monkeypatch.setitem(RUNTIMES._entries, rt.name, rt)
    monkeypatch.setattr(_FakeRunner, "name", rt.name)
    return rt


def _conv_bn_relu(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.ones(4, np.float32) * (i + 1), n) for i, n in enumerate("sbmv")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _profile(runtime: str) -> dict:
    import yaml

    from edgekd.hardware.targets import shipped_profiles

    data = yaml.safe_load(shipped_profiles()["raspberry-pi-4"].read_text())
    return {**data, "name": "fake-device", "runtime": runtime}


def test_fake_runtime_reaches_profiles_and_latency_model(fake, tmp_path):
    from edgekd.hardware.graph import graph_cost
    from edgekd.hardware.targets import validate_profile

    assert validate_profile(_profile("fakert"), "fake.yaml")["runtime"] == "fakert"
    cost = graph_cost(_conv_bn_relu(tmp_path / "m.onnx"), runtime="fakert")
    assert [k.ops for k in cost.kernels] == [["Conv", "BatchNormalization", "Relu"]]


def test_fake_runtime_reaches_runners_bench_and_gate(fake, tmp_path):
    from edgekd.bench.host import BenchOptions, _file_row
    from edgekd.bench.runners import available_runtimes, load_runner
    from edgekd.gate import subject_from_file

    model = tmp_path / "m.fake"
    model.write_bytes(b"weights")
    runner = load_runner(model)
    assert isinstance(runner, _FakeRunner) and runner.run(np.zeros((2, 1, 4, 4), np.float32)).shape == (2, 10)
    assert "fakert" in available_runtimes()
    assert readers_of(tmp_path / "m.onnx") == ["onnxruntime", "openvino", "fakert"]
    BenchOptions(runtimes=["fakert"]).check()
    assert _file_row(model, "fakert")["format"] == "fakefmt"
    assert subject_from_file(model).name == "m.fake"


def test_fake_runtime_reaches_evaluation_pipeline_and_export(fake):
    from types import SimpleNamespace

    from edgekd.bench.evaluate import deployable, target_precision
    from edgekd.export import _builds_on_device
    from edgekd.pipeline import default_formats

    target = SimpleNamespace(name="fake-device", runtime="fakert", precision="fp16", precisions=["fp16"])
    assert deployable({"format": "fakefmt"}, target) and deployable({"format": "onnx"}, target)
    assert not deployable({"format": "openvino"}, target)
    assert target_precision({"format": "onnx", "precision": "fp32"}, target) == "fp16"  # compiles_fp32
    assert "ort-fp16" in default_formats(target)
    assert _builds_on_device("fakert")


def test_fake_runtime_reaches_reports(fake):
    from edgekd.bench.env import runtime_packages
    from edgekd.report.markdown import render_markdown
    from edgekd.report.plots import runtime_color
    from edgekd.report.schema import new_report

    assert runtime_color("fakert") == "#123456"
    assert "fake-dist" in runtime_packages()
    report = new_report("bench")
    report["environment"] = {"cpu": "x", "fake-dist": "9.9"}
    assert "fake-dist: 9.9" in render_markdown(report)
