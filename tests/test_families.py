"""Real architectures: every student family, teacher sources and their bad inputs, hook-based feature pairs,
search over width x image size, and --compare baselines."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision

from edgekd.errors import EdgeKDError
from edgekd.models import MODELS, ModelSpec, count_params, create, load_model, save_model

FAMILIES = MODELS.names()
CONV_FAMILIES = [f for f in FAMILIES if f not in ("mlp",)]

import timm  # noqa: F401,E402  (an optional extra for users; the test extra installs it, so timm:NAME is tested)


def _arches():
    return FAMILIES + ["timm:mobilenetv3_small_100"]


# ---------------------------------------------------------------------------------------------
# Student families


@pytest.mark.parametrize("arch", _arches())
def test_family_builds_at_two_widths_and_sizes_and_trains_a_step(arch):
    """Grey 28 px and RGB 64 px, widths 0.25 and 0.5: logits of the right shape, params grow with width,
    and one optimizer step changes the weights and lowers nothing to NaN."""
    params = {}
    for width in (0.25, 0.5):
        for channels, size in ((1, 28), (3, 64)):
            torch.manual_seed(0)
            model = create(arch, num_classes=7, in_channels=channels, width=width, image_size=size)
            x, y = torch.randn(4, channels, size, size), torch.tensor([0, 1, 2, 3])
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            before = [p.detach().clone() for p in model.parameters()]
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
            assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
            model.eval()
            assert model(x).shape == (4, 7)
            params[(width, channels)] = count_params(model)
    assert params[(0.25, 1)] < params[(0.5, 1)]


@pytest.mark.parametrize("arch", [f for f in CONV_FAMILIES if f != "cnn"])
def test_small_inputs_keep_a_spatial_map(arch):
    """At 32 px the stem's stride drops to 1, so the last stage is 2x2 or more instead of 1x1."""
    from edgekd.distill.features import find_stages

    small = create(arch, num_classes=10, in_channels=1, width=0.5, image_size=32)
    last = find_stages(small, torch.zeros(2, 1, 32, 32))[-1]
    assert last.shape[1] >= 2, last
    big = create(arch, num_classes=10, in_channels=3, width=0.5, image_size=224)
    assert find_stages(big, torch.zeros(1, 3, 224, 224))[-1].shape[1] == 7


def test_efficientnet_width_and_depth_multipliers_use_torchvision_configs():
    base = create("efficientnet_b0", num_classes=10, in_channels=3)
    ref = torchvision.models.efficientnet_b0(num_classes=10)
    assert count_params(base) == count_params(ref)
    deeper = create("efficientnet_b0", num_classes=10, in_channels=3, depth=1.4)
    wider = create("efficientnet_b0", num_classes=10, in_channels=3, width=1.2)
    n_blocks = lambda m: sum(len(stage) for stage in m.features[1:-1])  # noqa: E731
    assert n_blocks(deeper) > n_blocks(base) and n_blocks(wider) == n_blocks(base)
    assert count_params(wider) > count_params(base)


def test_resnet_width_one_is_resnet18_and_regnet_scales():
    assert count_params(create("resnet", num_classes=1000, in_channels=3)) == count_params(torchvision.models.resnet18())
    assert count_params(create("regnet", num_classes=1000, in_channels=3)) == count_params(torchvision.models.regnet_y_400mf())
    assert count_params(create("regnet", num_classes=10, in_channels=3, width=0.5)) < count_params(
        create("regnet", num_classes=10, in_channels=3))


def test_bad_family_arguments():
    with pytest.raises(EdgeKDError, match="did you mean 'mobilenet_v3_small'"):
        create("mobilenet_v3_smal", num_classes=10, in_channels=1)
    with pytest.raises(EdgeKDError, match="no depth multiplier"):
        create("mobilenet_v2", num_classes=10, in_channels=1, depth=2)
    with pytest.raises(EdgeKDError, match="whole number"):
        create("cnn", num_classes=10, in_channels=1, depth=1.5)


