"""Hardware model: profiles and their schema, per-kernel costs, fusions, calibration, selection, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.hardware import (Coefficients, features, fit_coefficients, graph_cost, list_targets, load_target,
                             predict_latency_ms, search, select_width)
from edgekd.hardware.graph import GraphCost, Kernel
from edgekd.hardware.latency import kernel_ms
from edgekd.hardware.targets import OP_CLASSES

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


# --- tiny ONNX graphs built by hand (no exporter: exact and fast) --------------------------------

class GraphBuilder:
    def __init__(self, shape):
        self.nodes, self.inits, self.shape, self.x, self.n = [], [], list(shape), "input", 0

    def _name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def weight(self, shape):
        name = self._name("w")
        rng = np.random.default_rng(self.n)
        self.inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name))
        return name

    def conv(self, cout, k, stride=1, groups=1, bias=False):
        cin = self.shape[1]
        inputs = [self.x, self.weight([cout, cin // groups, k, k])] + ([self.weight([cout])] if bias else [])
        out = self._name("conv")
        self.nodes.append(helper.make_node("Conv", inputs, [out], kernel_shape=[k, k], pads=[k // 2] * 4,
                                           strides=[stride, stride], group=groups))
        h = (self.shape[2] + 2 * (k // 2) - k) // stride + 1
        self.shape, self.x = [1, cout, h, h], out
        return out

    def bn(self):
        c = self.shape[1]
        names = [self.weight([c]) for _ in range(2)]
        mean = self._name("mean")
        var = self._name("var")
        self.inits += [numpy_helper.from_array(np.zeros(c, np.float32), mean), numpy_helper.from_array(np.ones(c, np.float32), var)]
        out = self._name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [self.x, *names, mean, var], [out]))
        self.x = out
        return out

    def op(self, op_type, *extra, **attrs):
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, [self.x, *extra], [out], **attrs))
        self.x = out
        return out

    def head(self, classes):
        self.op("GlobalAveragePool")
        self.op("Flatten", axis=1)
        c = self.shape[1]
        w, b = self.weight([classes, c]), self.weight([classes])
        out = self._name("gemm")
        self.nodes.append(helper.make_node("Gemm", [self.x, w, b], [out], transB=1))
        self.x, self.shape = out, [1, classes]
        return out

    def save(self, path):
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, None)], self.inits)
        graph.input[0].type.tensor_type.shape.dim.extend([])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(path))
        return Path(path)


def build(path, shape, body):
    g = GraphBuilder(shape)
    body(g)
    p = g.save(path)
    return p, shape


# --- FLOPs and bytes ------------------------------------------------------------------------------

def test_conv_and_linear_flops_match_hand_computation(tmp_path):
    def body(g):
        g.conv(8, 3, bias=True)           # 1x3x16x16 -> 1x8x16x16
        g.conv(8, 3, stride=2, groups=8)  # depthwise -> 1x8x8x8
        g.head(10)
    path, shape = build(tmp_path / "m.onnx", [1, 3, 16, 16], body)
    cost = graph_cost(path, runtime="none", input_shape=shape)
    by_op = [(k.op_type, k.op_class, k.flops) for k in cost.kernels]
    conv1 = 2 * (8 * 16 * 16) * (3 * 3 * 3) + 8 * 16 * 16        # 2*MACs + bias adds = 112640
    dw = 2 * (8 * 8 * 8) * (1 * 3 * 3)                             # depthwise: one input channel per output
    gap = 8 * 8 * 8                                                # one add per input element
    gemm = 2 * 10 * 8 + 10                                         # 2*M*N*K + bias
    assert by_op == [("Conv", "conv", conv1), ("Conv", "dwconv", dw), ("GlobalAveragePool", "pool", gap),
                     ("Gemm", "gemm", gemm)]
    assert cost.flops == conv1 + dw + gap + gemm
    assert cost.params == (8 * 3 * 9 + 8) + 8 * 9 + (10 * 8 + 10)
    first = cost.kernels[0]
    assert first.weight_bytes == (8 * 27 + 8) * 4
    assert first.input_bytes == 3 * 16 * 16 * 4 and first.output_bytes == 8 * 16 * 16 * 4
    # Half precision halves every byte count and leaves FLOPs alone.
    half = graph_cost(path, runtime="none", precision="fp16", input_shape=shape)
    assert half.flops == cost.flops and half.kernels[0].bytes * 2 == first.bytes


def test_exported_cnn_flops_match_hand_computation():
    from edgekd.hardware import cached_onnx

    path = cached_onnx("cnn", num_classes=10, input_shape=(1, 28, 28), width=1.0, depth=1)
    cost = graph_cost(path, runtime="onnxruntime")
    convs = [k for k in cost.kernels if k.op_type == "Conv"]
    hand = [2 * 16 * 28 * 28 * 1 * 9, 2 * 32 * 14 * 14 * 16 * 9, 2 * 64 * 7 * 7 * 32 * 9]
    relu = [16 * 28 * 28, 32 * 14 * 14, 64 * 7 * 7]
    assert [k.flops for k in convs] == [h + r for h, r in zip(hand, relu)]
    assert all(k.ops[-1] == "Relu" for k in convs)
    gemm = [k for k in cost.kernels if k.op_type == "Gemm"][0]
    assert gemm.flops == 2 * 10 * 64 + 10


# --- fusion ---------------------------------------------------------------------------------------

def _residual_graph(tmp_path):
    def body(g):
        g.conv(8, 3)
        skip = g.op("Relu")
        g.conv(8, 3)
        g.bn()
        g.op("Add", skip)
        g.op("Relu")
        g.op("HardSwish")
        g.head(10)
    return build(tmp_path / "res.onnx", [1, 8, 8, 8], body)


def test_fusions_follow_each_runtime(tmp_path):
    path, shape = _residual_graph(tmp_path)
    ops = {rt: ["+".join(k.ops) for k in graph_cost(path, runtime=rt, input_shape=shape).kernels]
           for rt in ("none", "onnxruntime", "tensorrt", "executorch")}
    assert ops["none"] == ["Conv", "Relu", "Conv", "BatchNormalization", "Add", "Relu", "HardSwish",
                           "GlobalAveragePool", "Gemm"]
    # ORT: BN folded, conv absorbs Add+Relu (NCHWc ConvAddActivation) but only two epilogue ops.
    assert ops["onnxruntime"] == ["Conv+Relu", "Conv+BatchNormalization+Add+Relu", "HardSwish", "GlobalAveragePool", "Gemm"]
    # TensorRT fuses the whole pointwise tail into the conv.
    assert ops["tensorrt"] == ["Conv+Relu", "Conv+BatchNormalization+Add+Relu+HardSwish", "GlobalAveragePool", "Gemm"]
    # XNNPACK: a clamp is the only conv epilogue, so Add and HardSwish stay separate (Add absorbs no clamp here).
    assert ops["executorch"][:2] == ["Conv+Relu", "Conv+BatchNormalization"]
    assert "HardSwish" in ops["executorch"]
    fused = graph_cost(path, runtime="tensorrt", input_shape=shape)
    raw = graph_cost(path, runtime="none", input_shape=shape)
    # BN folding removes its FLOPs; fusion removes the intermediate tensors' memory traffic.
    assert fused.flops < raw.flops
    assert sum(k.bytes for k in fused.kernels) < sum(k.bytes for k in raw.kernels)
    # The residual input is still read once by the fused kernel.
    assert fused.kernels[1].input_bytes == 2 * 8 * 8 * 8 * 4


def test_peak_memory_counts_weights_and_live_activations(tmp_path):
    path, shape = _residual_graph(tmp_path)
    cost = graph_cost(path, runtime="onnxruntime", input_shape=shape)
    act = 8 * 8 * 8 * 4
    # While the second conv runs: the input is dead, but the skip tensor and the conv output are live.
    assert cost.peak_activation_bytes >= 2 * act
    assert cost.memory_mb == pytest.approx((cost.weight_bytes + cost.peak_activation_bytes) / 2**20)


# --- profiles and schema ----------------------------------------------------------------------------

def test_shipped_profiles_load_with_cited_sources():
    targets = {t.name: t for t in list_targets()}
    for name in ("jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "pixel-7", "intel-nuc-i7", "host"):
        assert name in targets
    for t in targets.values():
        assert t.sources and t.software and t.conditions
        assert t.precision in t.precisions and t.precision in t.peak_gflops
        text = (REPO / "targets" / f"{t.name}.yaml").read_text()
        assert text.count("#") >= 3, f"{t.name}: figures must cite their source in comments"
    nano = targets["jetson-nano"]
    assert nano.runtime == "tensorrt" and nano.precision == "fp16" and "int8" not in nano.precisions
    assert "int8" in targets["jetson-orin-nano"].precisions
    assert targets["host"].measured and not nano.measured


def _write_profile(tmp_path, **changes):
    data = yaml.safe_load((REPO / "targets" / "jetson-nano.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_user_profile_by_path(tmp_path):
    t = load_target(str(_write_profile(tmp_path, name="my-board", budget_ms=2.5)))
    assert t.name == "my-board" and t.budget_ms == 2.5


@pytest.mark.parametrize("changes, message", [
    ({"budgt_ms": 1.0}, "unknown key 'budgt_ms'.*did you mean 'budget_ms'"),
    ({"budget_ms": "fast"}, "'budget_ms' .* must be a positive number"),
    ({"runtime": "tensorflow"}, "'runtime' .* must be one of .*tensorrt"),
    ({"precisions": ["fp32", "bf16"]}, "'precisions' .* must be a non-empty list"),
    ({"peak_gflops": {"fp32": 236, "fp61": 472}}, "unknown key 'fp61'.*did you mean 'fp16'"),
    ({"conditions": {"thread": 4}}, "unknown key 'thread'.*did you mean 'threads'"),
    ({"conditions": {"threads": 4, "clock_ghz": "1.5GHz"}}, "'conditions.clock_ghz' in .* must be the core clock in GHz"),
    ({"efficiency": {"convv": 0.3}}, "unknown key 'convv'.*did you mean 'conv'"),
    ({"memory_bandwidth_gbs": None}, "missing key 'memory_bandwidth_gbs'"),
    ({"precision": "int8"}, "default precision 'int8' .* is not in its 'precisions'"),
])
def test_schema_errors_are_one_line_and_name_the_key(tmp_path, changes, message):
    with pytest.raises(EdgeKDError, match=message) as err:
        load_target(str(_write_profile(tmp_path, **changes)))
    assert "\n" not in str(err.value)


def test_unknown_target_suggests_the_closest_name():
    with pytest.raises(EdgeKDError, match="did you mean 'jetson-nano'"):
        load_target("jetson-nan")
    with pytest.raises(EdgeKDError, match="does not exist"):
        load_target("no/such/profile.yaml")


# --- latency model and calibration ----------------------------------------------------------------

def _synthetic_costs(n, seed=0) -> list[GraphCost]:
    rng = np.random.default_rng(seed)
    costs = []
    for _ in range(n):
        kernels = []
        for _ in range(rng.integers(2, 12)):
            cls = OP_CLASSES[rng.integers(len(OP_CLASSES))]
            kernels.append(Kernel(name="k", op_type="X", op_class=cls, ops=["X"], flops=int(rng.integers(1e3, 5e7)),
                                  weight_bytes=int(rng.integers(0, 1e6)), input_bytes=int(rng.integers(1e3, 1e6)),
                                  output_bytes=int(rng.integers(1e3, 1e6)), output_shape=[1]))
        costs.append(GraphCost(kernels=kernels, runtime="onnxruntime", precision="fp32", input_shape=[1], params=0,
                               flops=0, weight_bytes=0, peak_activation_bytes=0, unknown_ops=[]))
    return costs


def _known_coefficients() -> Coefficients:
    rng = np.random.default_rng(42)
    classes = {c: {"ms_per_mflop": float(rng.uniform(0.005, 0.1)), "ms_per_mb": float(rng.uniform(0.02, 0.2)),
                   "ms_per_kernel": float(rng.uniform(0.001, 0.02))} for c in OP_CLASSES}
    return Coefficients(classes=classes, fixed_ms=0.03, precision="fp32")


def test_fit_recovers_known_coefficients_from_synthetic_measurements():
    truth = _known_coefficients()
    costs = _synthetic_costs(120)
    rows = [features(c) for c in costs]
    y = [sum(kernel_ms(c, truth)) + truth.fixed_ms for c in costs]
    fitted, stats = fit_coefficients(rows, y, precision="fp32", prior=None)
    np.testing.assert_allclose(fitted.vector(), truth.vector(), rtol=1e-4, atol=1e-7)
    assert stats["within10"] == 1.0 and stats["median_abs_pct_err"] < 1e-3


def test_fit_with_few_measurements_stays_near_the_prior():
    truth = _known_coefficients()
    prior = Coefficients.from_vector(truth.vector() * 2.0, "fp32")
    costs = _synthetic_costs(3, seed=1)
    y = [sum(kernel_ms(c, truth)) + truth.fixed_ms for c in costs]
    fitted, _ = fit_coefficients([features(c) for c in costs], y, precision="fp32", prior=prior, prior_weight=0.05)
    v = fitted.vector()
    assert np.all(v >= 0)
    # Nothing collapses to zero: every coefficient stays within a factor of the prior.
    used = prior.vector() > 0
    assert np.all(v[used] > 0.2 * prior.vector()[used])


def _conv_net(tmp_path, i, rng):
    res, c0 = int(rng.choice([8, 16, 32])), int(rng.choice([4, 8, 16]))

    def body(g):
        g.conv(c0, int(rng.choice([1, 3, 5])))
        g.op("Relu")
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                g.conv(g.shape[1], 3, groups=g.shape[1])
            else:
                g.conv(int(g.shape[1] * rng.choice([1, 2])), 3)
            g.op("Relu")
        g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
        g.op("Sigmoid")
        g.head(10)
    return build(tmp_path / f"net{i}.onnx", [1, 3, res, res], body)


def test_calibrate_round_trip_from_a_measurements_file(tmp_path):
    """Device latencies generated from known coefficients -> `calibrate` -> predictions match them."""
    from edgekd.hardware.calibration import calibrate_from_measurements
    from edgekd.hardware.latency import Coefficients as C

    target = load_target("raspberry-pi-4")
    truth = C.from_vector(np.array([0.02, 0.1, 0.012] * len(OP_CLASSES) + [0.0, 0.05]), "fp32")
    rng = np.random.default_rng(3)
    results = []
    (tmp_path / "models").mkdir()
    for i in range(60):
        path, shape = _conv_net(tmp_path / "models", i, rng)
        cost = graph_cost(path, runtime=target.runtime, precision="fp32", input_shape=shape)
        ms = sum(kernel_ms(cost, truth)) + truth.fixed_ms
        results.append({"model": f"models/{path.name}", "runtime": "onnxruntime", "batch": 1, "precision": "fp32",
                        "status": "ok", "input_shape": shape, "latency_ms": {"p50": ms, "p90": ms * 1.1}})
    # What the on-device runner also writes: failed rows, other runtimes, non-ONNX artifacts.
    results.append({"model": "models/net0.onnx", "runtime": "onnxruntime", "status": "failed", "reason": "oom"})
    results.append({"model": "models/net1.onnx", "runtime": "openvino", "status": "ok", "input_shape": [1, 3, 8, 8],
                    "latency_ms": {"p50": 99.0}})
    results.append({"model": "models/student.xml", "runtime": "onnxruntime", "status": "ok", "latency_ms": {"p50": 9.0}})
    mfile = tmp_path / "measurements.json"
    mfile.write_text(json.dumps({"format": "edgekd-runner-results", "target": "pi4-lab",
                                 "device": {"name": "pi4-lab", "threads": 4}, "results": results}))
    result = calibrate_from_measurements("raspberry-pi-4", mfile, prior_weight=1e-6)
    assert result.n_measurements == 60 and result.fit["within10"] == 1.0
    assert result.path.is_file() and result.path != REPO / "targets" / "raspberry-pi-4.yaml"
    # load_target picks the calibration up and says so; predictions now follow the device.
    cal = load_target("raspberry-pi-4")
    assert cal.calibration.startswith("calibrated from 60 measurements")
    probe, shape = _conv_net(tmp_path, 999, np.random.default_rng(11))
    pred = predict_latency_ms(probe, cal, input_shape=shape, precision="fp32")
    expected = sum(kernel_ms(graph_cost(probe, runtime="onnxruntime", input_shape=shape), truth)) + truth.fixed_ms
    assert pred.total_ms == pytest.approx(expected, rel=0.01)
    assert pred.latency_source == "predicted:raspberry-pi-4 (calibrated from 60 measurements)"
    # The shipped default precision (int8) was not measured, so it keeps the datasheet and says so.
    assert "datasheet" in predict_latency_ms(probe, cal, input_shape=shape).calibration
    result.path.unlink()
    assert load_target("raspberry-pi-4").calibration == "datasheet"


def _threaded_results(tmp_path, target, truth, fraction, threads_of):
    """Runner rows for 40 generated nets, each timed on ``threads_of(i)`` threads: the truth's compute part
    slowed by Amdahl's law with ``fraction`` against the profile's threads, the rest (bytes, launches) as is."""
    results, rng = [], np.random.default_rng(5)
    (tmp_path / "models").mkdir(exist_ok=True)
    no_compute = Coefficients.from_dict({**truth.to_dict(), "classes": {
        c: {**t, "ms_per_mflop": 0.0} for c, t in truth.to_dict()["classes"].items()}})
    speedup = lambda n: 1 / ((1 - fraction) + fraction / n)  # noqa: E731
    for i in range(40):
        path, shape = _conv_net(tmp_path / "models", i, rng)
        cost = graph_cost(path, runtime=target.runtime, precision="fp32", input_shape=shape)
        rest = sum(kernel_ms(cost, no_compute)) + truth.fixed_ms
        compute = sum(kernel_ms(cost, truth)) + truth.fixed_ms - rest
        n = threads_of(i)
        ms = rest + compute * speedup(target.threads) / speedup(n or target.threads)
        results.append({"model": f"models/{path.name}", "status": "ok", "input_shape": shape, "precision": "fp32",
                        "latency_ms": {"p50": ms}, **({"threads": n} if n else {})})
    return results


def test_calibrate_scales_figures_measured_on_other_thread_counts(tmp_path):
    """A user's figures on one thread (or on one and four) calibrate a four-thread profile for four threads:
    their compute is scaled by Amdahl's law, with the parallel fraction fitted where the figures span
    several thread counts, else the shipped calibration's; before, they were fitted as four-thread figures."""
    from edgekd.hardware.calibration import calibrate_from_measurements
    from edgekd.hardware.fitting import cost_rows
    from edgekd.hardware.latency import Coefficients as C
    from edgekd.hardware.targets import shipped_parallel_fraction

    target = load_target("raspberry-pi-5")
    assert target.threads == 4
    # Compute-bound, as convs on a Pi are: scaling that is wrong or missing shows in every prediction (by 30%
    # and more here, against the 6% the per-class fit of these 40 tiny nets leaves even on one thread count).
    truth = C.from_vector(np.array([2.0, 0.01, 0.0005] * len(OP_CLASSES) + [0.0, 0.002]), "fp32")
    probe, shape = _conv_net(tmp_path, 999, np.random.default_rng(11))
    probe_cost = graph_cost(probe, runtime=target.runtime, input_shape=shape)
    expected = sum(kernel_ms(probe_cost, truth)) + truth.fixed_ms
    assert 2.0 * probe_cost.flops / 1e6 > 0.6 * expected

    def calibrate(results, name):
        mfile = tmp_path / name
        mfile.write_text(json.dumps({"device": {"name": "pi5-lab", "runtime": "onnxruntime"}, "results": results}))
        result = calibrate_from_measurements(target, mfile, prior_weight=1e-6, save=False)
        pred = float(cost_rows(target, [probe], [shape], precision="fp32")[0][0] @ result.coefficients.vector())
        return result, pred

    # Half on one thread, half on four: the fraction the figures were made with is found, and predictions
    # for four threads are the truth's.
    mixed, pred = calibrate(_threaded_results(tmp_path, target, truth, 0.7, lambda i: 1 if i % 2 else 4), "mixed.json")
    pf = mixed.fit["parallel_fraction"]
    assert pf["value"] == pytest.approx(0.7, abs=0.03) and "2 thread counts (1, 4)" in pf["origin"]
    assert pred == pytest.approx(expected, rel=0.06)
    assert [r["threads"] for r in mixed.rows[:2]] == [4, 1]
    # All on one thread: nothing to fit the fraction on, so the shipped Pi 5 calibration's is used and named.
    shipped, origin = shipped_parallel_fraction("raspberry-pi-5")
    one, pred = calibrate(_threaded_results(tmp_path, target, truth, shipped, lambda i: 1), "one.json")
    assert one.fit["parallel_fraction"] == {"value": shipped, "origin": origin}
    assert pred == pytest.approx(expected, rel=0.06)
    # Unstated thread counts are the profile's conditions: no scaling, and none recorded.
    four, pred = calibrate(_threaded_results(tmp_path, target, truth, 0.7, lambda i: None), "four.json")
    assert "parallel_fraction" not in four.fit and pred == pytest.approx(expected, rel=0.06)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{**_threaded_results(tmp_path, target, truth, 0.7, lambda i: 1)[0],
                                            "threads": "four"}]}))
    with pytest.raises(EdgeKDError, match=r"results\[0\]\.threads .* must be a positive integer"):
        calibrate_from_measurements(target, bad, save=False)


