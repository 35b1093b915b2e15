"""Family traits, the search across families (--student auto) and its pick."""

from __future__ import annotations

import pytest

from edgekd.models import (FamilyTraits, ModelSpec, count_params, create, create_kwargs, families, family_spec,
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
    assert family_traits("x.py:factory").widths == (1.0,) and not family_traits("x.py:factory").traceable


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
                                          "--depths", "1", "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.output)["chosen"]["image_size"] == 28