def test_timm_width_through_channel_multiplier_and_refusals():
    half = create("timm:mobilenetv3_small_100", num_classes=10, in_channels=1, width=0.5)
    full = create("timm:mobilenetv3_small_100", num_classes=10, in_channels=1)
    assert count_params(half) < count_params(full)
    assert half(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(EdgeKDError, match="no channel multiplier"):
        create("timm:resnet18", num_classes=10, in_channels=3, width=0.5)
    with pytest.raises(EdgeKDError, match="did you mean 'mobilenetv3_small_100'"):
        create("timm:mobilenetv3_smal_100", num_classes=10, in_channels=3)


def test_timm_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("no timm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(EdgeKDError, match=r"pip install 'edgekd\[timm\]'"):
        create("timm:mobilenetv3_small_100", num_classes=10, in_channels=3)


def test_factory_student_takes_width(tmp_path):
    src = tmp_path / "nets.py"
    src.write_text("import torch.nn as nn\n"
                   "def build(width=1.0, num_classes=10, in_channels=3):\n"
                   "    c = max(4, int(16 * width))\n"
                   "    return nn.Sequential(nn.Conv2d(in_channels, c, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
                   "                         nn.Flatten(), nn.Linear(c, num_classes))\n"
                   "def no_width():\n    return nn.Linear(2, 2)\n")
    m = create(f"{src}:build", num_classes=5, in_channels=1, width=0.5)
    assert m(torch.zeros(2, 1, 16, 16)).shape == (2, 5) and m[0].out_channels == 8
    with pytest.raises(EdgeKDError, match="takes no width"):
        create(f"{src}:no_width", num_classes=5, in_channels=1)
    # A checkpoint naming a factory never makes edgekd import it on its own.
    spec = ModelSpec(f"{src}:build", 5, 1, width=0.5)
    path = save_model(tmp_path / "s.safetensors", m, spec)
    with pytest.raises(EdgeKDError, match="does not import on its own"):
        load_model(path)
    assert load_model(path, trust_code=True)[1] == spec


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet"])
def test_spec_roundtrip_keeps_image_size(tmp_path, arch):
    spec = ModelSpec(arch, 10, 1, width=0.5, image_size=32)
    torch.manual_seed(0)
    model = spec.build().eval()
    loaded, loaded_spec, _ = load_model(save_model(tmp_path / "m.safetensors", model, spec))
    x = torch.randn(2, 1, 32, 32)
    assert loaded_spec == spec and torch.equal(model(x), loaded(x))
    assert "image_size" not in ModelSpec("cnn", 10, 1).to_dict()  # older specs hash as before


def test_student_weights_transfer_loads_what_fits_and_adapts_a_grey_stem():
    from edgekd.models.adapt import transfer_weights

    torch.manual_seed(1)
    imagenet = torchvision.models.mobilenet_v3_small().state_dict()  # RGB stem, 1000 classes
    student = create("mobilenet_v3_small", num_classes=10, in_channels=1, image_size=224)
    loaded, total, skipped = transfer_weights(student, imagenet)
    assert skipped == ["classifier.3.weight", "classifier.3.bias"]
    assert loaded == total - 2
    assert torch.allclose(student.features[0][0].weight, imagenet["features.0.0.weight"].sum(1, keepdim=True))
    with pytest.raises(EdgeKDError, match="no tensor"):
        transfer_weights(create("cnn", num_classes=10, in_channels=1), imagenet)


@pytest.mark.slow
@pytest.mark.parametrize("arch", _arches())
def test_family_exports_to_onnx_with_parity(tmp_path, arch):
    import onnxruntime as ort

    from edgekd.hardware.graph import export_onnx

    torch.manual_seed(0)
    model = create(arch, num_classes=10, in_channels=1, width=0.5, image_size=32).eval()
    path = export_onnx(model, (1, 1, 32, 32), tmp_path / "m.onnx")
    x = torch.randn(1, 1, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# Teacher sources


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory, mnist_arrays):
    """300/100 MNIST digits as 3-channel 32 px images (an .npz), loaded as splits."""
    from edgekd.data import load_data

    x_train, y_train, x_test, y_test = mnist_arrays

    def rgb(x):
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        return np.repeat(x[:, None], 3, axis=1)

    path = tmp_path_factory.mktemp("rgb") / "rgb32.npz"
    np.savez(path, x_train=rgb(x_train[:300]), y_train=y_train[:300], x_test=rgb(x_test[:100]), y_test=y_test[:100])
    return load_data(path, calib_size=32)


@pytest.fixture(scope="module")
def grey28(mnist_arrays, tmp_path_factory):
    from edgekd.data import load_data

    x_train, y_train, x_test, y_test = mnist_arrays
    path = tmp_path_factory.mktemp("grey") / "grey.npz"
    np.savez(path, x_train=x_train[:300], y_train=y_train[:300], x_test=x_test[:100], y_test=y_test[:100])
    return load_data(path, calib_size=32)


def _plain_accuracy(model, splits):
    from edgekd.data import normalize

    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(normalize(splits.test.x, splits.mean, splits.std)))
    return float((logits.argmax(1).numpy() == splits.test.y).mean())


def test_torchvision_teacher_from_checkpoint_dict_and_safetensors(tmp_path, rgb32):
    from safetensors.torch import save_file

    from edgekd.distill import get_teacher

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    for weights in ("r18.pth", "r18.safetensors"):
        teacher, spec, info = get_teacher(rgb32, teacher_path="torchvision:resnet18",
                                          teacher_weights=str(tmp_path / weights), progress=False)
        assert spec.arch == "torchvision:resnet18" and spec.num_classes == 10  # inferred from fc.weight
        assert info["accuracy"] == _plain_accuracy(net, rgb32)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(teacher(x), net(x))


def test_rgb_teacher_on_grey_data_repeats_the_channel(tmp_path, grey28):
    from edgekd.distill import get_teacher

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    teacher, spec, info = get_teacher(grey28, teacher_path="torchvision:resnet18",
                                      teacher_weights=str(tmp_path / "r18.pt"), progress=False)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(teacher(x), net(x.repeat(1, 3, 1, 1)))
    rebuilt, _, _ = load_model(save_model(tmp_path / "t.safetensors", teacher, spec))  # saved and rebuilt as is
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x.repeat(1, 3, 1, 1)))