def test_measurement_file_errors(tmp_path):
    from edgekd.hardware.calibration import calibrate_from_measurements

    with pytest.raises(EdgeKDError, match="does not exist"):
        calibrate_from_measurements("jetson-nano", tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"model": "missing.onnx", "latency_ms": {"p50": 1.0}}]}))
    with pytest.raises(EdgeKDError, match="missing.onnx does not exist.*relative"):
        calibrate_from_measurements("jetson-nano", bad)
    bad.write_text(json.dumps({"device": {"runtime": "openvino"}, "results": []}))
    with pytest.raises(EdgeKDError, match="no successful measurements"):
        calibrate_from_measurements("jetson-nano", bad)
    path, shape = _residual_graph(tmp_path)
    bad.write_text(json.dumps({"device": {}, "results": [
        {"model": path.name, "runtime": "openvino", "input_shape": shape, "status": "ok", "latency_ms": {"p50": 1.0}}]}))
    with pytest.raises(EdgeKDError, match="measurements with openvino, but jetson-nano uses tensorrt"):
        calibrate_from_measurements("jetson-nano", bad)
    bad.write_text(json.dumps({"target": "raspberry-pi-4", "results": [
        {"model": path.name, "input_shape": shape, "latency_ms": {"p50": 1.0}}]}))
    with pytest.raises(EdgeKDError, match="measured on raspberry-pi-4, not jetson-nano"):
        calibrate_from_measurements("jetson-nano", bad)


