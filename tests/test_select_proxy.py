"""The accuracy proxy that ranks candidates across families, and the teacher costed as a candidate."""

from __future__ import annotations

import pytest

from edgekd.hardware.select import (ERROR_EXPONENT, PROXY_RESOLUTION, accuracy_proxy, capability, choose, evaluate_candidate,
                                    scaled_top1, select_student, student_families, teacher_as_candidate)
from edgekd.hardware.targets import load_target
from edgekd.models import families, family_traits

# The TF-slim MobileNetV2 checkpoints (Sandler et al. 2018; tensorflow/models research/slim/nets/mobilenet):
# (width, image size, MMACs, ImageNet top-1).
MOBILENET_V2 = [
    (1.4, 224, 582, 75.0), (1.3, 224, 509, 74.4), (1.0, 224, 300, 71.8), (1.0, 192, 221, 70.7),
    (1.0, 160, 154, 68.8), (1.0, 128, 99, 65.3), (1.0, 96, 56, 60.3), (0.75, 224, 209, 69.8),
    (0.75, 192, 153, 68.7), (0.75, 160, 107, 66.4), (0.75, 128, 69, 63.2), (0.75, 96, 39, 58.8),
    (0.5, 224, 97, 65.4), (0.5, 192, 71, 63.9), (0.5, 160, 50, 61.0), (0.5, 128, 32, 57.7), (0.5, 96, 18, 51.2),
    (0.35, 224, 59, 60.3), (0.35, 192, 43, 58.2), (0.35, 160, 30, 55.7), (0.35, 128, 20, 50.8),
    (0.35, 96, 11, 45.5)]
# MnasNet-A1 (Tan et al. 2019; tensorflow/tpu models/official/mnasnet): (MMACs, top-1), 224/192/160 px.
MNASNET_A1 = [(591.5, 77.2), (315.2, 75.2), (226.7, 73.3), (105.2, 68.9), (63.2, 64.1), (435.1, 76.1),
              (232.0, 74.0), (166.9, 72.1), (77.6, 67.2), (46.8, 62.4), (302.8, 74.8), (161.6, 72.0),
              (116.4, 70.1), (54.4, 64.9)]
PI5 = "raspberry-pi-5"


def test_the_proxy_follows_the_published_width_and_resolution_tables():
    # MobileNetV2 anchored at torchvision's figure (0.30 GMACs): every TF-slim checkpoint, 11 to 582 MMACs,
    # within 2 points; a fixed 3.5 points per doubling of FLOPs was 9.6 points high at 0.35 width, 96 px.
    for width, _, mmacs, top1 in MOBILENET_V2:
        assert accuracy_proxy("mobilenet_v2", 2 * mmacs * 1e6, width=width) == pytest.approx(top1, abs=2.0)
    # The same exponent on another family's table, anchored at its own width 1, 224 px.
    for mmacs, top1 in MNASNET_A1:
        assert scaled_top1(75.2, 315.2, mmacs) == pytest.approx(top1, abs=2.0)
    assert ERROR_EXPONENT == 0.2


@pytest.mark.parametrize("family", [f for f in families() if family_traits(f).reference])
def test_the_proxy_is_the_published_top1_at_the_published_configuration(family, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    # The references count multiply-adds; edgekd's graph costing counts 2 FLOPs for each.
    cand = evaluate_candidate(family, target=load_target(PI5), num_classes=1000, input_shape=(3, 224, 224),
                              width=1.0, precision="fp32")
    assert cand.accuracy_proxy == pytest.approx(family_traits(family).reference[0], abs=1.0)


def test_no_credit_beyond_the_widest_published_width(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    target = load_target(PI5)
    hi = family_traits("mobilenet_v2").published_widths[1]
    cands = {w: evaluate_candidate("mobilenet_v2", target=target, num_classes=10, input_shape=(3, 64, 64), width=w)
             for w in (1.0, hi, 2.0, 3.0)}
    assert cands[1.0].accuracy_proxy < cands[hi].accuracy_proxy - 2   # inside the range, compute still counts
    assert cands[3.0].flops > 3 * cands[hi].flops
    # Wider than published: credited as that width (its FLOPs scaled by width^2; layers that do not scale with
    # the width, such as the stem, make the credit fall slightly below it).
    for w in (2.0, 3.0):
        assert cands[hi].accuracy_proxy - 1.0 < cands[w].accuracy_proxy <= cands[hi].accuracy_proxy + PROXY_RESOLUTION
    # With every width fitting, the pick is the widest published width (the old rule took width 3).
    assert choose(list(cands.values())).width == hi
    assert choose([cands[2.0], cands[3.0]]).width == 2.0


def test_families_without_a_published_figure_rank_after_every_family_with_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    # --student auto searches every registered family, cnn and mlp included, on a 64-px RGB input ...
    assert {"cnn", "mlp"} <= set(student_families("auto"))
    assert family_traits("cnn").reference is None and family_traits("mlp").reference is None
    kw = dict(target=PI5, num_classes=10, input_shape=(3, 64, 64), widths=[0.25, 3.0], depths=[1],
              precisions=["int8"])
    sel = select_student("cnn,mlp,mobilenet_v3_small", budget_ms=1e6, **kw)
    biggest = max(sel.candidates, key=lambda c: c.flops)
    assert biggest.family in ("cnn", "mlp") and biggest.accuracy_proxy is None
    # ... but a family with no published figure is chosen only when no family with one fits.
    assert sel.chosen.family == "mobilenet_v3_small"
    known = [c for c in sel.candidates if c.accuracy_proxy is not None]
    assert all(capability(k) > capability(u) for k in known for u in sel.candidates if u.accuracy_proxy is None)
    fastest_known = min(c.predicted_ms for c in known)
    only_unknown = [c for c in sel.candidates if c.accuracy_proxy is None and c.predicted_ms < fastest_known]
    if only_unknown:
        tight = select_student("cnn,mlp,mobilenet_v3_small", budget_ms=fastest_known * 0.99, **kw)
        assert tight.chosen.accuracy_proxy is None
        assert tight.chosen.flops == max(c.flops for c in only_unknown)


def test_teacher_as_candidate_says_whether_the_teacher_itself_fits():
    from edgekd.models import create

    teacher = create("resnet", num_classes=10, in_channels=3, width=0.25, image_size=32).train()
    loose = teacher_as_candidate(teacher, target=PI5, budget_ms=1e6, input_shape=(3, 32, 32))
    assert loose.fits and loose.family == "teacher" and loose.precision == load_target(PI5).precision
    assert loose.predicted_ms > 0 and loose.flops > 0 and loose.params > 0 and loose.image_size == 32
    assert teacher.training   # left as it was
    tight = teacher_as_candidate(teacher, target=PI5, budget_ms=loose.predicted_ms * 0.5, input_shape=(3, 32, 32))
    assert not tight.fits and tight.predicted_ms == pytest.approx(loose.predicted_ms)
    fp32 = teacher_as_candidate(teacher, target=PI5, budget_ms=1e6, input_shape=(3, 32, 32), precision="fp32")
    assert fp32.precision == "fp32" and fp32.predicted_ms != pytest.approx(loose.predicted_ms)