def test_factory_and_onnx_teachers(tmp_path, rgb32):
    from edgekd.distill import get_teacher
    from edgekd.hardware.graph import export_onnx

    src = tmp_path / "teach.py"
    src.write_text("import torch, torchvision\n"
                   "def build(num_classes=10):\n"
                   "    torch.manual_seed(3)\n"
                   "    return torchvision.models.resnet18(num_classes=num_classes)\n")
    teacher, spec, info = get_teacher(rgb32, teacher_path=f"{src}:build", progress=False)
    assert spec is None and info["format"] == "factory"
    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=10).eval()
    assert info["accuracy"] == _plain_accuracy(net, rgb32)
    onnx_path = export_onnx(net, (1, 3, 32, 32), tmp_path / "teacher.onnx")
    teacher, spec, info = get_teacher(rgb32, teacher_path=str(onnx_path), progress=False)
    assert spec is None and abs(info["accuracy"] - _plain_accuracy(net, rgb32)) <= 0.01


def test_timm_teacher_with_weights(tmp_path, rgb32):
    import timm

    from edgekd.distill import get_teacher

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "t.pth")
    _, spec, info = get_teacher(rgb32, teacher_path="timm:mobilenetv3_small_100",
                                teacher_weights=str(tmp_path / "t.pth"), progress=False)
    assert spec.num_classes == 10 and info["accuracy"] == _plain_accuracy(net, rgb32)


def _evil(path, marker):
    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    return path


@pytest.fixture(scope="module")
def bad_teachers(tmp_path_factory):
    """(source, weights) per bad input, written once."""
    from edgekd.hardware.graph import export_onnx

    d = tmp_path_factory.mktemp("bad-teachers")
    _save(torchvision.models.resnet18(num_classes=10), d / "r18.pth")
    wide = torchvision.models.resnet18(num_classes=10)
    wide.conv1 = torch.nn.Conv2d(3, 64, 5, 2, 2, bias=False)
    return d, {
        "unknown-torchvision": ("torchvision:resnet81", d / "r18.pth"),
        "unknown-timm": ("timm:mobilenetv3_smal_100", d / "r18.pth"),
        "other-arch": ("torchvision:resnet18", _save(torchvision.models.resnet34(num_classes=10), d / "r34.pth")),
        "classes": ("torchvision:resnet18", _save(torchvision.models.resnet18(num_classes=7), d / "r7.pth")),
        "shape": ("torchvision:resnet18", _save(wide, d / "conv5.pth")),
        "pickle": ("torchvision:resnet18", _evil(d / "evil.pth", d / "pwned")),
        "no-weights": ("torchvision:resnet18", None),
        "onnx-classes": (str(export_onnx(create("cnn", num_classes=7, in_channels=3, width=0.25).eval(),
                                         (1, 3, 32, 32), d / "t7.onnx")), None),
        "missing": ("teacher.safetensors", None),
    }