# --- selection and search ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "pixel-7",
                                  "pixel-1", "intel-nuc-i7"])
def test_default_budgets_make_the_choice_real(name):
    sel = select_width("cnn", WIDTHS, target=name, budget_ms=None, num_classes=10, input_shape=(1, 28, 28))
    fits = [c.fits for c in sel.candidates]
    assert any(fits) and not all(fits), f"{name}: default budget must split the width grid"
    assert sel.chosen.width == max(c.width for c in sel.candidates if c.fits)
    assert sel.chosen.predicted_ms <= sel.budget_ms
    # Profiles with published measurements for their runtime predict from those, the others from the datasheet.
    published = {"jetson-nano": 24, "pixel-1": 23, "intel-nuc-i7": 6}
    assert sel.latency_source == (f"predicted:{name} (calibrated from {published[name]} published measurements)"
                                  if name in published else f"predicted:{name} (datasheet)")
    ms = [c.predicted_ms for c in sel.candidates]
    assert ms == sorted(ms), "wider students must not be predicted faster"
    d = sel.to_dict()
    assert {"width", "budget_ms", "latency_source", "candidates"} <= set(d)
    assert {"width", "depth", "params", "flops", "predicted_ms", "fits", "memory_mb"} <= set(d["candidates"][0])


def test_unreachable_budget_names_the_smallest_candidates_latency():
    sel = select_width("cnn", WIDTHS, target="jetson-nano", budget_ms=None, num_classes=10, input_shape=(1, 28, 28))
    smallest = sel.candidates[0]
    with pytest.raises(EdgeKDError) as err:
        select_width("cnn", WIDTHS, target="jetson-nano", budget_ms=0.001, num_classes=10, input_shape=(1, 28, 28))
    msg = str(err.value)
    assert "no candidate fits the 0.001 ms budget on jetson-nano" in msg
    assert "width 0.25" in msg and f"{smallest.predicted_ms:#.3g} ms" in msg and "--budget-ms" in msg


@pytest.mark.slow
def test_host_selection_is_measured_here():
    sel = select_width("cnn", (0.25, 1.0, 3.0), target="host", budget_ms=1000.0, num_classes=10, input_shape=(1, 28, 28))
    assert sel.latency_source == "measured:host"
    assert all(c.latency_source == "measured:host" for c in sel.candidates)
    assert sel.candidates[-1].predicted_ms > sel.candidates[0].predicted_ms
    assert sel.chosen.width == 3.0


