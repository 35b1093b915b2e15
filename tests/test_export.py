"""Export to every format this machine can build: files, parity with PyTorch, failures isolated and atomic."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.export import FORMATS, Artifact, ExportOptions, export_all, resolve_formats
from edgekd.models import create

MNIST = Path(__file__).resolve().parents[1] / "edgekd" / "data" / "mnist"


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def mnist():
    """A few hundred real MNIST digits, normalised as the pipeline does (mean 0.1307, std 0.3081)."""
    x = _idx(MNIST / "train-images-idx3-ubyte.gz")[:1200]
    y = _idx(MNIST / "train-labels-idx1-ubyte.gz")[:1200].astype(np.int64)
    x = ((x[:, None].astype(np.float32) / 255.0) - 0.1307) / 0.3081
    return x, y


def lenet() -> nn.Module:
    """A LeNet-sized CNN that reaches ~90% on MNIST in a few dozen steps (conv, BN, pool, linear)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.fixture(scope="module")
def trained(mnist):
    """Trained briefly: confident logits make top-1 agreement a meaningful check of quantization."""
    x, y = mnist
    torch.manual_seed(0)
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000])
    model.train()
    # Four epochs (0.91 held-out accuracy here): with two it sat at 0.81, too near the 0.8 guard for
    # a CPU whose float results differ.
    for epoch in range(4):
        for i in range(0, 1000, 50):
            loss = nn.functional.cross_entropy(model(xt[i:i + 50]), yt[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        accuracy = (model(torch.from_numpy(x[1000:1200])).argmax(1).numpy() == y[1000:1200]).mean()
    assert accuracy > 0.8, accuracy
    return model


@pytest.fixture(scope="module")
def exported(trained, mnist, tmp_path_factory):
    """Every registered format exported once; the parametrized tests below inspect one each."""
    x, _ = mnist
    out = tmp_path_factory.mktemp("export")
    arts = export_all(trained, "all", out, example=x[:1], calib=x[:128], parity_inputs=x[1000:1200],
                      progress=False)
    return out, {a.name: a for a in arts}


def _needs_local(name: str):
    ok, why = FORMATS.get(name).available()
    if not ok:
        pytest.skip(f"{name} cannot be built on this machine: {why}")


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_exports_and_matches_pytorch(name, exported, mnist, trained):
    _needs_local(name)
    out, arts = exported
    art = arts[name]
    assert art.status == "ok", art.reason
    assert art.path is not None and art.path.is_file() and art.path.parent == out
    assert art.size_bytes >= art.path.stat().st_size > 0
    for f in art.extra["files"]:
        assert (out / f).is_file()
    p = art.parity
    assert p["n"] == 200 and p["inputs"] == "test split"
    if art.precision == "fp32":
        assert p["max_abs_diff"] <= 1e-4
        assert p["top1_agreement"] == 1.0
    else:
        # A quantized or half-precision model that "succeeds" but disagrees with the FP32 model is the
        # failure users hit most; on real digits it must agree on nearly every prediction.
        assert p["top1_agreement"] >= 0.97, p
        # INT8 error grows with the logits' range (a quantization step is a fraction of it): bound it
        # by that range, not by an absolute number that a more confident model would exceed.
        with torch.inference_mode():
            scale = float(trained(torch.from_numpy(mnist[0][1000:1200])).abs().max())
        # Measured: ORT/OpenVINO INT8 under 10% of it, ExecuTorch INT8 12% on its worst input; the
        # mean error stays under 0.3% of it.
        assert p["max_abs_diff"] < 0.2 * scale and p["mean_abs_diff"] < 0.02 * scale, (p, scale)

    # the artifact's own runtime reproduces the parity figures
    from edgekd.bench.runners import load_runner

    x, _ = mnist
    logits = load_runner(art).run(x[1000:1200])
    with torch.inference_mode():
        ref = trained(torch.from_numpy(x[1000:1200])).numpy()
    assert logits.shape == ref.shape
    assert np.abs(logits - ref).max() == pytest.approx(p["max_abs_diff"], rel=1e-3, abs=1e-6)


def test_all_formats_reported_and_no_temporary_files(exported):
    out, arts = exported
    assert list(arts) == FORMATS.names()
    for art in arts.values():
        assert art.status in ("ok", "skipped"), (art.name, art.reason)
        if art.status == "skipped":
            assert art.reason and art.path is None
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_onnx_has_dynamic_batch_and_passes_checker(exported, mnist):
    import onnx
    import onnxruntime as ort

    out, arts = exported
    model = onnx.load(str(arts["onnx"].path))
    onnx.checker.check_model(model, full_check=True)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    sess = ort.InferenceSession(str(arts["onnx"].path), providers=["CPUExecutionProvider"])
    x, _ = mnist
    for batch in (1, 3, 17):
        assert sess.run(None, {"input": x[:batch]})[0].shape == (batch, 10)


def test_ort_int8_is_symmetric_qdq(exported):
    """TensorRT consumes QDQ only with INT8 zero points of 0; the ORT model must be built that way."""
    import onnx
    from onnx import numpy_helper

    out, arts = exported
    model = onnx.load(str(arts["ort-int8"].path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "QLinearConv" not in ops  # QOperator form would not load in TensorRT
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    # biases stay float: TensorRT's parser rejects INT32 DequantizeLinear
    # per-channel weights: some DequantizeLinear carries a vector of scales
    scales = [numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(s.ndim == 1 and s.size > 1 for s in scales)
    assert arts["ort-int8"].size_bytes < arts["onnx"].size_bytes


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_methods(method, trained, mnist, tmp_path):
    x, _ = mnist
    (art,) = export_all(trained, ["ort-int8"], tmp_path, example=x[:1], calib=x[:64], parity_inputs=x[1000:1100],
                        progress=False, options=ExportOptions(calibration=method))
    assert art.status == "ok", art.reason
    assert art.extra["calibration"] == method
    assert art.parity["top1_agreement"] >= 0.95


def test_unknown_calibration_method_is_one_line_error():
    with pytest.raises(EdgeKDError, match="unknown calibration method 'kl'"):
        ExportOptions(calibration="kl")


def test_one_failing_format_does_not_stop_the_others(trained, mnist, tmp_path):
    x, _ = mnist
    arts = export_all(trained, ["ort-int8", "onnx", "openvino-fp16"], tmp_path, example=x[:1],
                      calib=x[:0], parity_inputs=x[1000:1050], progress=False)
    by = {a.name: a for a in arts}
    assert by["ort-int8"].status == "failed"
    assert "calibration" in by["ort-int8"].reason and "\n" not in by["ort-int8"].reason
    assert by["ort-int8"].path is None
    assert by["onnx"].status == "ok" and by["openvino-fp16"].status == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.onnx", "model.openvino-fp16.xml", "model.openvino-fp16.bin"])


class _BranchOnValues(nn.Module):
    """No exporter can trace this: Python control flow on a tensor's value."""

    def forward(self, x):
        if x.mean() > 0:
            return x.flatten(1)[:, :10]
        return -x.flatten(1)[:, :10]


class _Svd(nn.Module):
    """Uses an operator ONNX has no equivalent for (SVD)."""

    def forward(self, x):
        return torch.linalg.svdvals(x[:, 0])[:, :10]


class _PinnedBatch(nn.Module):
    """Code that pins the batch to 1: exported with a static batch, run one image at a time."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.reshape(1, 28 * 28))


def test_failed_export_leaves_no_files(mnist, tmp_path):
    x, _ = mnist
    arts = export_all(_BranchOnValues(), ["onnx", "ort-int8", "openvino-int8"], tmp_path, example=x[:1],
                      calib=x[:16], parity_inputs=x[:8], progress=False)
    assert [a.status for a in arts] == ["failed"] * 3
    for a in arts:
        assert "branches on tensor values" in a.reason and "\n" not in a.reason and len(a.reason) < 400
    assert list(tmp_path.iterdir()) == []


def test_unsupported_operator_is_named(mnist, tmp_path):
    x, _ = mnist
    (art,) = export_all(_Svd(), ["onnx"], tmp_path, example=x[:1], calib=x[:4], parity_inputs=x[:4], progress=False)
    assert art.status == "failed"
    assert "onnx format cannot take operator aten._linalg_svd" in art.reason


def test_model_with_pinned_batch_exports_static(mnist, tmp_path):
    x, _ = mnist
    torch.manual_seed(0)
    (art,) = export_all(_PinnedBatch(), ["onnx"], tmp_path, example=x[:1], calib=x[:4], parity_inputs=x[:5],
                        progress=False)
    assert art.status == "ok", art.reason
    assert art.extra["dynamic_batch"] is False
    assert art.parity["n"] == 5 and art.parity["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("width,depth", [(0.25, 1), (0.5, 2)])
def test_edgekd_cnn_family_exports_with_fp32_parity(width, depth, mnist, tmp_path):
    x, _ = mnist
    torch.manual_seed(1)
    model = create("cnn", num_classes=10, in_channels=1, width=width, depth=depth)
    arts = export_all(model, ["onnx", "openvino-fp16"], tmp_path, example=x[:1], calib=x[:16],
                      parity_inputs=x[:64], progress=False, parity_label="generated")
    assert [a.status for a in arts] == ["ok", "ok"], [a.reason for a in arts]
    assert arts[0].parity["max_abs_diff"] <= 1e-4 and arts[0].parity["inputs"] == "generated"
    assert arts[1].parity["max_abs_diff"] <= 1e-2


def test_resolve_formats():
    assert resolve_formats("all") == FORMATS.names()
    assert resolve_formats("onnx, ort-int8,onnx") == ["onnx", "ort-int8"]
    with pytest.raises(EdgeKDError, match="did you mean 'ort-int8'"):
        resolve_formats(["ort-int9"])
    with pytest.raises(EdgeKDError, match="no export formats"):
        resolve_formats("")


def test_artifact_paths_are_relative_in_reports(exported):
    out, arts = exported
    d = arts["onnx"].to_dict(relative_to=out.parent)
    assert d["path"] == f"{out.name}/model.onnx"
    assert set(d) >= {"name", "format", "precision", "runtime", "path", "size_bytes", "status", "reason", "parity", "extra"}
    assert isinstance(arts["onnx"], Artifact)


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    with pytest.raises(EdgeKDError, match="float NCHW"):
        export_all(trained, ["onnx"], tmp_path, example=np.zeros((28, 28), np.uint8), calib=np.zeros((1, 1, 28, 28)),
                   parity_inputs=None, progress=False)


@pytest.mark.parametrize("name", ["tensorrt-fp16", "tensorrt-int8"])
def test_tensorrt_ships_a_device_build_kit(name, exported, mnist, trained):
    """Engines are device-specific: the ONNX at a Jetson-compatible opset and the trtexec script ship either way."""
    import onnx
    import onnxruntime as ort

    out, arts = exported
    art = arts[name]
    if art.status == "ok":
        assert art.path.suffix == ".engine" and (out / f"{art.path.name}.json").is_file()
        return
    assert art.status == "skipped" and art.extra["build_script"] in art.reason
    script = out / art.extra["build_script"]
    assert script.is_file() and subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = next(ln for ln in script.read_text().splitlines() if ln.startswith('"$TRTEXEC" --onnx'))
    precision = name.split("-")[1]
    assert f"--saveEngine=model.{precision}.engine" in text and "--fp16" in text
    assert ("--int8" in text) == (precision == "int8")
    assert art.extra["trtexec"].startswith("trtexec --onnx=")
    device_onnx = out / art.extra["device_onnx"]
    model = onnx.load(str(device_onnx))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    x, _ = mnist
    sess = ort.InferenceSession(str(device_onnx), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x[1000:1100]})[0]
    with torch.inference_mode():
        ref = trained(torch.from_numpy(x[1000:1100])).numpy()
    if precision == "fp16":
        assert np.abs(logits - ref).max() <= 1e-4
    else:
        assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_accuracy_gate_passes_and_records_validation(trained, mnist, tmp_path):
    x, y = mnist
    (art,) = export_all(trained, ["ort-int8"], tmp_path, example=x[:1], calib=x[:128], parity_inputs=x[1100:1200],
                        validation=(x[1000:1100], y[1000:1100]), progress=False)
    gate = art.extra["accuracy_gate"]
    assert art.status == "ok" and gate["passed"]
    # 100 images: one image is one point; INT8 may land a point or two either side of FP32
    assert gate["validation_images"] == 100 and abs(gate["reference_val_accuracy"] - gate["val_accuracy"]) <= 0.03
    assert gate["tried"][0]["remedy"] == "as exported"


def test_accuracy_gate_tries_remedies_then_fails_without_leaving_files(trained, mnist, tmp_path):
    """An unreachable limit forces every remedy: each is recorded, and the artifact fails, never kept."""
    x, y = mnist
    options = ExportOptions()
    options.max_drop = -1.0  # no user can ask for this (--max-drop is 0 to 100 points): only the gate's logic is tested
    (art,) = export_all(trained, ["ort-int8"], tmp_path, example=x[:1], calib=x[:128], parity_inputs=x[1100:1200],
                        validation=(x[1000:1100], y[1000:1100]), progress=False, options=options)
    assert art.status == "failed" and art.path is None
    tried = [t["remedy"] for t in art.extra["accuracy_gate"]["tried"]]
    assert tried[:4] == ["as exported", "per-tensor weights", "entropy calibration", "percentile calibration"]
    assert tried[4].startswith("keep ") and tried[4].endswith(" in float")
    assert all("val_accuracy" in t for t in art.extra["accuracy_gate"]["tried"])
    assert "tried per-tensor weights, entropy calibration" in art.reason
    assert list(tmp_path.iterdir()) == []


# ---- edgekd export (the command) ----------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
'''


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekd.cli", "export", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or Path(__file__).resolve().parents[1], timeout=600)


@pytest.mark.slow
def test_cli_exports_a_factory_model_with_labelled_data(tmp_path):
    import json

    (tmp_path / "net.py").write_text(FACTORY)
    out = tmp_path / "out"
    proc = _cli("--model", f"{tmp_path / 'net.py'}:build", "--input", "1x1x28x28", "--formats", "onnx,ort-int8",
                "--calib-data", MNIST, "--max-drop", "100", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["command"] == "export"
    rows = {r["name"]: r for r in report["artifacts"]}
    assert set(rows) == {"pytorch", "onnx", "ort-int8"}
    assert rows["onnx"]["path"] == "artifacts/model.onnx" and (out / rows["onnx"]["path"]).is_file()
    assert rows["onnx"]["parity"]["inputs"] == "test split" and rows["onnx"]["parity"]["max_abs_diff"] <= 1e-4
    # untrained model: accuracy is near chance, but it is measured on the labelled test split
    assert 0.0 <= rows["onnx"]["accuracy"] <= 1.0 and abs(rows["onnx"]["accuracy_drop"]) < 1e-3
    val_size = report["data"]["splits"]["val"]["size"]
    assert rows["ort-int8"]["extra"]["accuracy_gate"]["validation_images"] == min(1000, val_size)
    assert report["data"]["splits"]["calib"]["size"] == 256 and "sha256" in report["data"]["splits"]["test"]
    assert (out / "report.md").is_file()
    # the exporter's events, drawn by the command's renderer
    assert "export [1/2] onnx ok" in proc.stdout and "export [2/2] ort-int8" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_cli_without_data_labels_generated_inputs(tmp_path):
    import json

    (tmp_path / "net.py").write_text(FACTORY)
    out = tmp_path / "out"
    proc = _cli("--model", f"{tmp_path / 'net.py'}:build", "--input", "1x28x28", "--formats", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["name"] == "generated"
    onnx_row = next(r for r in report["artifacts"] if r["name"] == "onnx")
    assert onnx_row["parity"]["inputs"] == "generated" and onnx_row["accuracy"] is None


@pytest.mark.parametrize("args,message", [
    (["--model", "torchvision:resnet19"], "unknown torchvision model 'resnet19'; did you mean 'resnet18'"),
    (["--model", "nowhere.py:build"], "model file nowhere.py does not exist"),
    (["--model", "torchvision:resnet18", "--input", "3x224"], "is not an input shape"),
    (["--model", "torchvision:resnet18", "--formats", "onnx,tflite"], "unknown export format 'tflite'"),
])
def test_cli_bad_arguments_are_one_line_errors(args, message, tmp_path):
    proc = _cli(*args, "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_truncated_and_mismatched_weights_are_one_line_errors(tmp_path):
    from edgekd.export.standalone import load_weights

    model = lenet()
    good = tmp_path / "w.pt"
    torch.save(model.state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(EdgeKDError, match="cannot read weights cut.pt") as err:
        load_weights(lenet(), cut)
    assert "\n" not in str(err.value)
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    st_cut = tmp_path / "cut.safetensors"
    st_cut.write_bytes(st.read_bytes()[:100])
    with pytest.raises(EdgeKDError, match="cannot read weights cut.safetensors"):
        load_weights(lenet(), st_cut)
    with pytest.raises(EdgeKDError, match="do not match the model"):
        load_weights(nn.Sequential(nn.Linear(3, 3)), good)
    loaded = load_weights(lenet(), st)
    assert torch.equal(loaded[0].weight, model[0].weight)


# ---- real architectures (random weights) --------------------------------------------------------


@pytest.fixture(scope="module", params=["mobilenet_v3_small", "resnet18"])
def zoo_export(request, tmp_path_factory):
    import torchvision

    from edgekd.export.standalone import reestimate_batchnorm

    torch.manual_seed(0)
    model = torchvision.models.get_model(request.param, weights=None).eval()
    x = np.random.default_rng(0).standard_normal((24, 3, 112, 112)).astype(np.float32)
    reestimate_batchnorm(model, x[:16])  # realistic activations, so parity is not trivially ~0
    out = tmp_path_factory.mktemp(request.param)
    arts = export_all(model, "all", out, example=x[:1], calib=x[:16], parity_inputs=x[16:], progress=False,
                      parity_label="generated")
    return request.param, {a.name: a for a in arts}


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS.names())
def test_torchvision_models_export_to_every_local_format(name, zoo_export):
    arch, arts = zoo_export
    _needs_local(name)
    art = arts[name]
    assert art.status == "ok", f"{arch} {name}: {art.reason}"
    p = art.parity
    scale = max(1e-6, p["reference_max_abs"])
    assert scale > 1e-3, "BatchNorm re-estimation should give non-trivial logits"
    if art.precision == "fp32":
        assert p["max_abs_diff"] <= 1e-4 * max(1.0, scale), (arch, name, p)
    elif art.precision == "fp16":
        assert p["max_abs_diff"] <= 2e-2 * scale, (arch, name, p)
    else:
        # Random weights and 16 generated calibration images: near-tied logits, so top-1 flips are
        # expected and errors reach tens of percent (mobilenet_v3_small's hardswish/SE with NNCF:
        # 0.057 on a 0.093 scale). The bound catches a broken quantizer (errors far above the logit
        # scale); trained-model agreement is checked on MNIST above.
        assert p["max_abs_diff"] <= scale, (arch, name, p)
        assert p["mean_abs_diff"] <= 0.25 * scale, (arch, name, p)


NO_FORK_SCRIPT = r"""
import os, sys
import numpy as np
import torch
from edgekd.export import export_all
from edgekd.models import create

forks = []
real_fork = os.fork
def counting_fork():
    forks.append(1)
    return real_fork()
os.fork = counting_fork

model = create("cnn", num_classes=10, in_channels=1, width=0.25).eval()
x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
arts = export_all(model, ["openvino-fp16", "openvino-int8"], sys.argv[1], example=x[:1], calib=x[:32],
                  parity_inputs=x[32:], progress=False)
assert all(a.status == "ok" for a in arts), [(a.name, a.reason) for a in arts]
assert "openvino" in sys.modules and "nncf" in sys.modules
print("forks", len(forks))
"""


def test_openvino_and_nncf_exports_never_fork_the_process(tmp_path):
    # A fresh process: the suite's own workers have imported OpenVINO long before. OpenVINO's and NNCF's
    # telemetry would otherwise fork it once on import and per conversion or quantization.
    proc = subprocess.run([sys.executable, "-c", NO_FORK_SCRIPT, str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CI": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "forks 0"


SIGNAL_STACK_SCRIPT = r"""
import faulthandler, gc, os, signal, sys
import numpy as np, torch
from edgekd.offline import import_openvino
from edgekd.runtimes.openvino import OpenVINORunner

faulthandler.enable()   # as pytest does: the thread has an alternate signal stack of its own
ov = import_openvino()
path = os.path.join(sys.argv[1], "m.xml")
ov.save_model(ov.convert_model(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()),
                               example_input=torch.randn(1, 3, 16, 16)), path)
x = np.zeros((1, 3, 16, 16), np.float32)
first, second = OpenVINORunner(path), OpenVINORunner(path)
first.timed_call(x)
del first; gc.collect()    # dropped in the order they were made
del second; gc.collect()
signal.signal(signal.SIGUSR1, lambda *a: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive")
"""


def test_openvino_runners_dropped_in_any_order_leave_the_process_able_to_take_a_signal(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack for its own (on CPUs with AMX) and
    restores the one it found when destroyed; Cores destroyed first-made-first left an unmapped stack and
    the next handled signal killed the process with SIGSEGV (a pytest worker, on a DataLoader's SIGCHLD).
    Where the plugin installs no stack (no AMX) this passes either way."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_STACK_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.split()[-2:] == ["handled", "alive"]


KEPT_STACK_SCRIPT = r"""
import ctypes
from edgekd.offline import _Stack, _sigaltstack, _stack_now, signal_stack_kept

set_stack = _sigaltstack()
def install(size):
    buffer = ctypes.create_string_buffer(size)
    set_stack(ctypes.byref(_Stack(ctypes.addressof(buffer), 0, size)), None)
    return buffer

mine = install(16384)
with signal_stack_kept():
    theirs = install(65536)                      # a library's, larger
now = _stack_now(set_stack)
print(now.ss_sp != ctypes.addressof(theirs), now.ss_size)
with signal_stack_kept():
    again = install(8192)                       # a smaller one: the old one is large enough to come back
print(_stack_now(set_stack).ss_sp == now.ss_sp)
set_stack(ctypes.byref(_Stack(None, 2, 0)), None)  # none at all
with signal_stack_kept():
    install(65536)
print(_stack_now(set_stack).ss_flags)
"""


def test_the_signal_stack_guard_puts_back_the_old_stack_or_one_large_enough_that_stays():
    if not sys.platform.startswith("linux"):
        pytest.skip("sigaltstack through ctypes is checked on Linux")
    proc = subprocess.run([sys.executable, "-c", KEPT_STACK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.split() == ["True", "65536", "True", "2"]
