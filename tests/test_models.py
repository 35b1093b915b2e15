"""edgekd.models: the width-scaled cnn family, specs, and safetensors checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgekd.errors import EdgeKDError
from edgekd.models import DEFAULT_WIDTHS, MODELS, ModelSpec, count_params, create, load_model, save_model


@pytest.mark.parametrize("width", DEFAULT_WIDTHS)
def test_cnn_widths_forward(width):
    m = create("cnn", num_classes=10, in_channels=1, width=width).eval()
    feats, logits = m.forward_features(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert [f.shape[-1] for f in feats] == [28, 14, 7]
    assert [f.shape[1] for f in feats] == [max(4, round(c * width)) for c in (16, 32, 64)]


def test_params_grow_with_width_and_depth():
    sizes = [count_params(create("cnn", num_classes=10, in_channels=1, width=w)) for w in DEFAULT_WIDTHS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert count_params(create("cnn", num_classes=10, in_channels=1, depth=2)) > sizes[DEFAULT_WIDTHS.index(1.0)]


def test_rgb_and_other_resolutions():
    m = create("cnn", num_classes=3, in_channels=3, width=0.5).eval()
    assert m(torch.zeros(1, 3, 32, 40)).shape == (1, 3)


@pytest.mark.parametrize("kw, pattern", [({"width": 0}, "width"), ({"depth": 0}, "depth"), ({"arch": "cnm"}, "did you mean 'cnn'")])
def test_bad_model_args(kw, pattern):
    args = {"arch": "cnn", "num_classes": 10, "in_channels": 1} | kw
    with pytest.raises(EdgeKDError, match=pattern):
        create(args.pop("arch"), **args)


def test_save_load_roundtrip(tmp_path):
    spec = ModelSpec("cnn", 10, 1, width=0.5, depth=2, extra={"dropout": 0.1})
    torch.manual_seed(0)
    model = spec.build().eval()
    path = save_model(tmp_path / "m.safetensors", model, spec, {"accuracy": 0.97})
    loaded, loaded_spec, meta = load_model(path)
    assert loaded_spec == spec and meta == {"accuracy": 0.97} and not loaded.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_load_corrupt_and_wrong_kind(tmp_path):
    spec = ModelSpec("cnn", 10, 1, width=0.25)
    path = save_model(tmp_path / "m.safetensors", spec.build(), spec)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    for bad in (truncated, tmp_path / "text.safetensors"):
        if bad.name == "text.safetensors":
            bad.write_text("hello, not weights")
        with pytest.raises(EdgeKDError, match="not a readable safetensors") as err:
            load_model(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(EdgeKDError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_pickle_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    evil = tmp_path / "teacher.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(EdgeKDError):
        load_model(evil)
    assert not marker.exists()


def test_weights_for_another_width_are_refused(tmp_path):
    spec = ModelSpec("cnn", 10, 1, width=0.5)
    path = save_model(tmp_path / "m.safetensors", spec.build(), spec)
    with pytest.raises(EdgeKDError, match="does not match architecture cnn"):
        load_model(path, spec=ModelSpec("cnn", 10, 1, width=1.0))


def test_bad_spec_in_header(tmp_path):
    with pytest.raises(EdgeKDError, match="invalid model spec"):
        ModelSpec.from_dict({"arch": "cnn", "num_classes": 10, "in_channels": 1, "colour": "red"})


def test_registry():
    assert "cnn" in MODELS


def test_mlp_family_roundtrip(tmp_path):
    spec = ModelSpec("mlp", 10, 1, width=0.25, extra={"image_size": 28})
    model = spec.build().eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_params(model) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    loaded, loaded_spec, _ = load_model(save_model(tmp_path / "mlp.safetensors", model, spec))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
