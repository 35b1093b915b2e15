"""The pipeline's stages: failure reports, rerunning a failed folder, the device loop's re-selection."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgekd.config import RunConfig
from edgekd.errors import EdgeKDError


def test_a_failed_run_folder_is_replaced_by_the_same_command(tmp_path):
    """It used to need --overwrite: the folder held config.json and checkpoints but no report."""
    from edgekd.rundir import prepare_out_dir, write_unfinished_report

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(EdgeKDError, match="already exists"):
        prepare_out_dir(out, overwrite=False, resume=False)
    write_unfinished_report(out, status="failed", stage="export", error="boom", config={"target": "host"})
    assert prepare_out_dir(out, overwrite=False, resume=False) is True
    report = json.loads((out / "report.json").read_text())
    assert (report["status"], report["failed_stage"], report["error"]) == ("failed", "export", "boom")
    from edgekd.report.schema import load_report

    assert load_report(out / "report.json")["status"] == "failed"  # readable by gate and report


@pytest.mark.slow
def test_a_stage_that_fails_after_the_folder_exists_leaves_a_report(tmp_path, tiny_npz, monkeypatch):
    from edgekd import pipeline

    def fails(run):
        raise EdgeKDError("the student check failed", "see the report")

    monkeypatch.setitem(pipeline.STAGE_HOOKS, "train", [fails])
    cfg = RunConfig(target="host", out=str(tmp_path / "run"), progress=False, force=True)
    cfg.data.path = str(tiny_npz)
    cfg.train.epochs = 1
    cfg.selection.widths = (0.25,)
    cfg.export.formats = ("onnx",)
    with pytest.raises(EdgeKDError, match="the student check failed"):
        pipeline.distill(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "distill"
    assert report["config"]["train"]["epochs"] == 1 and report["artifacts"] == []


def test_the_device_loop_reselects_in_the_runs_family(monkeypatch):
    """It re-selected among the cnn family's widths whatever --student said."""
    from edgekd.devices import loop
    from edgekd.models import search_widths

    report = {"data": {"num_classes": 10, "input_shape": [3, 32, 32]}, "budget_ms": 1e9,
              "student": {"arch": "mobilenet_v3_small", "depth": 1, "image_size": 32}}
    cfg = RunConfig()
    cfg.student.family = "mobilenet_v3_small"
    cfg.selection.widths = (0.5, 0.75)
    costed = []
    import edgekd.hardware.select as select

    def evaluate_candidate(arch, **kw):
        costed.append((arch, kw["width"], kw["depth"], kw["resolution"]))
        return SimpleNamespace(predicted_ms=kw["width"], latency_source="predicted:test")

    monkeypatch.setattr(select, "evaluate_candidate", evaluate_candidate)
    device = SimpleNamespace(name="loop", target="host")
    rows, chosen = loop._reselect(report, cfg, device, {0.5: 0.4})
    assert costed == [("mobilenet_v3_small", 0.75, 1, 32)]  # 0.5 was measured
    assert [r["arch"] for r in rows] == ["mobilenet_v3_small"] * 2 and chosen["width"] == 0.75
    cfg.selection.widths = None
    costed.clear()
    loop._reselect(report, cfg, device, {})
    assert {w for _, w, _, _ in costed} == set(search_widths("mobilenet_v3_small"))


def test_gate_explains_a_failed_run(tmp_path):
    """The gate of a run that failed names the stage and the error (it said only 'no artifact with status ok')."""
    from edgekd.gate import gate, resolve_budgets
    from edgekd.rundir import write_unfinished_report

    out = tmp_path / "run"
    out.mkdir()
    write_unfinished_report(out, status="failed", stage="export", error="onnx export failed: boom",
                            config={"target": "host"})
    budgets, _ = resolve_budgets({"max_size_mb": 1.0}, use_config=False)
    result = gate([str(out)], budgets)
    assert not result.passed
    assert "failed in stage export: onnx export failed: boom" in result.results[0].value_text


def test_student_auto_distils_the_family_the_search_across_families_chose(tmp_path, tiny_npz):
    """`--student a,b` in distill: the selection searches both families and the run trains the chosen one."""
    import torch

    import edgekd
    from edgekd.models import ModelSpec, create, save_model

    torch.manual_seed(0)
    teacher = save_model(tmp_path / "teacher.safetensors", create("cnn", num_classes=10, in_channels=1).eval(),
                         ModelSpec("cnn", 10, 1))
    run = edgekd.distill(target="jetson-nano", data=str(tiny_npz), teacher=str(teacher), student="cnn,mobilenet_v2",
                         epochs=1, formats=("onnx",), bench_seconds=0.05, force=True, progress=False, threads=1,
                         budget_ms=100.0, out=tmp_path / "auto", verbose=False)
    sel = run.report["selection"]
    assert set(sel["families"]) == {"cnn", "mobilenet_v2"}
    assert {c["family"] for c in sel["candidates"]} == {"cnn", "mobilenet_v2"}
    assert run.report["student"]["arch"] == sel["family"]
    assert sel["front"], "the report shows the front across families"


