"""Latency model: module boundaries, per-op-class priors, published tables, extrapolated predictions."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]


def _edgekd_imports(path: Path) -> set[str]:
    """Every edgekd module a file imports, at module or function level."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekd"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("edgekd")}
    return out


def test_published_tables_and_calibration_do_not_import_each_other():
    hw = REPO / "edgekd" / "hardware"
    assert "edgekd.hardware.calibration" not in _edgekd_imports(hw / "published.py")
    assert "edgekd.hardware.published" not in _edgekd_imports(hw / "fitting.py")
    assert "edgekd.hardware.calibration" not in _edgekd_imports(hw / "fitting.py")
    # Hardware checks latencies with the same bound as reports, without importing the report layer.
    for path in hw.glob("*.py"):
        assert not any(m.startswith("edgekd.report") for m in _edgekd_imports(path)), path.name


def _one_result(tmp_path, p50):
    from edgekd.hardware.graph import export_onnx
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    export_onnx(model, [1, 1, 8, 8], tmp_path / "m.onnx")
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"device": {"runtime": "tensorrt"}, "results": [
        {"model": "m.onnx", "input_shape": [1, 1, 8, 8], "status": "ok", "latency_ms": {"p50": p50}}]}))
    return path


@pytest.mark.parametrize("p50", [1e308, 86_400_001.0])
def test_calibrate_refuses_a_latency_over_a_day(tmp_path, p50):
    from edgekd.hardware.calibration import calibrate_from_measurements

    with pytest.raises(EdgeKDError, match=r"results\[0\].latency_ms.p50 .* at most a day"):
        calibrate_from_measurements("jetson-nano", _one_result(tmp_path, p50), save=False)


def test_a_published_row_over_a_day_is_refused():
    from edgekd.hardware.published import parse_table

    table = {"target": "jetson-nano", "sources": {"s": {"url": "u", "where": "w", "runtime": "tensorrt",
                                                        "precision": "fp16"}},
             "measurements": [{"model": "torchvision:resnet18", "input": "1x3x224x224", "latency_ms": 1e308,
                               "source": "s"}]}
    with pytest.raises(EdgeKDError, match=r"measurements\[0\] key 'latency_ms' .* at most a day"):
        parse_table(table, "t.yaml")
    table["measurements"][0]["latency_ms"] = 11.4
    assert parse_table(table, "t.yaml").measurements[0].latency_ms == 11.4


# --- per-op-class priors: no class borrows another's fitted efficiency -----------------------------

def _tiny_graph(tmp_path, name, depthwise: bool, pointwise: bool = False, res: int = 16):
    import torch

    from edgekd.hardware.graph import export_onnx

    layers = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()]
    if depthwise:
        layers += [torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU()]
    if pointwise:
        layers += [torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU()]
    path = tmp_path / f"{name}.onnx"
    export_onnx(torch.nn.Sequential(*layers).eval(), [1, 3, res, res], path)
    return path


def test_a_scaled_fit_leaves_a_class_no_measurement_exercises_at_its_own_datasheet_rate():
    """Dense-conv measurements 3x faster than the datasheet speed up dense convs, not depthwise ones."""
    import numpy as np

    from edgekd.hardware.latency import FIXED, _class_offset, datasheet_coefficients, fit_scaled
    from edgekd.hardware.targets import load_target

    prior = datasheet_coefficients(load_target("jetson-nano"), "fp16")
    theta0 = prior.vector()
    rows, y = [], []
    for mflops in (500.0, 1000.0, 2000.0, 4000.0, 8000.0):
        row = np.zeros_like(theta0)
        row[_class_offset("conv")] = mflops
        row[FIXED] = 1.0
        rows.append(row)
        y.append(mflops * theta0[_class_offset("conv")] / 3 + theta0[FIXED])
    coeffs, stats = fit_scaled(np.array(rows), np.array(y), prior=prior, prior_weight=0.01)
    assert coeffs.classes["conv"]["ms_per_mflop"] == pytest.approx(prior.classes["conv"]["ms_per_mflop"] / 3, rel=0.05)
    for c in ("dwconv", "conv_pointwise", "gemm", "pool", "elementwise"):
        assert coeffs.classes[c]["ms_per_mflop"] == pytest.approx(prior.classes[c]["ms_per_mflop"], rel=1e-6), c
    assert stats["scales"]["ms_per_mflop:dwconv"] == pytest.approx(1.0)


