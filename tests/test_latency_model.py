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