@pytest.mark.slow
@pytest.mark.parametrize("swallowed", [False, True], ids=["raised", "swallowed-by-a-library"])
def test_ctrl_c_during_export_leaves_an_interrupted_report(tmp_path, tiny_npz, monkeypatch, swallowed):
    """Issue 27: SIGINT during export left artifacts and no report; now report.json says where it stopped.
    Also when the KeyboardInterrupt never reaches edgekd (a library that catches everything, a finalizer):
    the run remembers the Ctrl-C and stops at the end of the stage it came in."""
    import os
    import signal

    import edgekd.export as export_package
    from edgekd import pipeline

    real_export_all = export_package.export_all

    seen = {}

    def export_then_ctrl_c(*args, **kwargs):
        # What the process would do with the signal, kept for the failure message: a handler or a signal
        # mask that stops the Ctrl-C is the environment's doing, not the pipeline's.
        seen.update(handler=signal.getsignal(signal.SIGINT), blocked=signal.pthread_sigmask(signal.SIG_BLOCK, []))
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, delivered while the export stage runs
            seen["pending"] = signal.sigpending()
        except KeyboardInterrupt:
            if not swallowed:
                raise
        return real_export_all(*args, **kwargs)

    monkeypatch.setattr(export_package, "export_all", export_then_ctrl_c)
    # A terminal's Ctrl-C: Python's handler, even where pytest itself was started ignoring SIGINT (a
    # background job of a non-interactive shell inherits SIG_IGN, and edgekd rightly leaves that alone).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = RunConfig(target="host", out=str(tmp_path / "run"), progress=False, force=True)
    cfg.data.path = str(tiny_npz)
    cfg.train.epochs = 1
    cfg.selection.widths = (0.25,)
    cfg.export.formats = ("onnx",)
    try:
        pipeline.distill(cfg)
    except EdgeKDError as err:
        error = err
    else:
        pytest.fail(f"the Ctrl-C did not stop the run; SIGINT handler {seen.get('handler')}, blocked signals "
                    f"{seen.get('blocked')}, pending after the kill {seen.get('pending')}")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert error.exit_code == 130 and "--resume" in str(error)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["status"], report["failed_stage"]) == ("interrupted", "export")