def test_a_scaled_fit_never_makes_a_term_free_to_explain_a_few_figures():
    """Two figures that disagree (one mostly compute and faster than its datasheet, one half memory and
    slower) are fitted best, under a ridge on the scales, with compute free (scale 0) and memory 3.7x
    dearer, and then a compute-bound network costs nothing. The prior is on the log of each scale: no
    term the figures exercise reaches zero, and reciprocal figures give reciprocal scales."""
    import numpy as np

    from edgekd.hardware.latency import _class_offset, datasheet_coefficients, fit_scaled
    from edgekd.hardware.targets import load_target

    prior = datasheet_coefficients(load_target("jetson-nano"), "fp16")
    theta0 = prior.vector()
    conv, mb = _class_offset("conv"), _class_offset("conv") + 1
    rows, y = [], []
    for compute_ms, memory_ms, measured in ((9.0, 1.0, 3.5), (5.0, 5.0, 20.0)):
        row = np.zeros_like(theta0)
        row[conv], row[mb] = compute_ms / theta0[conv], memory_ms / theta0[mb]
        rows.append(row)
        y.append(measured)
    coeffs, stats = fit_scaled(np.array(rows), np.array(y), prior=prior, prior_weight=0.05)
    assert stats["scales"]["ms_per_mflop:conv"] > 0.01 and coeffs.classes["conv"]["ms_per_mflop"] > 0
    one = np.zeros_like(theta0)
    one[conv] = 1000.0
    faster, _ = fit_scaled(one[None], [0.5 * float(one @ theta0)], prior=prior, prior_weight=0.05)
    slower, _ = fit_scaled(one[None], [2.0 * float(one @ theta0)], prior=prior, prior_weight=0.05)
    assert faster.classes["conv"]["ms_per_mflop"] < theta0[conv] < slower.classes["conv"]["ms_per_mflop"]
    assert faster.classes["conv"]["ms_per_mflop"] * slower.classes["conv"]["ms_per_mflop"] == pytest.approx(
        theta0[conv] ** 2, rel=1e-3)


def test_figures_on_several_thread_counts_hold_the_per_inference_term():
    """Thread scaling moves compute only, so one-thread and four-thread figures of networks that scale
    unevenly are fitted best with a large per-inference constant: a part that does not speed up with threads,
    paid whole by the smallest network too. Such figures hold the constant at the profile's estimate; a
    table on one thread count still fits it."""
    import numpy as np

    from edgekd.hardware.fitting import fit_rows, per_inference_held, scale_threads
    from edgekd.hardware.latency import FIXED, _class_offset, datasheet_coefficients, fit_scaled
    from edgekd.hardware.targets import load_target

    pi4 = load_target("raspberry-pi-4")
    assert per_inference_held(pi4, [None, 4, 4]) is None
    assert per_inference_held(pi4, [1, None]) == {FIXED: pytest.approx(pi4.inference_overhead_us / 1000)}
    conv = _class_offset("conv")
    rows, y, threads = [], [], []
    # Per network: a parallel part (MFLOPs) and a part that does not scale with threads (ms).
    for mflops, serial_ms in ((300, 15.0), (900, 15.0), (2000, 15.0), (4000, 15.0), (8000, 15.0), (15000, 15.0)):
        for t in (1, 4):
            threads.append(t)
            y.append(mflops * 0.02 * (1 if t == 1 else 0.3) + serial_ms)
            rows.append((mflops, t))
    A = np.zeros((len(rows), len(datasheet_coefficients(pi4, "fp32").vector())))
    for i, (mflops, _) in enumerate(rows):
        A[i, conv], A[i, FIXED] = mflops, 1.0
    A = scale_threads(A, threads, pi4.threads, 0.8)
    prior = datasheet_coefficients(pi4, "fp32")
    free = fit_scaled(A, y, prior=prior, prior_weight=0.01)[0]
    held = fit_scaled(A, y, prior=prior, prior_weight=0.01, held=per_inference_held(pi4, threads))[0]
    assert free.fixed_ms > 100 * pi4.inference_overhead_us / 1000     # the serial parts, booked per inference
    assert held.fixed_ms == pytest.approx(pi4.inference_overhead_us / 1000)
    # fit_rows holds them in either of its fits (the scaled one, for a handful of figures, ignored them before).
    for per_class in (False, True):
        via = fit_rows(pi4, A, y, precision="fp32", fixed_terms=per_inference_held(pi4, threads), per_class=per_class)
        assert via[0].fixed_ms == pytest.approx(held.fixed_ms) and "fixed" not in via[1].get("scales", {})