def test_search_respects_latency_and_memory_budgets():
    grid = dict(num_classes=10, input_shape=(1, 28, 28), widths=(0.5, 1.0), depths=(1, 2))
    sel = search("cnn", target="pixel-7", budget_ms=0.2, **grid)
    assert len(sel.candidates) == 4
    assert sel.chosen.fits and sel.chosen.predicted_ms <= 0.2
    assert sel.chosen.params == max(c.params for c in sel.candidates if c.fits)
    front = sel.pareto
    assert [c.predicted_ms for c in front] == sorted(c.predicted_ms for c in front)
    assert [c.params for c in front] == sorted(c.params for c in front)
    tight = min(c.memory_mb for c in sel.candidates) * 1.01
    small = search("cnn", target="pixel-7", budget_ms=10.0, memory_mb=tight, **grid)
    assert [c for c in small.candidates if c.fits] and all(c.memory_mb <= tight for c in small.candidates if c.fits)
    with pytest.raises(EdgeKDError, match="MB of memory"):
        search("cnn", target="pixel-7", budget_ms=10.0, memory_mb=tight / 10, **grid)
    # A lower input resolution is a cheaper candidate of the same width.
    low = search("cnn", target="pixel-7", budget_ms=10.0, num_classes=10, input_shape=(1, 28, 28), widths=(1.0,),
                 depths=(1,), resolutions=(20, 28))
    by_res = {c.resolution or 28: c for c in low.candidates}
    assert by_res[20].flops < by_res[28].flops and by_res[20].predicted_ms < by_res[28].predicted_ms


# --- CLI ----------------------------------------------------------------------------------------------

def test_cli_predict_json_and_targets(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli.predict import command as predict
    from edgekd.cli.targets import command as targets

    path, shape = _residual_graph(tmp_path)
    res = CliRunner().invoke(predict, ["--target", "jetson-nano", "--onnx", str(path), "--input", "1x8x8x8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["predicted_ms"] > 0
    assert out["latency_source"] == "predicted:jetson-nano (calibrated from 24 published measurements)"
    assert out["predicted_ms"] == pytest.approx(sum(layer["ms"] for layer in out["layers"]) + out["fixed_ms"])
    res = CliRunner().invoke(targets, [])
    assert res.exit_code == 0 and "jetson-nano" in res.output and "tensorrt" in res.output


def test_few_measurements_scale_the_datasheet_terms():
    from edgekd.hardware.latency import datasheet_coefficients, fit_scaled

    prior = datasheet_coefficients(load_target("jetson-nano"))
    truth = prior.vector().copy()
    n = len(OP_CLASSES) * 3
    truth[0:n:3] *= 2.5   # compute 2.5x slower than the datasheet
    truth[2:n:3] *= 1.5   # launches 1.5x dearer
    truth = Coefficients.from_vector(truth, prior.precision, prior.channel_multiple)
    costs = _synthetic_costs(30, seed=7)
    y = [sum(kernel_ms(c, truth)) + truth.fixed_ms for c in costs]
    fitted, stats = fit_scaled([features(c, prior.channel_multiple) for c in costs], y, prior=prior, prior_weight=1e-6)
    for group in OP_CLASSES:   # each compute group is scaled on its own; 1x1 convs (none here) keep their prior
        assert stats["scales"][f"ms_per_mflop:{group}"] == pytest.approx(2.5, rel=0.02), group
    assert stats["scales"]["ms_per_mflop:pointwise"] == pytest.approx(1.0)
    assert stats["scales"]["ms_per_kernel"] == pytest.approx(1.5, rel=0.05)
    assert stats["within10"] == 1.0


def test_dynamic_batch_means_batch_one_unless_given(tmp_path):
    g = GraphBuilder([1, 3, 8, 8])
    g.conv(4, 3)
    path = g.save(tmp_path / "dyn.onnx")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for value in ("N", 3, 8, 8):
        dims.add().dim_param = value if isinstance(value, str) else ""
        if not isinstance(value, str):
            dims[-1].dim_value = value
    onnx.save(model, str(path))
    one = graph_cost(path)
    assert one.flops == 2 * 4 * 64 * 27
    assert graph_cost(path, input_shape=[8, 3, 8, 8]).flops == 8 * one.flops
    dims[2].dim_param = "H"
    onnx.save(model, str(path))
    with pytest.raises(EdgeKDError, match="dimension 2 of .* is dynamic"):
        graph_cost(path)


# ---- host kernels: what ONNX Runtime executes here, and the terms the host model adds for it ---------


def _export(tmp_path, name, module, shape):
    from edgekd.hardware.graph import export_onnx

    return export_onnx(module.eval(), shape, tmp_path / f"{name}.onnx")


def test_fused_activation_epilogue_and_padded_border_columns(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost
    from edgekd.hardware.kernelclass import border_mflops, epilogue_mb

    def conv_then(act):
        return nn.Sequential(nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 7, padding=3), act, nn.Conv2d(16, 16, 1))

    relu6 = executed_graph_cost(_export(tmp_path, "relu6", conv_then(nn.ReLU6()), [1, 16, 12, 12]))
    relu = executed_graph_cost(_export(tmp_path, "relu", conv_then(nn.ReLU()), [1, 16, 12, 12]))
    big6 = next(k for k in relu6.kernels if k.geometry.get("kernel") == [7, 7])
    big = next(k for k in relu.kernels if k.geometry.get("kernel") == [7, 7])
    assert "Clip" in big6.ops and "Relu" in big.ops  # ONNX Runtime fused both activations into the conv
    # ReLU is applied in registers; Clip is a second pass over the output (16 x 12 x 12 floats).
    assert epilogue_mb(big) == 0.0 and epilogue_mb(big6) == pytest.approx(16 * 12 * 12 * 4 / 1e6)
    # 7x7 with padding 3 on a 12-wide output: 3 + 3 of 12 columns reach into the padding.
    assert border_mflops(big) == pytest.approx(big.flops / 1e6 * 6 / 12)
    one_by_one = [k for k in relu.kernels if k.geometry.get("kernel") == [1, 1]]
    assert one_by_one and all(border_mflops(k) == 0.0 for k in one_by_one)
    from edgekd.hardware.kernelclass import kernel_class

    # Blocked 1x1 convs run the pointwise kernel, the 7x7 the NxN one: each its own coefficients.
    assert {kernel_class(k) for k in one_by_one} == {"conv_pointwise"} and kernel_class(big) == "conv"
    row6, row = features(relu6, 16), features(relu, 16)
    from edgekd.hardware.latency import BORDER, EPILOGUE

    assert row6[EPILOGUE] > 0 and row[EPILOGUE] == 0 and row[BORDER] == pytest.approx(border_mflops(big))


def test_plain_layout_average_pool_is_its_own_class(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost
    from edgekd.hardware.kernelclass import kernel_class

    def pooled(channels):
        return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(channels, 16, 1))

    # 12 channels do not fill ONNX Runtime's 16-wide NCHWc block: the pool runs in plain layout, on its
    # generic (several times slower) path; 32 channels stay blocked.
    plain = executed_graph_cost(_export(tmp_path, "c12", pooled(12), [1, 3, 32, 32]))
    blocked = executed_graph_cost(_export(tmp_path, "c32", pooled(32), [1, 3, 32, 32]))
    assert [kernel_class(k) for k in plain.kernels if k.op_type == "AveragePool"] == ["avgpool_nchw"]
    assert [kernel_class(k) for k in blocked.kernels if k.op_type == "AveragePool"] == ["pool"]
    # A Reshape aliases its input (a call, no copy): the "view" class, not the copying data ops'.
    flat = executed_graph_cost(_export(tmp_path, "flat", nn.Sequential(nn.Conv2d(3, 16, 3), nn.Flatten(), nn.Linear(16 * 30 * 30, 10)),
                                       [1, 3, 32, 32]))
    assert "view" in {kernel_class(k) for k in flat.kernels if k.op_type in ("Reshape", "Flatten")}


def test_new_terms_round_trip_and_old_coefficient_files_still_load():
    truth = _known_coefficients()
    truth.ms_per_epilogue_mb, truth.ms_per_border_mflop, truth.ms_per_filter_set_mflop = 0.02, 0.004, 0.001
    again = Coefficients.from_dict(json.loads(json.dumps(truth.to_dict())))
    np.testing.assert_allclose(again.vector(), truth.vector())
    old = json.loads(json.dumps(truth.to_dict()))
    del old["ms_per_epilogue_mb"], old["ms_per_border_mflop"], old["classes"]["conv"]  # conv stays required
    with pytest.raises(EdgeKDError, match="incomplete"):
        Coefficients.from_dict(old)
    old = json.loads(json.dumps(truth.to_dict()))
    del old["ms_per_epilogue_mb"], old["ms_per_border_mflop"], old["ms_per_filter_set_mflop"], old["classes"]["avgpool_nchw"]
    loaded = Coefficients.from_dict(old)
    assert loaded.ms_per_epilogue_mb == loaded.ms_per_border_mflop == loaded.ms_per_filter_set_mflop == 0.0
    assert loaded.classes["avgpool_nchw"] == loaded.classes["pool"]  # a missing sub-class takes its parent's terms


def test_inference_overhead_is_measured_not_fitted():
    """The per-call overhead is timed directly, and the host fit keeps that value whatever the latencies say."""
    from edgekd.hardware.calibration import inference_overhead_ms
    from edgekd.hardware.latency import FIXED

    overhead = inference_overhead_ms(threads=1, repeats=3)
    assert 0.0005 < overhead < 0.5  # a run() call costs microseconds, never nothing, never a model's worth
    # Latencies that carry a 30 us constant: a fitted intercept recovers it (the first fit), a measured one
    # passed the way fit_host passes it stays exactly what was measured (the second).
    truth = _known_coefficients()
    costs = _synthetic_costs(120)
    rows = [features(c) for c in costs]
    y = [sum(kernel_ms(c, truth)) + truth.fixed_ms for c in costs]
    fitted, _ = fit_coefficients(rows, y, precision="fp32", prior=None)
    assert fitted.fixed_ms == pytest.approx(truth.fixed_ms, rel=1e-3)
    held, _ = fit_coefficients(rows, y, precision="fp32", prior=None, fixed_terms={FIXED: overhead})
    assert held.fixed_ms == overhead != pytest.approx(truth.fixed_ms, rel=1e-3)


def test_measure_many_gives_each_network_its_own_figure_in_order():
    """Interleaved passes keep one typical figure per network, in the order given: a 64-kernel chain costs
    more than a 2-kernel one wherever it is listed."""
    from edgekd.hardware.calibration import measure_many
    from edgekd.hardware.hostfacts import _chain_onnx

    short, long = _chain_onnx(2), _chain_onnx(64)
    ms = measure_many([long, short, long], threads=1, passes=3, time_budget_s=0.03)
    assert len(ms) == 3 and all(0 < t < 50 for t in ms)
    assert ms[0] > ms[1] < ms[2]
    assert ms[0] == pytest.approx(ms[2], rel=0.5)  # the same network twice: the same figure, give or take load


def test_blocked_layout_flows_through_element_wise_ops_and_filter_sets(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost
    from edgekd.hardware.kernelclass import filter_set_mflops, kernel_class

    # SiLU runs as ORT's QuickGelu directly on the blocked tensor: the conv after it reads NCHWc, not NCHW.
    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 16, 3, padding=1))
    cost = executed_graph_cost(_export(tmp_path, "silu", net, [1, 16, 20, 20]))
    convs = [k for k in cost.kernels if k.op_type == "Conv"]
    assert any(k.op_type == "QuickGelu" for k in cost.kernels)
    assert convs[1].geometry["input_layout"] == "nchwc" and kernel_class(convs[1]) == "conv"
    # 64 output channels are 4 blocks of 16, one pass; 16 channels are one block, so every FLOP counts.
    assert filter_set_mflops(convs[0]) == pytest.approx(convs[0].flops / 1e6 / 4)
    assert filter_set_mflops(convs[1]) == pytest.approx(convs[1].flops / 1e6)
    from edgekd.hardware.kernelclass import border_mflops

    # 3x3, padding 1, 20 columns: 2 reach into the padding; shared over the 4 output blocks of the first conv.
    assert border_mflops(convs[0]) == pytest.approx(convs[0].flops / 1e6 * 2 / 20 / 4)
    assert border_mflops(convs[1]) == pytest.approx(convs[1].flops / 1e6 * 2 / 20)


def test_wide_kernels_and_grouped_convs_have_their_own_terms(tmp_path):
    import math

    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost
    from edgekd.hardware.kernelclass import kernel_class, wide_kernel_mflops
    from edgekd.hardware.latency import WIDE_KERNEL, Coefficients

    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 7, padding=3), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1, groups=2), nn.ReLU(),   # RegNet-style: 16 channels a group
                        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),  # depthwise
                        nn.Conv2d(32, 16, 1))
    cost = executed_graph_cost(_export(tmp_path, "wide", net, [1, 16, 14, 14]))
    convs = [k for k in cost.kernels if k.op_class in ("conv", "dwconv")]
    dense3, dense7, grouped, depthwise, pointwise = convs
    assert [kernel_class(k) for k in convs] == ["conv", "conv", "conv_grouped", "dwconv", "conv_pointwise"]
    # Only blocked dense convs above 3x3 carry the wide-kernel term, weighted by ln(area / 9).
    assert wide_kernel_mflops(dense7) == pytest.approx(dense7.flops / 1e6 * math.log(49 / 9))
    assert all(wide_kernel_mflops(k) == 0.0 for k in (dense3, grouped, depthwise, pointwise))
    assert features(cost, 16)[WIDE_KERNEL] == pytest.approx(wide_kernel_mflops(dense7))
    # A calibration written before either term existed predicts as it did: grouped convs take the
    # depthwise terms they were fitted with, and wide kernels cost nothing extra.
    old = Coefficients.from_dict({"precision": "fp32", "fixed_ms": 0.01, "classes": {
        c: {"ms_per_mflop": 0.01 * (i + 1), "ms_per_mb": 0.001, "ms_per_kernel": 0.002}
        for i, c in enumerate(("conv", "dwconv", "gemm", "pool", "elementwise", "data"))}})
    assert old.classes["conv_grouped"] == old.classes["dwconv"] and old.ms_per_wide_kernel_mflop == 0.0