def test_report_explains_a_failed_run_and_writes_nothing(tmp_path):
    """`edgekd report` on a failed run printed empty tables and exit 0; now one line naming the stage, exit 1."""
    import subprocess
    import sys

    from edgekd.rundir import write_unfinished_report

    out = tmp_path / "run"
    out.mkdir()
    write_unfinished_report(out, status="failed", stage="teacher", error="TorchExportError: no graph",
                            config={"target": "jetson-nano"})
    proc = subprocess.run([sys.executable, "-m", "edgekd", "report", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "failed in stage teacher: TorchExportError: no graph" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


# -- Each stage alone: a function of the products it needs, returning its own ----------------------------


def _plan(tmp_path, tiny_npz, target: str, formats=(), widths=None):
    from edgekd.pipeline import plan

    cfg = RunConfig(target=target, out=str(tmp_path / "run"), progress=False)
    cfg.data.path = str(tiny_npz)
    cfg.export.formats, cfg.selection.widths = tuple(formats) or None, widths
    return plan(cfg)


def test_the_data_stage_alone_returns_the_splits(tiny_npz):
    from edgekd import events
    from edgekd.data import load_data
    from edgekd.pipeline import DataProduct, load_data_stage

    cfg = RunConfig(progress=False)
    cfg.data.path = str(tiny_npz)
    seen = []
    with events.listening(seen.append):
        data = load_data_stage(cfg)
    assert isinstance(data, DataProduct)
    splits = data.splits
    assert [len(s.y) for s in (splits.train, splits.val, splits.calib, splits.test)] == [1080, 120, 256, 300]
    assert splits.num_classes == 10 and tuple(splits.input_shape) == (1, 28, 28)
    assert data.fingerprint == load_data(tiny_npz).fingerprint()  # the same pixels as the loader's own
    assert any("1080 train / 120 val / 256 calib / 300 test" in e.message for e in seen)


def test_the_select_stage_alone_returns_the_chosen_candidate(tmp_path, tiny_npz):
    from dataclasses import replace

    from edgekd.pipeline import SelectionProduct, load_data_stage, select_student

    plan = _plan(tmp_path, tiny_npz, "jetson-nano", widths=(0.25, 0.5, 1.0))
    assert not plan.out.exists()  # planning writes nothing
    data = load_data_stage(plan.cfg)
    everything = select_student(replace(plan, budget_ms=1e9), data)
    assert isinstance(everything, SelectionProduct) and everything.family == "cnn"
    ms = {c.width: c.predicted_ms for c in everything.selection.candidates}
    assert sorted(ms) == [0.25, 0.5, 1.0] and ms[0.25] < ms[0.5] < ms[1.0]
    assert everything.chosen.width == 1.0  # the widest that fits
    budget = (ms[0.25] + ms[0.5]) / 2
    tight = select_student(replace(plan, budget_ms=budget), data)
    assert tight.chosen.width == 0.25 and tight.chosen.predicted_ms <= budget
    assert [c.fits for c in tight.selection.candidates] == [True, False, False]
    assert tuple(tight.splits.input_shape) == (1, 28, 28)


def test_the_export_stage_alone_writes_the_artifacts_of_a_given_student(tmp_path, tiny_npz):
    """The export stage given a module trained in plain PyTorch: every format on disk, each agreeing with it."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from edgekd.models import family_spec
    from edgekd.pipeline import ExportProduct, TrainProduct, create_out_dir, export_student, load_data_stage

    plan = _plan(tmp_path, tiny_npz, "host", formats=("onnx", "ort-int8"))
    assert plan.formats == ("onnx", "ort-int8")
    data = load_data_stage(plan.cfg)
    splits = data.splits
    spec = family_spec("cnn", splits.num_classes, tuple(splits.input_shape), width=0.25)
    torch.manual_seed(0)
    student = spec.build()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.from_numpy(np.asarray(splits.normalized("train")[:512])), torch.from_numpy(splits.train.y[:512])
    for i in range(0, 512, 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(student(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
    student.eval()
    trained = TrainProduct(student, spec, result=None, train_cfg=None, checkpoint=plan.out / "student.safetensors")
    create_out_dir(plan)
    exported = export_student(plan, splits, trained)
    assert isinstance(exported, ExportProduct)
    assert [a.name for a in exported.artifacts] == list(plan.formats)
    assert [(a.format, a.precision) for a in exported.artifacts] == [("onnx", "fp32"), ("onnx", "int8")]
    for art in exported.artifacts:
        assert art.status == "ok", (art.name, art.reason)
        assert art.path.is_file() and art.path.stat().st_size == art.size_bytes > 0
        assert art.path.parent == plan.out / "artifacts"
    onnx = exported.artifacts[0]
    test_x = np.asarray(splits.normalized("test")[:64], dtype=np.float32)
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: test_x})[0]
    with torch.no_grad():
        expected = student(torch.from_numpy(test_x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert onnx.parity["top1_agreement"] == 1.0


def test_run_stages_hands_each_hook_the_products_so_far(tmp_path, tiny_npz, monkeypatch):
    """A hook after any stage sees that stage's product on the run record; one that raises before the folder
    stage stops the run with nothing written."""
    import torch

    from edgekd import pipeline
    from edgekd.models import ModelSpec, create, save_model

    torch.manual_seed(0)
    teacher = save_model(tmp_path / "teacher.safetensors", create("cnn", num_classes=10, in_channels=1).eval(),
                         ModelSpec("cnn", 10, 1))
    seen = {}

    def record(stage):
        def hook(run):
            seen[stage] = run
            if stage == "teacher":
                raise EdgeKDError("stop here", "the test stops the run")
        return hook

    for stage in ("data", "select", "teacher"):
        monkeypatch.setitem(pipeline.STAGE_HOOKS, stage, [record(stage)])
    cfg = RunConfig(target="jetson-nano", out=str(tmp_path / "run"), progress=False)
    cfg.data.path, cfg.teacher.spec, cfg.selection.widths = str(tiny_npz), str(teacher), (0.25, 0.5)
    with pytest.raises(EdgeKDError, match="stop here"):
        pipeline.run_stages(cfg)
    run = seen["teacher"]
    assert seen["data"] is run and isinstance(run.plan, pipeline.Plan) and run.plan.target.name == "jetson-nano"
    assert isinstance(run.data, pipeline.DataProduct) and run.splits is run.selection.splits
    assert isinstance(run.selection, pipeline.SelectionProduct) and run.selection.chosen.width in (0.25, 0.5)
    assert isinstance(run.teacher_product, pipeline.TeacherProduct) and run.teacher is run.teacher_product.module
    assert run.teacher_info["params"] == sum(p.numel() for p in run.teacher.parameters())
    assert run.trained is None and not (tmp_path / "run").exists()