def test_1x1_convs_are_costed_with_the_profiles_own_pointwise_efficiency(tmp_path):
    from edgekd.hardware.graph import graph_cost
    from edgekd.hardware.kernelclass import kernel_class
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.targets import load_target

    cost = graph_cost(_tiny_graph(tmp_path, "pw", depthwise=True, pointwise=True), runtime="tensorrt", precision="fp16")
    assert [kernel_class(k) for k in cost.kernels if k.op_class in ("conv", "dwconv")] == \
        ["conv", "dwconv", "conv_pointwise"]
    nano = load_target("jetson-nano")
    assert nano.efficiency["pointwise"] < nano.efficiency["conv"]   # memory-bound on a GPU
    ds = datasheet_coefficients(nano, "fp16")
    peak = nano.peak_gflops["fp16"]
    for cls, eff in (("conv_pointwise", "pointwise"), ("dwconv", "dwconv"), ("conv", "conv")):
        assert ds.classes[cls]["ms_per_mflop"] == pytest.approx(1 / (peak * nano.efficiency[eff]))
    # A CPU profile that gives no pointwise figure runs 1x1 convs as the same GEMM as dense ones.
    pi = load_target("raspberry-pi-4")
    assert pi.efficiency["pointwise"] == pi.efficiency["conv"]


def test_an_unknown_efficiency_class_is_a_one_line_error(tmp_path):
    import yaml

    from edgekd.hardware.targets import load_target

    data = yaml.safe_load((REPO / "targets" / "jetson-nano.yaml").read_text())
    data["efficiency"]["pointwsie"] = 0.1
    path = tmp_path / "nano.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgeKDError, match="pointwsie"):
        load_target(str(path))


# --- extrapolation: a prediction outside what the calibration saw says so and widens -------------

def _choice(coverage, interval=None):
    from edgekd.hardware.latency import CoefficientChoice, datasheet_coefficients
    from edgekd.hardware.targets import load_target
    from edgekd.hardware.uncertainty import Interval

    return CoefficientChoice(datasheet_coefficients(load_target("jetson-nano"), "fp16"), "calibrated from 4",
                             interval or Interval(0.9, 1.1, 0.9, 4, "leave-one-out"), coverage)


def test_a_prediction_outside_the_calibration_is_extrapolated_with_a_wider_interval(tmp_path):
    from edgekd.hardware.graph import graph_cost
    from edgekd.hardware.latency import extrapolation, kernel_ms

    cost = graph_cost(_tiny_graph(tmp_path, "dw", depthwise=True), runtime="tensorrt", precision="fp16")
    choice = _choice({"mflops": [100.0, 10000.0], "classes": ["conv"]})
    per = kernel_ms(cost, choice.coefficients)
    total = sum(per) + choice.coefficients.fixed_ms
    reasons, interval = extrapolation(cost, per, total, choice, "fp16")
    assert any("dwconv kernels" in r and "absent" in r for r in reasons)
    assert any("outside the calibration's 100-1e+04" in r for r in reasons)
    assert interval.low < 0.9 and interval.high > 1.1 and "widened" in interval.method
    # The same network inside what the calibration saw: no flag, the calibration's own interval.
    mflops = cost.flops / 1e6
    inside = _choice({"mflops": [mflops / 1.5, mflops * 1.5], "classes": ["conv", "dwconv", "elementwise"]})
    assert extrapolation(cost, per, total, inside, "fp16") == ([], inside.interval)