def test_ncnn_runs_dense_3x3_convs_as_winograd_and_is_charged_for_the_multiplies_it_does(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.kernelclass import kernel_class, work_flops
    from edgekd.hardware.latency import Coefficients

    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),                # F(6,3): both sides <= 128
                        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(),               # F(4,3): 192 > 128
                        nn.Conv2d(192, 64, 3, stride=2, padding=1), nn.ReLU(),     # stride 2: direct
                        nn.Conv2d(64, 64, 3, padding=2, dilation=2), nn.ReLU(),    # dilated: direct
                        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),     # depthwise: direct
                        nn.Conv2d(64, 32, 1))
    path = _export(tmp_path, "winograd", net, [1, 16, 24, 24])
    convs = [k for k in graph_cost(path, runtime="ncnn", precision="fp32").kernels if k.op_class in ("conv", "dwconv")]
    assert [k.geometry.get("winograd", 0) for k in convs] == [6, 4, 0, 0, 0, 0]
    assert [kernel_class(k) for k in convs] == ["conv_winograd", "conv_winograd", "conv", "conv", "dwconv",
                                                "conv_pointwise"]
    # F(6,3) multiplies 8x8 times per 6x6 output tile where the direct conv multiplies 9 x 36 times; the 24x24
    # map is whole tiles. F(4,3) on 24x24: 36 against 9 x 16.
    assert work_flops(convs[0]) == pytest.approx(convs[0].flops * 64 / 324)
    assert work_flops(convs[1]) == pytest.approx(convs[1].flops * 36 / 144)
    assert work_flops(convs[2]) == convs[2].flops
    # A map that is not whole tiles computes the padded ones: 10x10 outputs take 2x2 tiles of 6x6.
    odd = [k for k in graph_cost(_export(tmp_path, "odd", nn.Conv2d(16, 16, 3, padding=1), [1, 16, 10, 10]),
                                 runtime="ncnn").kernels if k.op_class == "conv"][0]
    assert work_flops(odd) == pytest.approx(odd.flops * 64 / 324 * 144 / 100)
    # Only at the precisions the runtime runs Winograd at, and only on runtimes that do.
    for runtime, precision in (("ncnn", "int8"), ("onnxruntime", "fp32"), ("xnnpack", "fp32")):
        kernels = graph_cost(path, runtime=runtime, precision=precision).kernels
        assert not any(kernel_class(k) == "conv_winograd" for k in kernels), (runtime, precision)
    # A calibration written before the class existed keeps pricing them as dense convs (per multiply executed).
    old = Coefficients.from_dict({"precision": "fp32", "fixed_ms": 0.01, "classes": {
        c: {"ms_per_mflop": 0.01, "ms_per_mb": 0.001, "ms_per_kernel": 0.002}
        for c in ("conv", "dwconv", "gemm", "pool", "elementwise", "data")}})
    assert old.classes["conv_winograd"] == old.classes["conv"]


