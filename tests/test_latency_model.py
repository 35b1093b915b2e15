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


def test_1x1_convs_are_costed_with_the_profiles_own_pointwise_efficiency(tmp_path):
    from edgekd.hardware.graph import graph_cost
    from edgekd.hardware.latency import datasheet_coefficients, kernel_class
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

    from edgekd.hardware.fitting import cost_rows
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
    records = leave_one_source_out(table)
    assert [r["source"] for r in records] == ["a"] * 4 + ["b"]
    # "a" has only one other figure to learn from: the datasheet predicts it, as it would ship.
    target = load_target("raspberry-pi-4")
    feats, _ = cost_rows(target, [measurement_graph(m) for m in table.measurements[:1]], [[1, 3, 32, 32]],
                         precision="fp32", runtime="onnxruntime")
    assert records[0]["predicted_by"].startswith("datasheet")
    assert records[0]["predicted_ms"] == pytest.approx(float(feats[0] @ datasheet_coefficients(target, "fp32").vector()))
    assert records[4]["predicted_by"] == "fit on 4 rows of a"
    for r in records:
        assert r["ratio"] == pytest.approx(r["measured_ms"] / r["predicted_ms"])
        assert sum(r["shares"].values()) == pytest.approx(1.0, abs=1e-6) and np.isfinite(r["predicted_ms"])


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
