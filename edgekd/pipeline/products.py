"""What each stage of a run returns (one typed product per stage), and the record of one run's products.

A stage is a function of the products it needs: ``select_student(plan, data)`` returns a
:class:`SelectionProduct`, ``export_student(plan, splits, trained)`` an :class:`ExportProduct`... so each can be
called and tested alone. :class:`Run` is where ``run_stages`` keeps them, for the report, the failure report and
the stage hooks (``STAGE_HOOKS``), which read ``run.teacher``, ``run.teacher_info``, ``run.splits``,
``run.result``, ``run.device`` and ``run.cfg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the products name these types; the stages import them when they run
    from torch import nn

    from edgekd.config import RunConfig
    from edgekd.data import DataSplits
    from edgekd.distill.trainconfig import TrainConfig, TrainResult
    from edgekd.distill.worth import WorthCheck
    from edgekd.export.base import Artifact
    from edgekd.hardware.targets import Target
    from edgekd.pipeline.run import CtrlC
    from edgekd.models import ModelSpec


@dataclass(frozen=True)
class Plan:
    """What the run was asked for, checked before any data is read: the target, the run folder, the budget and
    the formats (``plan``)."""

    cfg: "RunConfig"
    device: str                  # where training runs: cpu, cuda...
    target: "Target"
    out: Path
    replace: bool                # the folder is to be replaced (--overwrite, or a failed run there)
    budget_ms: float
    formats: tuple[str, ...]


@dataclass(frozen=True)
class DataProduct:
    """The dataset split into train/val/calib/test and how its pixels become inputs (``load_data_stage``)."""

    splits: "DataSplits"

    @property
    def fingerprint(self) -> str:
        """One hash of the splits and their preprocessing (it reads every split: computed when asked)."""
        return self.splits.fingerprint()

    @property
    def views(self) -> dict:
        return self.splits.preprocessing.views()


@dataclass(frozen=True)
class SelectionProduct:
    """The candidates costed on the target and the one the run trains (``select_student``); ``splits`` are the
    data at the chosen candidate's image size."""

    selection: object            # edgekd.hardware.select.Selection (or its across-families form)
    family: str                  # the family the run trains
    splits: "DataSplits"

    @property
    def chosen(self):
        return self.selection.chosen

    def to_dict(self) -> dict:
        return self.selection.to_dict()


@dataclass(frozen=True)
class TeacherProduct:
    """The teacher ready to distil from (``load_teacher``): the module, its spec (None for ONNX or a caller's
    module) and what is known of it (accuracy, params, source; the ``teacher`` hook adds its sanity verdict)."""

    module: "nn.Module"
    spec: "ModelSpec | None"
    info: dict

    @property
    def path(self):
        return self.info.get("path")


@dataclass(frozen=True)
class WorthProduct:
    """The teacher against the student trained on the labels alone (``check_worth``)."""

    check: "WorthCheck"

    @property
    def worth(self) -> bool:
        return self.check.worth

    @property
    def message(self) -> str:
        return self.check.message

    def to_dict(self) -> dict:
        return self.check.to_dict()


@dataclass(frozen=True)
class TuneProduct:
    """``--tune``'s search (``tune``): the settings the student trains with, the study's record, and config.json
    as rewritten with them."""

    train_cfg: "TrainConfig"
    tuning: dict
    config: dict


@dataclass(frozen=True)
class TrainProduct:
    """The distilled student (``train_student``): the module, its spec, how it trained and where it was saved."""

    student: "nn.Module"
    spec: "ModelSpec"
    result: "TrainResult"
    train_cfg: "TrainConfig"
    checkpoint: Path             # <out>/student.safetensors
    teacher_file: str = "teacher.safetensors"   # the teacher's file in the run folder


@dataclass(frozen=True)
class ExportProduct:
    """Every exported file, quantized or not, with its status (``export_student``)."""

    artifacts: list["Artifact"]


@dataclass(frozen=True)
class BenchProduct:
    """The measured rows of every artifact, the recommended one and the data record as counted by now
    (``bench_artifacts``)."""

    rows: list[dict]
    recommended: dict | None
    data: dict


@dataclass(frozen=True)
class CompareProduct:
    """``--compare``'s baselines, as role "baseline" rows beside the student's (``run_baselines``)."""

    rows: list[dict]


@dataclass(frozen=True)
class ReportProduct:
    """report.json (and its renderings) as written (``write_report``)."""

    report: dict
    paths: dict


@dataclass
class Run:
    """One run's products, stage by stage, as ``run_stages`` composes them."""

    cfg: "RunConfig"
    device: str
    seconds: dict = field(default_factory=dict)
    stage: str = "plan"                          # the stage running now (a failure report names it)
    plan: Plan | None = None
    data: DataProduct | None = None
    selection: SelectionProduct | None = None
    teacher_product: TeacherProduct | None = None
    splits: "DataSplits | None" = None           # the data as the stages so far left it (image sizes)
    train_cfg: "TrainConfig | None" = None       # the student's settings: the family's recipe, then --tune's
    worth: WorthProduct | None = None
    tuned: TuneProduct | None = None
    config: dict = field(default_factory=dict)   # config.json as written
    trained: TrainProduct | None = None
    student_sanity: dict | None = None           # the ``train`` hook: the student's accuracy against chance
    exported: ExportProduct | None = None
    bench: BenchProduct | None = None
    report: dict = field(default_factory=dict)
    ctrl_c: "CtrlC | None" = None                # the Ctrl-C watch run_stages holds for the run (never set outside it)

    @property
    def target(self):
        return self.plan.target if self.plan is not None else None

    @property
    def out(self) -> Path | None:
        return self.plan.out if self.plan is not None else None

    @property
    def arch(self) -> str:
        return self.selection.family if self.selection is not None else (self.cfg.student.family or "cnn")

    @property
    def teacher(self):
        return self.teacher_product.module if self.teacher_product is not None else None

    @property
    def teacher_info(self) -> dict:
        return self.teacher_product.info if self.teacher_product is not None else {}

    @property
    def result(self):
        return self.trained.result if self.trained is not None else None
