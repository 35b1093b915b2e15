"""Family traits, the search across families (--student auto) and its pick."""

from __future__ import annotations

import pytest

from edgekd.models import (DEFAULT_WIDTHS, FamilyTraits, ModelSpec, count_params, create, create_kwargs, families, family_spec,
                           family_traits, size_kwargs)


def test_every_family_declares_traits_with_its_registration():
    assert {"cnn", "mlp", "mobilenet_v3_small", "resnet"} <= set(families())
    for name in families():
        traits = family_traits(name)
        assert isinstance(traits, FamilyTraits) and traits.traceable
        assert traits.depths and traits.widths
    assert family_traits("resnet").has_depth_multiplier and not family_traits("mobilenet_v2").has_depth_multiplier
    assert not family_traits("cnn").graph_depends_on_image_size and family_traits("cnn").default_input == (1, 28, 28)
    assert family_traits("mlp").flat_input and not family_traits("mlp").feature_stages
    # A user's factory file is not imported to ask: the default grid, costed through its ONNX export.
    assert family_traits("x.py:factory").widths == DEFAULT_WIDTHS and not family_traits("x.py:factory").traceable


def test_family_spec_builds_each_family_for_the_data_shape():
    # The spec carries what each family needs: cnn nothing, mlp its fan-in (H, W), the others the stem's size.
    assert size_kwargs("cnn", (1, 28, 28)) == {"image_size": None, "extra": {}}
    assert size_kwargs("mlp", (1, 20, 24)) == {"image_size": None, "extra": {"image_size": [20, 24]}}
    assert size_kwargs("mobilenet_v2", (3, 96, 96)) == {"image_size": 96, "extra": {}}
    spec = family_spec("mlp", 5, (1, 12, 12), width=0.05)
    assert spec == ModelSpec("mlp", 5, 1, width=0.05, extra={"image_size": [12, 12]})
    assert spec.build()(__import__("torch").zeros(2, 1, 12, 12)).shape == (2, 5)
    # A small input gives the stride-1 stem through the spec's image_size (more pixels reach the last stage).
    small = count_params(create("resnet", num_classes=3, in_channels=3, width=0.125, **create_kwargs("resnet", (3, 32, 32))))
    assert small == count_params(family_spec("resnet", 3, (3, 32, 32), width=0.125).build())


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_search_default_input_comes_from_the_family(arch):
    from click.testing import CliRunner

    from edgekd.cli.search import command

    result = CliRunner().invoke(command, ["--target", "jetson-nano", "--student", arch, "--widths", "0.25",
                                          "--depths", "1", "--budget-ms", "1000", "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.output)["chosen"]["image_size"] == 28


def test_select_student_searches_families_and_precisions_and_picks_the_most_capable(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    from edgekd.hardware.select import capability, select_student

    sel = select_student("mobilenet_v3_small,resnet", target="raspberry-pi-5", budget_ms=1e6, num_classes=4,
                         input_shape=(3, 32, 32), widths=[0.25, 0.5], depths=[1], image_sizes=[32])
    assert sel.families == ["mobilenet_v3_small", "resnet"] and sel.precisions == ["fp32", "fp16", "int8"]
    assert len(sel.candidates) == 2 * 2 * 3   # 2 families x 2 widths (depth 1) x 3 precisions
    assert {c.family for c in sel.candidates} == {"mobilenet_v3_small", "resnet"}
    assert sel.chosen is max(sel.candidates, key=capability) and sel.family == sel.chosen.family
    # The front: fastest first, each more capable than the one before; the pick is on it (everything fits).
    assert [c.predicted_ms for c in sel.front] == sorted(c.predicted_ms for c in sel.front)
    assert all(capability(a) < capability(b) for a, b in zip(sel.front, sel.front[1:]))
    assert sel.chosen in sel.front
    d = sel.to_dict()
    assert d["family"] == sel.family and len(d["front"]) == len(sel.front)
    assert {"family", "precision", "accuracy_proxy", "extrapolated"} <= set(d["chosen"])
    # A tight budget moves the pick to a faster candidate, still the most capable of those that fit.
    budget = sorted(c.predicted_ms for c in sel.candidates)[3]
    tight = select_student(["mobilenet_v3_small", "resnet"], target="raspberry-pi-5", budget_ms=budget, num_classes=4,
                           input_shape=(3, 32, 32), widths=[0.25, 0.5], depths=[1], image_sizes=[32])
    fitting = [c for c in tight.candidates if c.predicted_ms <= budget]
    assert tight.chosen.predicted_ms <= budget and tight.chosen is max(fitting, key=capability)


def test_accuracy_proxy_ranks_families_by_their_published_figures():
    from edgekd.hardware.select import accuracy_proxy

    # At equal FLOPs a family with the better published accuracy per FLOP ranks higher; more FLOPs rank higher.
    assert accuracy_proxy("efficientnet_b0", 2e8) > accuracy_proxy("resnet", 2e8)
    assert accuracy_proxy("mobilenet_v2", 4e8) > accuracy_proxy("mobilenet_v2", 2e8)
    assert accuracy_proxy("mobilenet_v2", 2e8, "int8") < accuracy_proxy("mobilenet_v2", 2e8, "fp16")
    assert accuracy_proxy("mobilenet_v2", 6e8) == pytest.approx(71.878)   # 0.30 GMACs: 2 FLOPs per multiply-add
    assert accuracy_proxy("cnn", 2e8) is None


def test_student_families_auto_and_lists():
    from edgekd.errors import EdgeKDError
    from edgekd.hardware.select import student_families

    assert student_families("auto") == families()
    assert student_families("resnet, mlp,resnet") == ["resnet", "mlp"]
    with pytest.raises(EdgeKDError, match="mobilenet_v3_smal"):
        student_families("mobilenet_v3_smal")


def test_search_cli_student_list_prints_the_front_across_families(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from edgekd.cli.search import command

    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path))
    args = ["--target", "jetson-nano", "--student", "cnn,mlp", "--widths", "0.25,0.5", "--depths", "1",
            "--input", "1x16x16", "--budget-ms", "1000"]
    out = CliRunner().invoke(command, args + ["--json"])
    assert out.exit_code == 0, out.output
    sel = json.loads(out.output)
    assert sel["families"] == ["cnn", "mlp"] and sel["precisions"] == ["fp32", "fp16"]
    assert sel["family"] in ("cnn", "mlp") and sel["front"]
    table = CliRunner().invoke(command, args)
    assert table.exit_code == 0 and "2 families x fp32/fp16" in table.output and "chosen: " in table.output