# ---- one op table, one probe-block table (issue 16, item 5) ---------------------------------------

def test_op_table_covers_what_both_cost_functions_classify(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.calibration import PROBE_BLOCKS, build_probe
    from edgekd.hardware.graph import OPS, executed_graph_cost, op_cost, op_rule

    # One probe holding every probe block kind, activation and the MobileNet head: the ops networks use.
    blocks = [{"kind": kind, "stride": 1, "out": 32, "kernel": 3, "act": act, "expand": 2, "se": True, "pool": pool}
              for kind, act, pool in zip(PROBE_BLOCKS, ["relu6", "hardswish", "silu", "gelu", "relu", "relu", "relu6",
                                                         "hardswish"], ["max", "avg"] * 4)]
    spec = {"in_channels": 3, "resolution": 32, "stem": {"out": 32, "kernel": 3, "stride": 1, "act": "relu"},
            "blocks": blocks, "classes": 10, "head_hidden": 64}
    path = _export(tmp_path, "all-blocks", build_probe(spec), [1, 3, 32, 32])
    nominal = graph_cost(path, runtime="none")
    executed = executed_graph_cost(path)
    assert not nominal.unknown_ops
    for cost in (nominal, executed):
        assert {k.op_type for k in cost.kernels} <= set(OPS), "an op both cost functions meet is missing from OPS"
    # Both classify through the same table: the kernel class of every op type agrees with op_rule.
    for k in nominal.kernels + executed.kernels:
        rule = op_rule(k.op_type)
        assert k.op_class == rule.op_class or (rule.kind == "conv" and k.op_class == "dwconv")
    # And count FLOPs with the same rule: a plain conv costs the same in the ONNX graph and the executed one.
    conv = _export(tmp_path, "conv", nn.Conv2d(16, 32, 3, padding=1), [1, 16, 20, 20])
    plain = graph_cost(conv, runtime="none").kernels[0]
    ran = [k for k in executed_graph_cost(conv).kernels if k.op_type == "Conv"][0]
    assert plain.flops == ran.flops == 2 * 32 * 20 * 20 * 16 * 9 + 32 * 20 * 20
    import onnx

    node = onnx.load(str(conv)).graph.node[0]
    assert op_cost(node, [[1, 16, 20, 20], [32, 16, 3, 3], [32]], [1, 32, 20, 20])[1] == plain.flops


def test_probe_block_table_builds_and_counts_the_same_convs(tmp_path):
    from edgekd.hardware.calibration import PROBE_BLOCKS, build_probe, probe_mflops

    for kind in PROBE_BLOCKS:
        block = {"kind": kind, "stride": 2, "out": 32, "kernel": 5, "act": "relu", "expand": 3, "se": False, "pool": "avg"}
        block = PROBE_BLOCKS[kind].fit(block, 32, 16)
        spec = {"in_channels": 3, "resolution": 16, "stem": {"out": 32, "kernel": 3, "stride": 1, "act": "relu"},
                "blocks": [block], "classes": 10, "head_hidden": 0}
        cost = graph_cost(_export(tmp_path, kind, build_probe(spec), [1, 3, 16, 16]), runtime="none")
        # Multiply-accumulates from each conv's geometry (the exporter folds BN into a bias, whose adds
        # the probe count leaves out).
        g = [k.geometry for k in cost.kernels if k.op_type == "Conv"]
        macs = sum(x["out_pixels"] * x["cout"] * x["cin"] // x["groups"] * int(np.prod(x["kernel"])) for x in g)
        assert probe_mflops(spec) * 1e6 == 2 * macs, kind


def test_hardswish_kernels_ort_leaves_unnamed_are_costed(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost

    class HS(nn.Module):
        def forward(self, x):
            return nn.functional.hardswish(x * 1.5)

    cost = executed_graph_cost(_export(tmp_path, "hs", HS(), [1, 16, 8, 8]))
    # ORT rewrites HardSwish into an unnamed HardSigmoid + Mul; both run and both cost.
    assert [k.op_type for k in cost.kernels] == ["Mul", "HardSigmoid", "Mul"]



def test_executed_gemm_keeps_the_weights_ort_prepacked(tmp_path):
    import torch.nn as nn

    from edgekd.hardware.graph import executed_graph_cost

    # ONNX Runtime prepacks a Gemm's B at load and drops it from the profile; the kernel still reads it.
    head = nn.Sequential(nn.Flatten(), nn.Linear(256, 1000, bias=False))
    cost = executed_graph_cost(_export(tmp_path, "gemm", head, [1, 256]))
    gemm = [k for k in cost.kernels if k.op_class == "gemm"]
    assert len(gemm) == 1 and gemm[0].weight_bytes == 256 * 1000 * 4 and cost.weight_bytes == 256 * 1000 * 4


# ---- host facts: measured, not fitted -------------------------------------------------------------

def test_effective_cache_and_dram_come_from_the_bandwidth_sweep():
    from edgekd.hardware.hostfacts import cache_from_sweep

    sweep = {1.0: 90.0, 2.0: 95.0, 4.0: 80.0, 8.0: 70.0, 16.0: 60.0, 32.0: 30.0, 64.0: 22.0, 128.0: 20.0, 256.0: 20.0}
    cache, dram = cache_from_sweep(sweep)
    # Handover at the geometric mean of 95 and 20 GB/s (43.6): 16 MiB still reads above it, 32 MiB not.
    assert dram == 20.0 and cache == pytest.approx(16 * 1.048576)
    assert cache_from_sweep({1.0: 21.0, 256.0: 20.0}) == (None, 20.0)  # no cache visible: no streaming term


def test_a_slower_last_level_cache_comes_from_the_sweep_too():
    from edgekd.hardware.hostfacts import HostFacts, cache_from_sweep, llc_from_sweep

    # A fast 2 MiB private cache, a 64 MiB shared cache at twice DRAM's speed, then DRAM.
    sweep = {1.0: 90.0, 2.0: 56.0, 4.0: 30.0, 8.0: 28.0, 16.0: 28.0, 32.0: 29.0, 64.0: 29.0, 128.0: 20.0, 256.0: 15.0}
    cache, dram = cache_from_sweep(sweep)
    llc_mb, llc_gbs = llc_from_sweep(sweep, cache)
    assert cache == pytest.approx(2 * 1.048576) and llc_mb == pytest.approx(64 * 1.048576) and llc_gbs == 29.0
    facts = HostFacts(0.004, 0.0002, dram, cache, cache, 16, llc_mb, llc_gbs)
    assert facts.llc == (llc_mb, pytest.approx(29.0 / 15.0))
    # Where the fast cache is the last level, the hierarchy is that cache and DRAM.
    flat = {1.0: 90.0, 8.0: 85.0, 32.0: 80.0, 64.0: 21.0, 128.0: 20.0, 256.0: 20.0}
    cache, dram = cache_from_sweep(flat)
    assert llc_from_sweep(flat, cache) == (None, None)
    assert HostFacts(0.004, 0.0002, dram, cache, cache, 16).llc == (cache, 1.0)


def test_weights_stream_by_where_the_model_lives_and_what_hides_them():
    from edgekd.hardware.graph import GraphCost, Kernel
    from edgekd.hardware.traffic import streamed_weight_mb

    def kernel(name, op_class, flops, weight_mb, params):
        return Kernel(name=name, op_type="Conv", op_class=op_class, ops=["Conv"], flops=int(flops),
                      weight_bytes=int(weight_mb * 1e6), input_bytes=100_000, output_bytes=100_000,
                      output_shape=[1], params=int(params))

    conv = kernel("conv", "conv", 2 * 784 * 1e6 / 4, 1.0, 1e6 / 4)         # each weight used 784 times
    big = kernel("big", "conv", 2 * 49 * 9.4e6 / 4, 9.4, 9.4e6 / 4)         # reused, but overflows L2
    head = kernel("head", "gemm", 2 * 1.28e6, 5.12, 1.28e6)                 # batch-1 GEMM: each weight once

    def cost(*kernels, act_mb=1.0):
        return GraphCost(kernels=list(kernels), runtime="onnxruntime", precision="fp32", input_shape=[1],
                         params=0, flops=0, weight_bytes=sum(k.weight_bytes for k in kernels),
                         peak_activation_bytes=int(act_mb * 1e6), unknown_ops=[])

    llc = (64.0, 2.0)
    assert streamed_weight_mb(cost(conv, act_mb=0.5), 2.0, llc=llc, private_mb=2.0) == 0.0  # resident in L2
    # In the shared cache: the hidden conv costs nothing, the head and the L2-overflowing conv at 2x DRAM speed.
    assert streamed_weight_mb(cost(conv, big, head), 2.0, llc=llc, private_mb=2.0) == pytest.approx((9.4 + 5.12) / 2)
    # Beyond the shared cache: every weight from DRAM.
    assert streamed_weight_mb(cost(conv, big, head, act_mb=60), 2.0, llc=llc, private_mb=2.0) == pytest.approx(15.52)
    # No measured hierarchy (device profiles): every weight once the traffic overflows the cache.
    assert streamed_weight_mb(cost(conv, big, head), 2.0) == pytest.approx(15.52)


# ---- published measurements, shipped calibrations, intervals ---------------------------------------

def _table(**changes):
    row = {"model": "torchvision:resnet18", "input": "1x3x224x224", "latency_ms": 11.4, "source": "t2t"}
    data = {"target": "jetson-nano", "sources": {"t2t": {"url": "https://example.org/table", "where": "table 1",
                                                          "runtime": "tensorrt", "precision": "fp16"}},
            "measurements": [row]}
    for key, value in changes.items():
        where, _, name = key.partition("__")
        target = {"top": data, "row": row, "source": data["sources"]["t2t"]}[where]
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"row__latency_msec": 3.0}, r"unknown key 'latency_msec' in table.yaml measurements\[0\]; did you mean 'latency_ms'"),
    ({"row__latency_ms": None}, r"measurements\[0\] needs key 'latency_ms'"),
    ({"row__latency_ms": -1}, r"measurements\[0\] key 'latency_ms' must be a positive number"),
    ({"row__source": "paper"}, r"key 'source' names 'paper', which is not under sources"),
    ({"row__model": "resnet18"}, r"key 'model' must be torchvision:NAME or edgekd:NAME"),
    ({"row__input": "224x224xfoo"}, r"key 'input' must be a shape"),
    ({"source__runtime": "tensorflow"}, r"sources.t2t key 'runtime' must be one of"),
    ({"source__url": None}, r"sources.t2t needs key 'url'"),
    ({"source__precison": "fp16"}, r"unknown key 'precison'.*did you mean 'precision'"),
    ({"top__measurements": []}, r"needs key 'measurements'"),
    ({"source__clock_ghz": "1.8 GHz"}, r"sources.t2t key 'clock_ghz' must be the core clock in GHz"),
    ({"row__clock_ghz": 0}, r"measurements\[0\] key 'clock_ghz' must be the core clock in GHz"),
])
def test_measurement_tables_are_validated_on_load(changes, message):
    from edgekd.hardware.published import parse_table

    with pytest.raises(EdgeKDError, match=message) as err:
        parse_table(_table(**changes), "table.yaml")
    assert "\n" not in str(err.value)