@pytest.mark.parametrize("case, pattern", [
    ("unknown-torchvision", "unknown torchvision model 'resnet81'; did you mean 'resnet18'"),
    ("unknown-timm", "did you mean 'mobilenetv3_small_100'"),
    ("other-arch", "first: layer1.2.conv1.weight"),
    ("classes", "predicts 7 classes but the data has 10"),
    ("shape", "first: conv1.weight"),
    ("pickle", "pickle that would run code"),
    ("no-weights", "needs --teacher-weights"),
    ("onnx-classes", "predicts 7 classes"),
    ("missing", "does not exist"),
])
def test_bad_teacher_inputs_are_one_line(rgb32, bad_teachers, case, pattern):
    from edgekd.distill import get_teacher

    folder, sources = bad_teachers
    source, weights = sources[case]
    with pytest.raises(EdgeKDError, match=pattern) as err:
        get_teacher(rgb32, teacher_path=source, teacher_weights=str(weights) if weights else None, progress=False)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert not (folder / "pwned").exists()


def _save(model, path):
    torch.save(model.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------
# Feature pairs between unrelated architectures


def test_resnet_teacher_and_mobilenet_student_pair_by_stride():
    from edgekd.distill.features import pair_stages

    teacher = torchvision.models.resnet18(num_classes=10)
    student = create("mobilenet_v3_small", num_classes=10, in_channels=3, width=0.5, image_size=224)
    pairs = pair_stages(student, teacher, torch.zeros(2, 3, 224, 224))
    assert pairs.describe() == ["student.features.0:teacher.relu", "student.features.1:teacher.layer1",
                                "student.features.3:teacher.layer2", "student.features.8:teacher.layer3",
                                "student.features.12:teacher.layer4"]
    explicit = pair_stages(student, teacher, torch.zeros(2, 3, 224, 224),
                           explicit="student.features.6:teacher.layer2, features.12:layer4")
    assert explicit.describe() == ["student.features.6:teacher.layer2", "student.features.12:teacher.layer4"]
    assert explicit.student_shapes[0][0] != explicit.teacher_shapes[0][0]  # channels differ: the adapters bridge them
    with pytest.raises(EdgeKDError, match=r"teacher module 'layer9' is not a module; teacher stages: relu .*layer4"):
        pair_stages(student, teacher, torch.zeros(2, 3, 224, 224), explicit="features.6:layer9")
    with pytest.raises(EdgeKDError, match="does not output a feature map"):
        pair_stages(student, teacher, torch.zeros(2, 3, 224, 224), explicit="features.6:fc")
    with pytest.raises(EdgeKDError, match="no stage with a spatial feature map"):
        pair_stages(create("mlp", num_classes=10, in_channels=3, image_size=32), teacher, torch.zeros(2, 3, 32, 32))


def test_feature_losses_train_across_architectures(tmp_path, rgb32):
    loss = "kd+fitnet:0.5+at:0.5+rkd:0.1"
    from edgekd.distill import TrainConfig, train

    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    student = create("mobilenet_v3_small", num_classes=10, in_channels=3, width=0.5, image_size=32)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, threads=1, loss=loss)
    result = train(student, teacher, rgb32, cfg, ckpt_dir=tmp_path, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    # hooks are gone after training: nothing left on the modules that export would run
    assert not any(m._forward_hooks for m in student.modules())
    assert not any(m._forward_hooks for m in teacher.modules())


def test_onnx_teacher_refuses_feature_losses(tmp_path, rgb32):
    from edgekd.distill import TrainConfig, get_teacher, train
    from edgekd.hardware.graph import export_onnx

    path = export_onnx(torchvision.models.resnet18(num_classes=10).eval(), (1, 3, 32, 32), tmp_path / "t.onnx")
    teacher, _, _ = get_teacher(rgb32, teacher_path=str(path), progress=False)
    student = create("mobilenet_v3_small", num_classes=10, in_channels=3, width=0.5, image_size=32)
    with pytest.raises(EdgeKDError, match="exposes no intermediate features"):
        train(student, teacher, rgb32, TrainConfig(epochs=1, loss="kd+at"), ckpt_dir=tmp_path / "c", progress=False)
    # logits alone train, from the cached teacher logits
    result = train(student, teacher, rgb32, TrainConfig(epochs=1, batch_size=32, threads=1), ckpt_dir=tmp_path / "k",
                   progress=False)
    assert result.epochs_run == 1


# ---------------------------------------------------------------------------------------------
# Search over width x image size


@pytest.mark.slow
def test_search_json_lists_candidates_with_the_distill_prediction():
    from edgekd.hardware import select_width

    cmd = [sys.executable, "-m", "edgekd", "search", "--target", "raspberry-pi-4", "--student", "mobilenet_v3_small",
           "--image-sizes", "32,64", "--widths", "0.5,1", "--budget-ms", "1000", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cands = out["candidates"]
    assert len(cands) == 4
    for c in cands:
        assert {"width", "image_size", "params", "flops", "predicted_ms", "fits"} <= set(c)
    assert out["chosen"]["flops"] == max(c["flops"] for c in cands if c["fits"])
    # the same numbers distill's selection computes for the same candidate
    sel = select_width("mobilenet_v3_small", (0.5,), target="raspberry-pi-4", budget_ms=1000, num_classes=10,
                       input_shape=(3, 224, 224), image_sizes=[64])
    twin = next(c for c in cands if c["width"] == 0.5 and c["image_size"] == 64)
    assert sel.chosen.predicted_ms == pytest.approx(twin["predicted_ms"]) and sel.chosen.flops == twin["flops"]


def test_selection_prefers_most_flops_among_fitting():
    from edgekd.hardware.select import Candidate, choose

    def cand(w, s, flops, ms):
        return Candidate(width=w, depth=1, resolution=None, params=0, flops=flops, predicted_ms=ms, fits=True,
                         memory_mb=0, image_size=s)

    picked = choose([cand(1.0, 32, 10, 1.0), cand(0.5, 64, 20, 1.5), cand(0.75, 48, 20, 1.2)])
    assert (picked.width, picked.image_size) == (0.75, 48)


# ---------------------------------------------------------------------------------------------
# The real CLI: torchvision teacher weights, mobilenet student, baselines


@pytest.mark.slow
def test_cli_torchvision_teacher_mobilenet_student_with_baselines(tmp_path, mnist_arrays):
    from edgekd.data import normalize

    x_train, y_train, x_test, y_test = mnist_arrays
    rgb = lambda x: np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None], 3, axis=1)  # noqa: E731
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rgb(x_train[:400]), y_train=y_train[:400], x_test=rgb(x_test[:300]), y_test=y_test[:300])
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # decisive logits: a random network's near-ties would flip on float rounding alone
        net.fc.weight.mul_(100.0)
    torch.save({"model": net.state_dict()}, tmp_path / "resnet18_finetuned.pth")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgekd", "distill", "--target", "raspberry-pi-4", "--data", str(data),
           "--teacher", "torchvision:resnet18", "--teacher-weights", str(tmp_path / "resnet18_finetuned.pth"),
           "--student", "mobilenet_v3_small", "--image-size", "32", "--teacher-image-size", "32", "--width", "0.5",
           "--epochs", "1",
           "--loss", "kd+at:0.5", "--formats", "onnx,ort-int8", "--compare", "scratch,teacher-int8",
           "--bench-seconds", "0.05", "--threads", "1", "--out", str(out), "--no-progress",
           "--force"]  # one epoch tests the wiring, not accuracy: a near-chance student only warns
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["arch"] == "mobilenet_v3_small" and report["student"]["image_size"] == 32
    assert report["teacher"]["arch"] == "torchvision:resnet18"
    cand = report["selection"]["candidates"][0]
    assert {"width", "image_size", "params", "flops", "predicted_ms", "fits"} <= set(cand) and cand["image_size"] == 32
    # The teacher's reported accuracy is what plain PyTorch gives with the same weights and preprocessing:
    # the test images as they are (32 px), normalised with the mean/std of torchvision's ResNet-18 weights.
    t = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert report["data"]["mean"] == pytest.approx(list(t.mean), abs=1e-6)
    with torch.no_grad():
        logits = net(torch.from_numpy(normalize(rgb(x_test[:300]), t.mean, t.std)))
    assert abs(report["teacher"]["accuracy"] - float((logits.argmax(1).numpy() == y_test[:300]).mean())) <= 0.005
    baselines = {r["name"]: r for r in report["artifacts"] if r["role"] == "baseline"}
    assert set(baselines) == {"scratch", "teacher-int8"}
    assert all(r["status"] == "ok" and r["accuracy"] is not None and r["latency_ms"] for r in baselines.values())
    assert baselines["teacher-int8"]["precision"] == "int8"
    assert "baseline" in (out / "report.md").read_text()
    student_onnx = next(r for r in report["artifacts"] if r["role"] == "student" and r["name"] == "onnx")
    assert student_onnx["status"] == "ok"
    # the exported student takes the student's real resolution
    import onnx

    dims = onnx.load(str(out / student_onnx["path"])).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [3, 32, 32]