def test_predictions_carry_the_flag_and_safe_judges_by_the_widened_upper_end(tmp_path):
    from edgekd.hardware.latency import predict_latency_ms
    from edgekd.hardware.targets import load_target

    nano = load_target("jetson-nano")
    path = _tiny_graph(tmp_path, "tiny", depthwise=True)
    pred = predict_latency_ms(path, nano)
    assert pred.extrapolated and pred.to_dict()["extrapolated"] is True
    assert any("outside the calibration" in r for r in pred.to_dict()["extrapolation"])
    calibrated = nano.calibration_for("tensorrt", "fp16")["interval"]
    assert pred.high_ms > pred.total_ms * calibrated["high"] * 1.5
    # A precision the profile has no calibration for, where another has one, says so.
    fp32 = predict_latency_ms(path, nano, precision="fp32")
    assert any("fp32 is not calibrated (only fp16)" in r for r in fp32.extrapolation)


def test_leave_one_source_out_predicts_each_source_from_the_others_only():
    import numpy as np

    from edgekd.hardware.fitting import cost_rows, fit_rows
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.published import leave_one_source_out, measurement_graph, parse_table
    from edgekd.hardware.targets import load_target

    src = {"url": "https://example.org/t", "where": "table 1", "runtime": "onnxruntime", "precision": "fp32", "threads": 4}
    rows = [{"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": w, "num_classes": 10}, "input": f"1x3x{r}x{r}",
             "latency_ms": ms, "source": "a"} for w, r, ms in ((0.25, 32, 0.4), (0.5, 32, 0.9), (0.25, 64, 1.3),
                                                             (0.5, 64, 3.1))]
    rows.append({"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": 0.75, "num_classes": 10},
                 "input": "1x3x48x48", "latency_ms": 2.5, "source": "b"})
    table = parse_table({"target": "raspberry-pi-4", "sources": {"a": src, "b": src}, "measurements": rows}, "t.yaml")
    target = load_target("raspberry-pi-4")
    feats, _ = cost_rows(target, [measurement_graph(m) for m in table.measurements],
                         [m.input_shape for m in table.measurements], precision="fp32", runtime="onnxruntime")
    y = np.array([m.latency_ms for m in table.measurements])
    records = leave_one_source_out(table)
    assert [r["source"] for r in records] == ["a"] * 4 + ["b"]
    # "a" has one other figure to learn from: a fit on it alone (the datasheet scaled), as the profile would ship.
    assert records[0]["predicted_by"] == "fit on 1 rows of b"
    alone = fit_rows(target, feats[4:], y[4:], precision="fp32", prior_weight=0.05)[0]
    assert records[0]["predicted_ms"] == pytest.approx(float(feats[0] @ alone.vector()))
    assert records[4]["predicted_by"] == "fit on 4 rows of a"
    for r in records:
        assert r["ratio"] == pytest.approx(r["measured_ms"] / r["predicted_ms"])
        assert sum(r["shares"].values()) == pytest.approx(1.0, abs=1e-6) and np.isfinite(r["predicted_ms"])
    # A source with nothing else beside it: the datasheet predicts it.
    only_a = parse_table({"target": "raspberry-pi-4", "sources": {"a": src}, "measurements": rows[:4]}, "t.yaml")
    first = leave_one_source_out(only_a)[0]
    assert first["predicted_by"].startswith("datasheet")
    assert first["predicted_ms"] == pytest.approx(float(feats[0] @ datasheet_coefficients(target, "fp32").vector()))


def test_a_shared_compute_scale_covers_only_the_groups_the_measurements_exercise():
    import numpy as np

    from edgekd.hardware.latency import FIXED, _class_offset, datasheet_coefficients, fit_scaled
    from edgekd.hardware.targets import load_target

    prior = datasheet_coefficients(load_target("jetson-nano"), "fp16")
    theta0 = prior.vector()
    rows, y = [], []
    for conv, gemm in ((500.0, 10.0), (1000.0, 40.0), (2000.0, 5.0), (4000.0, 80.0), (8000.0, 20.0)):
        row = np.zeros_like(theta0)
        row[_class_offset("conv")], row[_class_offset("gemm")], row[FIXED] = conv, gemm, 1.0
        rows.append(row)
        y.append((conv * theta0[_class_offset("conv")] + gemm * theta0[_class_offset("gemm")]) / 2 + theta0[FIXED])
    coeffs, stats = fit_scaled(np.array(rows), np.array(y), prior=prior, prior_weight=0.01, shared_compute=True)
    assert stats["scales"]["ms_per_mflop:conv+gemm"] == pytest.approx(0.5, rel=0.05)
    assert stats["scales"]["ms_per_mflop:dwconv"] == pytest.approx(1.0)
    assert coeffs.classes["dwconv"]["ms_per_mflop"] == pytest.approx(prior.classes["dwconv"]["ms_per_mflop"])