def test_figures_measured_at_another_clock_are_costed_at_the_profiles():
    """A published figure taken at 1.8 GHz on a profile whose peak assumes 1.5 GHz: its clock-bound terms
    (compute, per-kernel, per-inference on a CPU runtime) are scaled by 1.5 / 1.8, its bytes moved are not;
    a GPU runtime's figures scale their compute only; a table giving clocks to a profile without one is refused."""
    from edgekd.hardware.fitting import clock_columns, scale_clock
    from edgekd.hardware.latency import DISPATCH, FIXED, N_FEATURES, STREAM, _class_offset
    from edgekd.hardware.published import _cost, parse_table

    rows = np.ones((3, N_FEATURES))
    out = scale_clock(rows, [None, 1.8, 1.5], 1.5)
    assert np.array_equal(out[0], rows[0]) and np.array_equal(out[2], rows[2])  # the profile's clock: as costed
    cpu = clock_columns(cpu=True)
    assert {_class_offset("conv"), _class_offset("conv") + 2, DISPATCH, FIXED} <= set(cpu)
    assert _class_offset("conv") + 1 not in cpu and STREAM not in cpu            # bytes: paced by the memory bus
    assert np.allclose(out[1, cpu], 1.5 / 1.8) and np.allclose(np.delete(out[1], cpu), 1.0)
    gpu = clock_columns(cpu=False)
    assert _class_offset("conv") in gpu and FIXED not in gpu and DISPATCH not in gpu

    pi4 = load_target("raspberry-pi-4")
    assert pi4.clock_ghz == 1.5
    table = parse_table(_table(source__runtime="ncnn", source__precision="fp32", source__threads=4,
                               source__clock_ghz=1.8, top__target="raspberry-pi-4"), "table.yaml")
    row = table.measurements[0]
    assert row.clock_ghz == 1.8
    at_18 = _cost(pi4, [row])[0]
    row.clock_ghz = None
    at_15 = _cost(pi4, [row])[0]
    assert at_18 @ np.ones(N_FEATURES) < at_15 @ np.ones(N_FEATURES)
    assert np.allclose(np.delete(at_18, cpu), np.delete(at_15, cpu)) and np.allclose(at_18[cpu], at_15[cpu] * 1.5 / 1.8)

    row.clock_ghz = 1.8
    with pytest.raises(EdgeKDError, match=r"give the clock they were measured at, but the jetson-nano profile gives none") as err:
        _cost(load_target("jetson-nano"), [row])
    assert "\n" not in str(err.value) and "conditions.clock_ghz" in err.value.hint


def test_shipped_measurement_tables_load_and_match_their_calibrations():
    import hashlib

    from edgekd.hardware.published import load_table
    from edgekd.hardware.targets import shipped_calibrations

    for path in sorted((REPO / "targets" / "measurements").glob("*.yaml")):
        table = load_table(path)
        target = load_target(table.target)
        assert table.sources and all(s.url.startswith("https://") for s in table.sources.values())
        shipped = json.loads((REPO / "targets" / "calibrations" / f"{table.target}.json").read_text())
        # The shipped coefficients were fitted on exactly this table: edit it, and `--ship` must run again.
        assert shipped["table_sha256"] == hashlib.sha256(path.read_text().encode()).hexdigest()
        # Figures on another thread count than the profile's were scaled with a fitted fraction, recorded.
        pf = shipped["parallel_fraction"]
        assert 0 < pf["value"] <= 1 and pf["origin"]
        if any(m.use and m.threads and m.threads != target.threads for m in table.measurements):
            assert pf["value"] < 1 and "fitted on" in pf["origin"]
        fitted = {(e["runtime"], e["precision"]): e for e in shipped_calibrations(table.target)}
        for (runtime, precision), rows in table.groups().items():
            if len(rows) >= 4:
                entry = fitted[(runtime, precision)]
                assert entry["n_measurements"] == len(rows) and entry["interval"]["low"] < 1 < entry["interval"]["high"]
            if len({m.threads or target.threads for m in rows}) > 1:  # several thread counts: the constant held
                assert fitted[(runtime, precision)]["coefficients"]["fixed_ms"] == pytest.approx(
                    target.inference_overhead_us / 1000)
                # ... and a thread scaling of this precision's own figures (FP32 and INT8 scale apart).
                own = fitted[(runtime, precision)]["parallel_fraction"]
                assert 0 < own["value"] <= 1 and f"{runtime}/{precision}" in own["origin"]
        if table.target == "raspberry-pi-5":
            fractions = {p: fitted[("ncnn", p)]["parallel_fraction"]["value"] for p in ("fp32", "int8")}
            assert fractions["fp32"] < fractions["int8"]
        assert target.published_measurements == sum(e["n_measurements"] for e in fitted.values())


def test_interval_is_learned_from_held_out_residuals():
    from edgekd.hardware.calibration import held_out_interval
    from edgekd.hardware.uncertainty import interval_from_ratios

    truth = _known_coefficients()
    costs = _synthetic_costs(12, seed=5)
    rows = np.array([features(c) for c in costs])
    noise = np.random.default_rng(0).lognormal(0.0, 0.08, len(costs))
    y = rows @ truth.vector() * noise

    def fit(r, t):
        return fit_coefficients(r, t, precision="fp32", prior=truth, prior_weight=0.5)[0]

    interval, held = held_out_interval(rows, y, fit, what="synthetic measurements")
    # Each held-out prediction is a fit on the other eleven, predicting the twelfth.
    for i in (0, 7):
        keep = np.arange(len(y)) != i
        assert held[i] == pytest.approx(rows[i] @ fit(rows[keep], y[keep]).vector())
    ratios = y / held
    logs = np.log(ratios)
    from scipy.stats import t

    half = t.ppf(0.95, len(y) - 1) * logs.std(ddof=1) * np.sqrt(1 + 1 / len(y))
    assert interval.n == 12 and interval.level == 0.9 and "leave-one-out" in interval.method
    assert interval.low == pytest.approx(np.exp(logs.mean() - half)) and interval.high == pytest.approx(np.exp(logs.mean() + half))
    assert interval.low < 1 < interval.high
    # Wider errors, wider interval; fewer held-out errors, wider too.
    assert interval_from_ratios(ratios ** 3, "x").high > interval.high
    assert interval_from_ratios(ratios[:4], "x").high - interval_from_ratios(ratios[:4], "x").low > 0
    assert interval_from_ratios([1.1], "x") is None


