"""benchmarks/frontier.py's plan: (a) is the pick `edgekd distill --student auto` makes, the others follow their rules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from edgekd.hardware.targets import load_target

ROOT = Path(__file__).resolve().parents[1]


def _frontier():
    spec = importlib.util.spec_from_file_location("frontier_bench", ROOT / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("frontier_bench", module)
    spec.loader.exec_module(module)
    return module


def test_the_plan_trains_edgekds_own_pick_and_the_alternatives_by_their_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    fr = _frontier()
    target = load_target("raspberry-pi-5")
    families = "mobilenet_v2,resnet,cnn"
    everything = fr.edgekd_selection(1e9, target, (3, 64, 64), families)
    rows = [fr._row(c) for c in everything.candidates]
    budget = sorted(c["predicted_ms"] for c in rows if c["arch"] == "mobilenet_v2")[3] * 1.01
    sel = fr.edgekd_selection(budget, target, (3, 64, 64), families)
    # What the distill pipeline's select stage runs: the target's precision, every family's own widths and depths.
    assert sel.precisions == [target.precision] and {c.family for c in sel.candidates} == {"mobilenet_v2", "resnet", "cnn"}
    rate = 1e8
    row = fr.plan({budget: sel}, rate)[budget]
    (a, a_kd), (b, b_kd), (d, d_kd), (e, e_kd) = row["a"], row["b"], row["d"], row["e"]
    assert a == fr._row(sel.chosen) and a_kd and b == a and not b_kd
    fitting_mnv2 = [c for c in rows if c["arch"] == "mobilenet_v2" and c["predicted_ms"] <= budget]
    assert d["arch"] == "mobilenet_v2" and d["width"] == max(c["width"] for c in fitting_mnv2) and not d_kd
    assert e_kd and e["flops"] == max(c["flops"] for c in rows if c["flops"] <= budget * rate)
    # A model's key tells distilled from scratch and one depth from another.
    assert fr._key(a, True, 0) != fr._key(a, False, 0) != fr._key({**a, "depth": 7}, False, 0)


def test_the_photos_are_colour_images_whose_colour_says_nothing_of_the_class():
    fr = _frontier()
    grey = np.zeros((40, 28, 28), np.uint8)
    grey[:, 8:20, 8:20] = 255
    rgb = fr.colourise(grey, 64, seed=0)
    assert rgb.shape == (40, 3, 64, 64) and rgb.dtype == np.uint8
    # Backgrounds differ between images of the same (here: identical) garment.
    assert np.std(rgb[:, :, 0, 0].astype(float), axis=0).min() > 20