def test_an_unidentified_class_borrows_its_kinds_achieved_efficiency_not_another_classes():
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.priors import Donor, kind_efficiency
    from edgekd.hardware.targets import load_target

    def rates(peak, **eff):
        return {g: 1 / (peak * e) for g, e in eff.items()}

    ncnn = Donor("raspberry-pi-4", "ncnn", "fp32", 48.0, rates(48.0, conv=0.8, dwconv=0.2, pointwise=0.6), ("conv", "dwconv"))
    ort = Donor("pixel-1", "onnxruntime", "fp32", 17.2, rates(17.2, conv=0.5, dwconv=0.05), ("conv", "dwconv"))
    gpu = Donor("jetson-nano", "tensorrt", "fp16", 472.0, rates(472.0, dwconv=0.01, pointwise=0.7), ("dwconv", "pointwise"))
    donors = [ncnn, ort, gpu]
    eff, origin = kind_efficiency("onnxruntime", "fp32", donors)
    # The same runtime's calibration decides the classes it identified; a rate outside a donor's coverage
    # (ncnn's pointwise) and another kind's (the GPU's) are never borrowed.
    assert eff == pytest.approx({"conv": 0.5, "dwconv": 0.05})
    assert origin["conv"].startswith("same runtime and precision: pixel-1")
    # No same-runtime donor: the geometric mean of every donor of the kind at that precision, then any precision.
    assert kind_efficiency("xnnpack", "fp32", donors)[0]["conv"] == pytest.approx((0.8 * 0.5) ** 0.5)
    assert kind_efficiency("onnxruntime", "int8", donors)[1]["dwconv"].startswith("any precision")
    assert kind_efficiency("tensorrt", "fp32", donors)[0] == pytest.approx({"dwconv": 0.01, "pointwise": 0.7})
    # ExecuTorch runs XNNPACK's kernels: an XNNPACK calibration is its same-runtime donor.
    xnn = Donor("pixel-1", "xnnpack", "fp32", 17.2, rates(17.2, conv=0.9), ("conv",))
    assert kind_efficiency("executorch", "fp32", donors + [xnn])[0]["conv"] == pytest.approx(0.9)
    # The prior: borrowed classes at the borrowed efficiency, the others at the profile's own figures.
    pi5 = load_target("raspberry-pi-5")
    peak, own = pi5.peak_gflops["fp32"], datasheet_coefficients(pi5, "fp32")
    prior = datasheet_coefficients(pi5, "fp32", efficiency=eff)
    assert prior.classes["dwconv"]["ms_per_mflop"] == pytest.approx(1 / (peak * 0.05))
    assert prior.classes["conv"]["ms_per_mflop"] == pytest.approx(1 / (peak * 0.5))
    for c in ("conv_pointwise", "pool", "gemm"):
        assert prior.classes[c] == own.classes[c], c


