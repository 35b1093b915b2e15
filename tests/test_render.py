"""The command line's renderer draws every event kind, and bars do not outlive their tasks."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from edgekd import events
from edgekd.cli.render import RichRenderer, rendering


def _console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120, force_terminal=terminal, color_system=None), buf


def _emit_one_of_each():
    with events.stage("distill", "Distilling the cnn student"):
        events.emit("epoch_end", epoch=1, epochs=3, loss=0.4321, val_accuracy=0.875, seconds=1.25)
        events.emit("epoch_end", "epoch 2/3  loss 0.3000  val 90.00%", epoch=2, epochs=3)
    events.emit("candidate_costed", family="cnn", width=0.5, depth=1.0, image_size=28, predicted_ms=1.234,
                fits=True)
    events.emit("artifact_exported", format="onnx", path="run/student.onnx", size_mb=0.25)
    events.emit("artifact_measured", "measured onnx: p50 0.12 ms", format="onnx")
    events.info("plain [bold]not markup[/bold]")
    events.warning("the teacher is not worth it")
    events.table("Artifacts", ["format", "size"], [["onnx", "0.25 MB"], ["int8", 0.1]])
    with events.progress("bench", "measuring", total=4) as p:
        for _ in range(4):
            p.advance(loss=0.5)


def test_every_event_kind_is_rendered():
    console, buf = _console()
    with events.listening(renderer := RichRenderer(console)):
        _emit_one_of_each()
    renderer.close()
    out = buf.getvalue()
    assert "▶ Distilling the cnn student" in out
    assert "distill: " in out and " s" in out
    assert "epoch 1/3" in out and "loss 0.4321" in out and "val_accuracy 87.50%" in out and "1.2s" in out
    assert "epoch 2/3 loss 0.3000 val 90.00%" in out  # emit folds runs of spaces
    assert "cnn  width 0.5  depth 1  28px  1.234 ms  fits" in out
    assert "exported onnx  run/student.onnx  size_mb 0.25" in out
    assert "measured onnx: p50 0.12 ms" in out
    assert "plain [bold]not markup[/bold]" in out  # messages are text, never markup
    assert "warning: the teacher is not worth it" in out
    assert "Artifacts" in out and "0.25 MB" in out and "int8" in out
    assert renderer._bars is None  # the bar went with its task


def test_warnings_are_yellow_and_stages_cyan():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system="standard")
    with events.listening(RichRenderer(console, progress=False)):
        events.warning("careful")
        with events.stage("data", "Loading data"):
            pass
    out = buf.getvalue()
    assert "\x1b[1;33mwarning: " in out and "\x1b[33mcareful" in out
    assert "\x1b[1;36m▶ Loading data" in out


def test_progress_bars_are_keyed_by_task_and_stop_when_all_finish():
    console, buf = _console(terminal=True)
    renderer = RichRenderer(console)
    with events.listening(renderer):
        with events.progress("a", "first", total=2) as a:
            with events.progress("b", "second", total=3) as b:
                b.advance()
                a.advance()
                assert set(renderer._tasks) == {"a", "b"}
                bars = renderer._bars
                assert bars.tasks[renderer._tasks["b"]].completed == 1
                b.update(3, description="second, done")
                assert bars.tasks[renderer._tasks["b"]].description == "second, done"
            assert set(renderer._tasks) == {"a"} and renderer._bars is bars
            events.info("a line while a bar is drawn")
        assert renderer._bars is None
    assert "a line while a bar is drawn" in buf.getvalue()


def test_without_bars_a_finished_task_is_one_line():
    console, buf = _console()
    with events.listening(RichRenderer(console, progress=False)):
        with events.progress("t", "reading images", total=10) as p:
            p.update(10)
    assert buf.getvalue().strip() == "reading images: 10/10"


def test_rendering_stops_a_bar_left_by_an_error_and_silent_means_nothing(capsys):
    console, buf = _console(terminal=True)
    with pytest.raises(RuntimeError):
        with rendering(console) as renderer:
            events.emit("progress", "stuck", task="t", completed=0, total=5)
            assert renderer._bars is not None
            raise RuntimeError("boom")
    assert renderer._bars is None
    assert not events.has_listeners()
    with rendering(verbose=False) as nobody:
        assert nobody is None
        _emit_one_of_each()
    assert capsys.readouterr() == ("", "")


def test_export_tells_its_listeners_what_it_made(tmp_path):
    """export_all emits a progress task and one artifact_exported per format; with no listener it is silent."""
    import numpy as np
    import torch

    from edgekd.export import export_all

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = np.random.default_rng(0).standard_normal((8, 1, 4, 4)).astype(np.float32)
    with events.listening(rec := events.Recorder()):
        (art,) = export_all(model, ["onnx"], tmp_path, example=x[:1], calib=x, parity_inputs=x)
    (made,) = rec.of("artifact_exported")
    assert made["format"] == "onnx" and made["path"] == str(art.path) and made["status"] == "ok"
    assert made.message.startswith("export [1/1] onnx ok")
    bar = rec.of("progress")
    assert {e["task"] for e in bar} == {"export"} and bar[0]["started"] and bar[-1]["finished"]
    assert bar[-1]["completed"] == 1 and bar[-1]["total"] == 1


def test_candidate_lines_give_way_to_the_table_that_repeats_them():
    """`distill` printed "width 0.25: 0.475 ms" per candidate above the selection table showing the same."""
    for bars in (False, True):
        console, buf = _console(terminal=bars)
        with events.listening(renderer := RichRenderer(console, progress=bars)):
            for w in (0.25, 0.5):
                events.emit("candidate_costed", f"width {w:g}: 0.475 ms", family="cnn", width=w, predicted_ms=0.475)
            if bars:
                assert "candidates" in renderer._tasks  # the latest candidate shows as progress meanwhile
            events.table("Candidate students", ["width", "latency ms"], [["0.25", "0.475"], ["0.5", "0.475"]])
        renderer.close()
        out = buf.getvalue().rsplit("\x1b[?25h", 1)[-1]  # what stays once a (transient) live display ends
        assert "width 0.25: 0.475 ms" not in out and "Candidate students" in out and renderer._bars is None
    # With no table after them they are lines, in order, before what came next.
    console, buf = _console()
    with events.listening(renderer := RichRenderer(console, progress=False)):
        events.emit("candidate_costed", family="cnn", width=0.5, predicted_ms=1.234, fits=False)
        events.info("next")
    assert buf.getvalue().splitlines() == ["  cnn  width 0.5  1.234 ms  over budget", "next"]


def test_epoch_lines_reach_a_log_without_progress_bars(tmp_path):
    """With --no-progress (progress=False) training still tells one line per epoch, with its metrics."""
    import numpy as np
    import torch

    from edgekd.data import RawData, make_splits
    from edgekd.distill import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (96, 1, 8, 8), dtype=np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64)
    splits = make_splits(RawData(x[:64], y[:64], x[64:], y[64:]), name="t", source="test", calib_size=8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    console, buf = _console()
    with events.listening(RichRenderer(console, progress=False)):
        train(model, None, splits, TrainConfig(epochs=2, batch_size=32, loss="ce", threads=1), ckpt_dir=tmp_path,
              progress=False)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"] and all("loss" in ln and "val" in ln for ln in lines)