def test_teacher_at_its_own_image_size(tmp_path, rgb32):
    """--teacher-image-size, and an ONNX teacher fixed at 64 px on 32 px data: the teacher sees each image resized."""
    import torch.nn.functional as F

    from edgekd.distill import get_teacher
    from edgekd.hardware.graph import export_onnx

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    teacher, _, info = get_teacher(rgb32, teacher_path="torchvision:resnet18", teacher_weights=str(tmp_path / "r18.pth"),
                                   teacher_image_size=64, progress=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = net(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        assert torch.allclose(teacher(x), want, atol=1e-5) and info["image_size"] == 64
    path = export_onnx(net, (1, 3, 64, 64), tmp_path / "t64.onnx")  # static batch and size
    teacher, _, info = get_teacher(rgb32, teacher_path=str(path), progress=False)
    assert info["image_size"] == 64
    with torch.no_grad():
        assert torch.allclose(teacher(x), want, atol=1e-3)


@pytest.mark.slow
def test_cli_photo_folder_of_varied_jpegs_torchvision_teacher_mobilenet_student(tmp_path, mnist_arrays):
    """The issue's end-to-end case: a torchvision teacher state dict, a mobilenet_v3_small student, an
    ImageFolder of JPEGs of varied sizes, tiny settings, through the real CLI."""
    from PIL import Image

    x_train, y_train, x_test, y_test = mnist_arrays
    rng = np.random.default_rng(0)
    for split, xs, ys, n in (("train", x_train, y_train, 120), ("val", x_test, y_test, 45)):
        for i in range(n):
            label = int(ys[i]) % 3
            side = int(rng.integers(36, 90))
            img = Image.fromarray(xs[i]).convert("RGB").resize((side, int(side * rng.uniform(0.8, 1.25))))
            folder = tmp_path / "photos" / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i}.jpg", quality=90)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "resnet18_finetuned.pth")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgekd", "distill", "--target", "jetson-nano", "--data", str(tmp_path / "photos"),
           "--teacher", "torchvision:resnet18", "--teacher-weights", str(tmp_path / "resnet18_finetuned.pth"),
           "--student", "mobilenet_v3_small", "--image-size", "32", "--teacher-image-size", "48", "--width", "0.5",
           "--epochs", "1", "--batch-size", "16", "--workers", "0", "--formats", "onnx", "--bench-seconds", "0.05",
           "--threads", "1", "--budget-ms", "100", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    pre = report["data"]["preprocess"]
    assert report["data"]["input_shape"] == [3, 32, 32] and pre["image_size"] == 32
    assert report["student"]["arch"] == "mobilenet_v3_small" and report["teacher"]["arch"] == "torchvision:resnet18"
    onnx_row = next(r for r in report["artifacts"] if r["role"] == "student" and r["name"] == "onnx")
    assert onnx_row["status"] == "ok" and onnx_row["accuracy"] is not None