def test_a_device_with_one_figure_is_predicted_with_another_devices_fit_of_the_same_runtime():
    """Two boards, one runtime: the board with a single figure borrows the achieved efficiencies the other
    board's four figures identify, and predicts its figure where its own (wrong) estimates cannot."""
    from edgekd.hardware.fitting import cost_rows
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.published import leave_one_source_out, measurement_graph, parse_table
    from edgekd.hardware.targets import load_target

    truth = {"conv": 0.9, "pointwise": 0.9, "dwconv": 0.4}   # what ncnn achieves on either board here

    def table(name, source, shapes):
        target = load_target(name)
        rows = [{"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": w, "num_classes": 10}, "input": f"1x3x{r}x{r}",
                 "latency_ms": 1.0, "source": source} for w, r in shapes]
        t = parse_table({"target": name, "sources": {source: {"url": "https://example.org/t", "where": "table 1",
                         "runtime": "ncnn", "precision": "fp32", "threads": 4}}, "measurements": rows}, "t.yaml")
        feats, _ = cost_rows(target, [measurement_graph(m) for m in t.measurements], [m.input_shape for m in t.measurements],
                             precision="fp32", runtime="ncnn")
        for m, f in zip(t.measurements, feats):
            m.latency_ms = float(f @ datasheet_coefficients(target, "fp32", efficiency=truth).vector())
        return t

    pi5 = table("raspberry-pi-5", "a", [(0.25, 32), (0.5, 32), (0.25, 64), (0.5, 64), (0.75, 48)])
    pi4 = table("raspberry-pi-4", "b", [(0.75, 64)])
    alone = leave_one_source_out(pi4, others=[pi5])[0]
    [borrowed] = leave_one_source_out(pi4, others=[pi5], borrow=True)
    assert borrowed["predicted_by"].startswith("datasheet, ") and "borrowed" in borrowed["predicted_by"]
    assert set(borrowed["borrowed"]) >= {"pointwise", "dwconv"}   # MobileNet v1: its stem conv is < 5% of any figure
    assert all(o.startswith("same runtime and precision: raspberry-pi-5 ncnn/fp32") for o in borrowed["borrowed"].values())
    assert abs(borrowed["ratio"] - 1) < 0.1 < abs(alone["ratio"] - 1)


def test_a_runtime_with_fewer_than_four_figures_ships_a_fit_that_keeps_the_datasheet_interval():
    """Two figures 3x faster than the datasheet: the shipped calibration runs 3x faster, with no held-out
    errors of its own, so its predictions carry the datasheet's interval."""
    from edgekd.hardware.fitting import cost_rows
    from edgekd.hardware.latency import coefficients_for, datasheet_coefficients, datasheet_interval
    from edgekd.hardware.published import calibrate_table, measurement_graph, parse_table
    from edgekd.hardware.targets import load_target

    target = load_target("raspberry-pi-4")
    src = {"url": "https://example.org/t", "where": "table 1", "runtime": "ncnn", "precision": "fp32", "threads": 4}
    rows = [{"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": w, "num_classes": 10}, "input": f"1x3x{r}x{r}",
             "latency_ms": 1.0, "source": "a"} for w, r in ((0.25, 32), (0.5, 64))]
    table = parse_table({"target": "raspberry-pi-4", "sources": {"a": src}, "measurements": rows}, "t.yaml")
    feats, _ = cost_rows(target, [measurement_graph(m) for m in table.measurements],
                         [m.input_shape for m in table.measurements], precision="fp32", runtime="ncnn")
    datasheet = feats @ datasheet_coefficients(target, "fp32").vector()
    for m, d in zip(table.measurements, datasheet):
        m.latency_ms = float(d / 3)
    [entry] = calibrate_table(table)["calibrations"]
    assert entry["n_measurements"] == 2 and entry["interval"] is None and entry["leave_one_out"] is None
    for r in entry["rows"]:
        assert r["fitted_ms"] == pytest.approx(r["measured_ms"], rel=0.15)
    target.shipped = [entry]
    choice = coefficients_for(target, "fp32", "ncnn")
    assert choice.label == "calibrated from 2 published measurements (ncnn)"
    assert choice.interval == datasheet_interval() and choice.interval is not None


def test_a_figure_measured_on_fewer_threads_has_its_compute_scaled_by_amdahls_speed_up():
    import numpy as np

    from edgekd.hardware.latency import FIXED, _class_offset
    from edgekd.hardware.fitting import thread_speedup
    from edgekd.hardware.published import measurement_rows, parse_table
    from edgekd.hardware.targets import load_target

    pi5 = load_target("raspberry-pi-5")
    assert pi5.threads == 4
    src = {"url": "https://example.org/t", "where": "table 1", "runtime": "ncnn", "precision": "fp32"}
    row = {"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": 0.25, "num_classes": 10}, "input": "1x3x32x32",
           "latency_ms": 1.0, "source": "a"}
    table = parse_table({"target": "raspberry-pi-5", "sources": {"a": src},
                         "measurements": [row, {**row, "threads": 4}, {**row, "threads": 1}]}, "t.yaml")
    conv, dw = _class_offset("conv_pointwise"), _class_offset("dwconv")
    unknown, four, one = measurement_rows(pi5, table.measurements)
    assert np.array_equal(unknown, four)   # no thread count given: the profile's conditions
    assert one[conv] == pytest.approx(4 * four[conv]) and one[dw] == pytest.approx(4 * four[dw])   # linear
    _, four, one = measurement_rows(pi5, table.measurements, parallel_fraction=0.6)
    assert thread_speedup(4, 0.6) == pytest.approx(1 / 0.55) and thread_speedup(1, 0.6) == pytest.approx(1.0)
    assert one[conv] == pytest.approx(four[conv] / 0.55) and one[dw] == pytest.approx(four[dw] / 0.55)
    # Bytes moved, kernels launched and the per-inference term do not depend on the thread count.
    for j in (conv + 1, conv + 2, dw + 1, FIXED):
        assert one[j] == four[j]


