"""The Python API: what the ``edgekd`` commands do, as functions that take objects and return typed results.

``edgekd.distill(target="jetson-nano", teacher=my_module, data={"train": ds, "test": ds}, epochs=3)``
runs the same stages as ``edgekd distill`` and returns a :class:`Run`; ``edgekd.gate(run, max_size_mb=1)``
checks it like ``edgekd gate``. Keyword overrides are RunConfig fields by name (``epochs=3``), by path
(``train__epochs`` is not needed: ``epochs`` is unambiguous) or whole sections (``train={"epochs": 3}``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from edgekd import events
from edgekd.config import SECTIONS, RunConfig
from edgekd.errors import EdgeKDError


@dataclass
class Run:
    """A finished distill run: its folder, its report (report.json) and what it made."""

    out: Path
    report: dict
    artifacts: list[dict] = field(default_factory=list)
    recommended: dict | None = None
    config: RunConfig | None = None

    @property
    def student(self):
        """The distilled student as a PyTorch module (from ``student.safetensors``)."""
        from edgekd.models import load_model

        model, _, _ = load_model(self.out / "student.safetensors")  # a file.py: spec is not imported
        return model.eval()

    @property
    def accuracy(self) -> float | None:
        return (self.report.get("student") or {}).get("accuracy")

    @classmethod
    def load(cls, out: str | os.PathLike) -> "Run":
        from edgekd.report import load_report

        report = load_report(Path(out) / "report.json")
        return cls(Path(out), report, report.get("artifacts") or [], report.get("recommended"))


def build_config(config=None, **overrides) -> tuple[RunConfig, dict]:
    """RunConfig from ``config`` (a RunConfig, a dict, or a YAML/JSON path) and keyword overrides; also
    the objects the overrides carried (a teacher module, datasets, a student factory)."""
    import copy

    from edgekd.api_data import is_datasets

    if config is None:
        cfg = RunConfig()
    elif isinstance(config, RunConfig):
        cfg = copy.deepcopy(config)
    elif isinstance(config, dict):
        cfg = RunConfig.from_dict(config)
    else:
        cfg = RunConfig.load(config)
    objects: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "teacher" and _is_module(value):
            objects["teacher_module"] = value
        elif key == "data" and is_datasets(value):
            objects["datasets"] = value
        elif key == "student" and callable(value) and not isinstance(value, (str, dict)):
            cfg.student.family = register_student_factory(value)
        elif key in SECTIONS and isinstance(value, dict):
            cfg.update({key: value}, where=f"{key}=")
        elif key in SECTIONS and not isinstance(value, dict):
            primary = {"data": "data.path", "teacher": "teacher.spec", "student": "student.family",
                       "device": "device.train"}.get(key)
            if primary is None:
                raise EdgeKDError(f"{key}= takes a dict of its options", f"e.g. {key}={{...}}")
            cfg.set(primary, str(value) if isinstance(value, os.PathLike) else value, where=f"{key}=")
        else:
            cfg.set(key, str(value) if isinstance(value, os.PathLike) else value, where="keyword argument")
    return cfg, objects


def _is_module(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def register_student_factory(fn: Callable) -> str:
    """A caller's ``width -> nn.Module`` as a student family for this process; returns its name."""
    from edgekd.models import MODELS, family

    name = f"python:{getattr(fn, '__qualname__', type(fn).__name__)}-{id(fn):x}"
    if name not in MODELS:
        def factory(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1, **kw):
            return fn(width)

        # Not traceable: the caller's module ignores the input size, so it is costed by exporting it, and
        # `--student auto` (every traceable family) in a later run of this process does not search it.
        family(name, traceable=False)(factory)
    return name


def distill(config=None, *, callbacks: Iterable[Callable] | None = None, verbose: bool = True, **overrides) -> Run:
    """Run ``edgekd distill`` from Python: pick the student that fits the target, distil, export, measure.

    ``teacher=`` an ``nn.Module`` or any ``--teacher`` spec; ``student=`` a family name, a spec or a
    callable ``width -> nn.Module``; ``data=`` a path or torch Datasets (``{"train", "val", "test"}``, val and
    test optional). ``callbacks`` receive every :class:`edgekd.events.Event`; ``verbose=False`` prints nothing.
    """
    from edgekd.pipeline import distill as run_pipeline

    cfg, objects = build_config(config, **overrides)
    if cfg.resume and cfg.out and (Path(cfg.out) / "config.json").is_file():
        saved = RunConfig.load(Path(cfg.out) / "config.json")
        saved.resume, saved.progress = True, cfg.progress
        cfg = saved
    datasets = objects.get("datasets")
    with _front(callbacks, verbose, cfg.progress):
        report = run_pipeline(cfg, teacher_module=objects.get("teacher_module"), datasets=datasets)
    return Run(Path(cfg.out), report, report.get("artifacts") or [], report.get("recommended"), cfg)


