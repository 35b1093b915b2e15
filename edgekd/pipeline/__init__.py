"""The whole job as stages: plan -> data -> select -> teacher -> worth -> tune -> train -> export -> bench ->
compare -> report.

Each stage is a function of the products it needs that returns its own typed product
(:mod:`edgekd.pipeline.products`), so each can be called alone::

    plan = prepare.plan(cfg)                       # Plan: target, run folder, budget, formats
    data = prepare.load_data_stage(cfg)            # DataProduct: the splits
    selection = prepare.select_student(plan, data) # SelectionProduct: the chosen candidate
    exported = results.export_student(plan, selection.splits, trained)   # ExportProduct: the artifacts

:func:`run_stages` composes them into one run (``edgekd distill``); the stages before the run folder live in
:mod:`~edgekd.pipeline.prepare`, tune and train in :mod:`~edgekd.pipeline.training`, export, bench and the report
in :mod:`~edgekd.pipeline.results`, the composition in :mod:`~edgekd.pipeline.run`.
"""

from __future__ import annotations

from edgekd.pipeline.prepare import (  # noqa: F401  (the stages, importable from edgekd.pipeline)
    BASE_FORMATS, check_feature_pairs, check_worth, data_request, default_formats, load_data_stage, load_teacher,
    plan, resolve_device, resume_hint, searches_families, select_student, student_spec, train_config)
from edgekd.pipeline.products import (  # noqa: F401
    BenchProduct, CompareProduct, DataProduct, ExportProduct, Plan, ReportProduct, Run, SelectionProduct,
    TeacherProduct, TrainProduct, TuneProduct, WorthProduct)
from edgekd.pipeline.results import (  # noqa: F401
    DATA_SPLITS_FILE, base_report, bench_artifacts, export_student, run_baselines, write_report)
from edgekd.pipeline.run import STAGE_HOOKS, distill, run_stages, sweep  # noqa: F401
from edgekd.pipeline.training import (  # noqa: F401
    build_student, create_out_dir, save_teacher, tune, train_student, write_config)

_train_config = train_config  # the name tests/test_recipes.py imports