def _thread_pairs_table(target: str, fraction: float, threads=(4, 1)):
    """Figures the datasheet makes for four networks on each of ``threads``, scaled with ``fraction``."""
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.published import measurement_rows, parse_table
    from edgekd.hardware.targets import load_target

    profile = load_target(target)
    src = {"url": "https://example.org/t", "where": "table 1", "runtime": "ncnn", "precision": "fp32"}
    rows = [{"model": "edgekd:mobilenet_v1", "kwargs": {"width_mult": w, "num_classes": 10}, "input": f"1x3x{s}x{s}",
             "latency_ms": 1.0, "source": f"t{t}", "threads": t}
            for w, s in ((0.25, 32), (0.5, 32), (0.25, 48), (0.5, 64)) for t in threads]
    table = parse_table({"target": target, "sources": {f"t{t}": src for t in threads}, "measurements": rows}, "t.yaml")
    truth = measurement_rows(profile, table.measurements, fraction) @ datasheet_coefficients(profile, "fp32").vector()
    for m, y in zip(table.measurements, truth):
        m.latency_ms = float(y)
    return table


def test_the_parallel_fraction_is_recovered_from_figures_on_two_thread_counts():
    from edgekd.hardware.published import fit_parallel_fraction, parallel_fraction_for, parse_table

    # Figures made by the datasheet under a fraction of 0.6: the fit must find it, not linear scaling.
    pi5 = _thread_pairs_table("raspberry-pi-5", 0.6)
    found = fit_parallel_fraction([pi5])
    assert found["parallel_fraction"] == pytest.approx(0.6, abs=0.03)
    assert found["groups"] == ["raspberry-pi-5 ncnn/fp32"] and found["rows"] == 8
    assert found["sse"] < 0.1 * found["linear_sse"]
    assert parallel_fraction_for(pi5, [])[0] == pytest.approx(0.6, abs=0.03)
    # A precision with no pairs of its own takes the table's; one with pairs, its own.
    assert fit_parallel_fraction([pi5], precision="int8") is None
    assert parallel_fraction_for(pi5, [], precision="int8")[0] == pytest.approx(0.6, abs=0.03)
    assert parallel_fraction_for(pi5, [], precision="fp32")[1].endswith("(raspberry-pi-5 ncnn/fp32) on several thread counts")
    # Its one-thread source left out, a table has no pairs of its own: the other tables' pairs say.
    pi4 = _thread_pairs_table("raspberry-pi-4", 0.8)
    p, origin = parallel_fraction_for(pi5, [pi4], leave_out="t1")
    assert p == pytest.approx(0.8, abs=0.03) and "raspberry-pi-4 ncnn/fp32" in origin
    assert parallel_fraction_for(pi5, [], leave_out="t1") == (1.0, "linear: no published figures on several thread "
                                                                   "counts to fit it on")
    four_only = parse_table({"target": "raspberry-pi-5", "sources": {"t4": {"url": "https://example.org/t",
                             "where": "t", "runtime": "ncnn", "precision": "fp32"}},
                             "measurements": [{**m, "threads": 4} for m in [
                                 {"model": "edgekd:mobilenet_v1", "input": "1x3x32x32", "latency_ms": 1.0, "source": "t4"}]]},
                            "t.yaml")
    assert fit_parallel_fraction([four_only]) is None
    assert parallel_fraction_for(four_only, [pi4])[0] == 1.0   # nothing on another thread count to scale