@contextlib.contextmanager
def _front(callbacks, verbose: bool, progress: bool):
    """The listeners of one API call: the caller's callbacks, and the rich renderer when verbose."""
    listeners = list(callbacks or [])
    if verbose:
        from edgekd.cli.render import RichRenderer

        with RichRenderer(progress=progress) as renderer, events.listening(*listeners, renderer):
            yield  # leaving the block stops any live progress bar, also on an error
        return
    with events.listening(*listeners), quiet():
        yield


@contextlib.contextmanager
def quiet():
    """Nothing reaches stdout or stderr, from Python or from C++ (exporters, runtimes), inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _run_dir(run) -> Path:
    return run.out if isinstance(run, Run) else Path(run)


@dataclass
class GateResult:
    """``edgekd gate`` as a value: ``passed`` and one check per budget and subject."""

    passed: bool
    checks: list
    result: object = None


def gate(*runs, verbose: bool = False, **budgets) -> GateResult:
    """Check runs or model files against budgets (``max_size_mb``, ``max_latency_ms``, ``min_accuracy``, ...)
    like ``edgekd gate``; pyproject.toml is not read."""
    from edgekd.gate import gate as run_gate, resolve_budgets

    values, _ = resolve_budgets(budgets, use_config=False)
    with _front(None, verbose, False):
        result = run_gate([str(_run_dir(r)) for r in runs], values, config=None)
    return GateResult(result.passed, list(result.results), result)


def report(run, *, verbose: bool = False) -> dict:
    """The run's report.json contents (checked against the schema)."""
    return Run.load(_run_dir(run)).report


def export(model, formats: Iterable[str] = ("onnx",), out: str | os.PathLike = "edgekd-export", *,
           example=None, calib=None, verbose: bool = False, **options) -> list:
    """Export a PyTorch module to ``formats`` in ``out`` (``example``: one input batch as a numpy array)."""
    import numpy as np

    from edgekd.export import ExportOptions, export_all

    if example is None:
        raise EdgeKDError("export needs example= (one input batch, e.g. np.zeros((1, 3, 32, 32), np.float32))",
                          "pass the input shape the model takes")
    example = np.asarray(example, np.float32)
    with _front(None, verbose, False):
        return export_all(model, list(formats), Path(out), example=example,
                          calib=np.asarray(calib if calib is not None else example, np.float32), parity_inputs=example,
                          progress=False, options=ExportOptions(**options))


def predict(arch: str = "cnn", *, target: str = "jetson-nano", num_classes: int = 10, input_shape=(1, 28, 28),
            width: float = 1.0, depth: int = 1):
    """The predicted latency of one student configuration on ``target`` (a Candidate with ``predicted_ms``)."""
    from edgekd.hardware import load_target
    from edgekd.hardware.select import evaluate_candidate

    return evaluate_candidate(arch, target=load_target(target), num_classes=num_classes,
                              input_shape=tuple(input_shape), width=width, depth=depth)


def search(arch: str = "cnn", *, target: str = "jetson-nano", budget_ms: float | None = None, num_classes: int = 10,
           input_shape=(1, 28, 28), widths=None, safe: bool = False):
    """The width selection ``edgekd distill`` would make for ``arch`` on ``target`` (a Selection)."""
    from edgekd.hardware import load_target, select_width
    from edgekd.models import search_widths

    tgt = load_target(target)
    return select_width(arch, tuple(widths or search_widths(arch)), target=tgt,
                        budget_ms=budget_ms if budget_ms is not None else tgt.budget_ms, num_classes=num_classes,
                        input_shape=tuple(input_shape), safe=safe)


def bench(run, *, seconds: float = 0.5, verbose: bool = False) -> list[dict]:
    """Latency of a run's artifacts on this machine (rows as in report.json); the run is not changed."""
    from edgekd.bench.measure import measure_latency
    from edgekd.bench.runners import load_runner
    import numpy as np

    r = Run.load(_run_dir(run))
    rows = []
    with _front(None, verbose, False):
        for art in r.artifacts:
            if art.get("status") != "ok" or not art.get("path") or art.get("role") not in (None, "student"):
                continue
            runner = load_runner(r.out / art["path"])
            shape = (1, *((r.report.get("data") or {}).get("input_shape") or (1, 28, 28)))
            stats = measure_latency(runner.run, np.zeros(shape, np.float32), time_budget_s=seconds)
            rows.append({"name": art["name"], "latency_ms": {"p50": stats.p50, "p90": stats.p90}})
    return rows