def test_leave_half_out_predicts_each_measurement_from_the_other_half():
    from edgekd.hardware.uncertainty import error_stats, leave_half_out

    seen = []

    def fit_predict(train):
        seen.append(list(train))
        return lambda test: np.array([100.0 + i + len(train) for i in test])  # depends on which half trained

    out = leave_half_out(9, fit_predict, splits=5, seed=3)
    # Five halvings, each fitted both ways: 10 fits, every measurement predicted once per halving.
    assert len(seen) == 10 and {len(s) for s in seen} == {4, 5}
    counts = np.bincount([i for i, _ in out["predictions"]], minlength=9)
    assert list(counts) == [5] * 9
    # A measurement is never predicted by a fit that saw it.
    for k, train in enumerate(seen):
        tested = out["predictions"][sum(9 - len(s) for s in seen[:k]):sum(9 - len(s) for s in seen[:k + 1])]
        assert not set(train) & {i for i, _ in tested}
    assert out == leave_half_out(9, fit_predict, splits=5, seed=3)  # deterministic for a seed
    stats = error_stats([105.0, 90.0, 130.0, 100.0], [100.0] * 4)
    assert stats == {"n": 4, "within10": 0.75, "within20": 0.75, "median_abs_pct_err": pytest.approx(7.5)}


def _interval_target(low, high):
    target = load_target("jetson-nano")
    from edgekd.hardware.latency import datasheet_coefficients

    target.shipped = [{"runtime": "tensorrt", "precision": "fp16", "n_measurements": 9,
                       "coefficients": datasheet_coefficients(target, "fp16").to_dict(),
                       "interval": {"low": low, "high": high, "level": 0.9, "n": 9, "method": "test"}}]
    return target


def test_safe_selection_picks_a_smaller_candidate_when_the_interval_says_so():
    narrow, wide = _interval_target(0.95, 1.05), _interval_target(0.8, 1.6)
    plain = select_width("cnn", WIDTHS, target=narrow, budget_ms=10.0, num_classes=10, input_shape=(1, 28, 28))
    ms = {c.width: c.predicted_ms for c in plain.candidates}
    budget = ms[2.0] * 1.1   # width 2 fits by its prediction, and by a narrow interval's upper end
    chosen = {}
    for name, target in (("narrow", narrow), ("wide", wide)):
        for safe in (False, True):
            sel = select_width("cnn", WIDTHS, target=target, budget_ms=budget, num_classes=10, input_shape=(1, 28, 28),
                               safe=safe)
            chosen[name, safe] = sel.chosen.width
            assert sel.safe is safe and sel.to_dict()["safe"] is safe
            c = sel.chosen
            assert c.predicted_low_ms < c.predicted_ms < c.predicted_high_ms
            assert (c.predicted_high_ms if safe else c.predicted_ms) <= budget
    assert chosen["narrow", False] == chosen["wide", False] == chosen["narrow", True] == 2.0
    # A 1.6x upper end puts width 2 over the budget: the safe selection takes a smaller student.
    assert chosen["wide", True] < 2.0
    with pytest.raises(EdgeKDError, match="upper end of its interval"):
        select_width("cnn", WIDTHS, target=wide, budget_ms=min(ms.values()) * 1.2, num_classes=10,
                     input_shape=(1, 28, 28), safe=True)


def test_safe_is_a_distill_option_and_resumes():
    from click.testing import CliRunner

    from edgekd.cli.distill import command, resolve_config
    from edgekd.config import RunConfig

    assert RunConfig().selection.safe is False
    ctx = command.make_context("distill", ["--safe", "--out", "run"])
    cfg = resolve_config(ctx, ctx.params)
    assert cfg.selection.safe and RunConfig.from_dict(cfg.to_dict()).selection.safe  # config.json keeps it
    assert "--safe" in CliRunner().invoke(command, ["--help"]).output


def test_predictions_carry_their_interval_in_predict_and_search(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli.predict import command as predict
    from edgekd.cli.search import command as search_cli

    path, _ = _residual_graph(tmp_path)
    res = CliRunner().invoke(predict, ["--target", "jetson-nano", "--onnx", str(path), "--input", "1x8x8x8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    iv = out["interval_ms"]
    assert iv["low"] < out["predicted_ms"] < iv["high"] and iv["level"] == 0.9 and "held-out" in iv["source"]
    res = CliRunner().invoke(predict, ["--target", "jetson-nano", "--onnx", str(path), "--input", "1x8x8x8"])
    assert "90% interval" in res.output
    res = CliRunner().invoke(search_cli, ["--target", "pixel-1", "--widths", "0.5,1", "--depths", "1", "--json"])
    assert res.exit_code == 0, res.output
    chosen = json.loads(res.output)["chosen"]
    assert chosen["predicted_low_ms"] < chosen["predicted_ms"] < chosen["predicted_high_ms"]
    # A runtime with no calibration on the device falls back to the datasheet, whose interval is wider.
    res = CliRunner().invoke(predict, ["--target", "raspberry-pi-4", "--onnx", str(path), "--input", "1x8x8x8", "--json"])
    ds = json.loads(res.output)
    assert ds["calibration"] == "datasheet" and "datasheet predictions of" in ds["interval_ms"]["source"]
    res = CliRunner().invoke(predict, ["--target", "raspberry-pi-4", "--runtime", "ncnn", "--precision", "fp32",
                                       "--onnx", str(path), "--input", "1x8x8x8", "--json"])
    assert json.loads(res.output)["calibration"].startswith("calibrated from 44 published measurements (ncnn)")


def test_measured_terms_do_not_count_as_fitted_and_the_host_fit_is_per_class():
    from edgekd.hardware.calibration import fit_rows
    from edgekd.hardware.latency import DISPATCH, FIXED

    truth = _known_coefficients()
    rows = np.array([features(c) for c in _synthetic_costs(38, seed=2)])
    y = rows @ truth.vector()
    host = load_target("host")
    free = sum(1 for j in np.flatnonzero(rows.sum(axis=0)) if j not in (FIXED, DISPATCH))
    assert 2 * free <= len(rows) < 2 * (free + 2)  # enough only when the held terms are not counted
    _, stats = fit_rows(host, rows, y, precision="fp32", fixed_terms={FIXED: truth.fixed_ms})
    assert stats["method"] == "per-class NNLS"
    assert fit_rows(host, rows[:10], y[:10], precision="fp32")[1]["method"] == "datasheet terms scaled"
    assert fit_rows(host, rows[:10], y[:10], precision="fp32", per_class=True)[1]["method"] == "per-class NNLS"


def test_a_host_calibration_from_an_older_cost_model_is_set_aside(tmp_path, monkeypatch):
    from edgekd.hardware.calibration import affordable_probes, fit_host
    from edgekd.hardware.hostfacts import HostFacts
    from edgekd.hardware.targets import calibration_path

    monkeypatch.setenv("EDGEKD_CONFIG_DIR", str(tmp_path / "config"))
    target = load_target("host")
    probes = affordable_probes(8, 0, target.runtime, 50.0)
    facts = HostFacts(0.004, 0.0002, 15.0, 2.0, 2.0, target.channel_multiple, 64.0, 29.0)
    # Latencies from a known linear rule: what is checked is where the calibration goes and when it is used.
    ms = [0.01 + 0.005 * i for i in range(len(probes))]
    fit_host(target, [p for _, p in probes], [[1, s["in_channels"], s["resolution"], s["resolution"]] for s, _ in probes],
             ms, facts=facts)
    path = calibration_path("host")
    saved = json.loads(path.read_text())
    assert saved["coefficients"]["llc_mb"] == 64.0 and saved["coefficients"]["llc_speedup"] == pytest.approx(29 / 15)
    assert load_target("host").coefficients is not None
    saved["cost_revision"] = 1
    path.write_text(json.dumps(saved))
    stale = load_target("host")
    assert stale.coefficients is None and "re-run `edgekd profile --target host`" in stale.calibration
