"""The stages before the run folder exists: plan -> data -> select -> teacher -> worth.

Each returns its own product (:mod:`edgekd.pipeline.products`) and says what it does through
:mod:`edgekd.events`; anything that can refuse the run refuses it here, before a folder is written.
"""

from __future__ import annotations

from pathlib import Path

from edgekd import events
from edgekd.config import RunConfig
from edgekd.errors import EdgeKDError
from edgekd.pipeline.products import DataProduct, Plan, SelectionProduct, TeacherProduct, WorthProduct
from edgekd.rundir import default_out_dir, prepare_out_dir

# Formats every run exports; a target's runtime adds its own (``export_formats`` of its descriptor).
BASE_FORMATS = ("onnx", "ort-int8", "openvino-fp16", "openvino-int8")


def default_formats(target) -> list[str]:
    """The base formats plus the target runtime's own, keeping only those this install registers."""
    from edgekd.export import FORMATS
    from edgekd.runtimes import RUNTIMES

    own = RUNTIMES.get(target.runtime).export_formats if target.runtime in RUNTIMES else ()
    wanted = BASE_FORMATS + tuple(f for f in own if f not in BASE_FORMATS)
    return [name for name in wanted if name in FORMATS]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeKDError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu or auto")
    return device


def resume_hint(cfg: RunConfig) -> str:
    return f"resume with: edgekd distill --resume --out {cfg.out}" if cfg.out else "resume with --resume --out RUN"


def searches_families(family: str | None) -> bool:  # `--student auto` or `--student a,b,c`
    return bool(family) and (family == "auto" or "," in family)


def plan(cfg: RunConfig, device: str | None = None) -> Plan:
    """Everything that can reject the run, checked before any data is read or any folder created.

    ``device`` is the resolved training device (default: ``cfg.device.train`` resolved here). ``cfg.out`` is set
    to the run folder, so that an interrupted run's resume hint names it.
    """
    from edgekd.export import resolve_formats
    from edgekd.hardware import load_target

    device = device or resolve_device(cfg.device.train)
    target = load_target(cfg.target)
    out = Path(cfg.out) if cfg.out else default_out_dir(target.name)
    cfg.out = str(out)
    replace = prepare_out_dir(out, overwrite=cfg.overwrite, resume=cfg.resume)
    budget_ms = cfg.selection.budget_ms if cfg.selection.budget_ms is not None else target.budget_ms
    formats = resolve_formats(list(cfg.export.formats) if cfg.export.formats else default_formats(target))
    return Plan(cfg=cfg, device=device, target=target, out=out, replace=replace, budget_ms=budget_ms,
                formats=tuple(formats))


def load_data_stage(cfg: RunConfig, datasets=None) -> DataProduct:
    """The run's data: ``cfg.data.path`` (or the packaged MNIST), or the caller's torch ``datasets``."""
    if datasets is not None:
        from edgekd.api_data import splits_from_datasets

        splits = splits_from_datasets(datasets, cfg, request=data_request(cfg))
    else:
        from edgekd.data import load_data

        d = cfg.data
        splits = load_data(d.path, seed=cfg.seed, request=data_request(cfg), workers=d.workers, strict=d.strict,
                           progress=cfg.progress, dedupe=d.dedupe)
    pre = splits.preprocessing
    events.info(f"  {splits.name}: {len(splits.train.y)} train / {len(splits.val.y)} val / "
                f"{len(splits.calib.y)} calib / {len(splits.test.y)} test, "
                f"{splits.num_classes} classes, input {tuple(splits.input_shape)}"
                + (f", teacher input {pre.teacher_size} px" if pre.teacher_size != pre.image_size else ""))
    events.info(f"  pixels: {pre.resize_rule}; mean {_floats(pre.mean)} std {_floats(pre.std)} ({pre.mean_source})"
                + (f"; training crops {pre.crop_scale[0]:g}-{pre.crop_scale[1]:g} of the area"
                   f"{' + flips' if pre.flip else ''}; {splits.workers} loader worker(s)" if splits.kind == "files" else ""))
    for note in splits.notes:  # empty class folders, unreadable files: one line each, before any training
        events.warning(f"  {note}")
    return DataProduct(splits)


def image_sizes(cfg: RunConfig) -> list[int] | None:
    return ([cfg.data.image_size] if cfg.data.image_size else list(cfg.selection.image_sizes or [])) or None


def describe_selection(cfg: RunConfig) -> str:
    """What the select stage chooses, for its banner: "cnn student's width", "student's family, width and image size"."""
    sizes = image_sizes(cfg)
    choosing = "student's family," if searches_families(cfg.student.family) else f"{cfg.student.family or 'cnn'} student's"
    return f"{choosing} width" + (" and image size" if sizes and len(sizes) > 1 else "")


def select_student(plan: Plan, data: DataProduct) -> SelectionProduct:
    """Cost the candidate students on the target and choose the one the run trains (the widest that fits the
    budget, or the ``--width`` asked for); the data come back at the chosen image size."""
    from edgekd.hardware import select_width
    from edgekd.hardware.select import judged_ms
    from edgekd.models import search_widths

    cfg, splits, budget_ms, sel = plan.cfg, data.splits, plan.budget_ms, plan.cfg.selection
    shape = dict(num_classes=splits.num_classes, input_shape=tuple(splits.input_shape), image_sizes=image_sizes(cfg),
                 safe=sel.safe)
    if searches_families(cfg.student.family):
        return _select_across_families(plan, splits, shape)
    arch = cfg.student.family or "cnn"
    if sel.width is not None:
        # The user fixed the width (or `edgekd sweep` did): cost it, judge it, distil it anyway.
        selection = select_width(arch, (sel.width,), target=plan.target, budget_ms=float("1e12"), **shape)
        selection.budget_ms = budget_ms
        for cand in selection.candidates:
            cand.fits = judged_ms(cand, sel.safe) <= budget_ms
    else:
        selection = select_width(arch, tuple(sel.widths or search_widths(arch)), target=plan.target,
                                 budget_ms=budget_ms, **shape)
    _selection_table(selection)
    if not selection.chosen.fits:
        events.warning(f"  width {selection.chosen.width:g} is over the {budget_ms:g} ms budget "
                       f"({selection.chosen.predicted_ms:.3f} ms): distilling it because --width asked for it")
    return SelectionProduct(selection, arch, _at_chosen_size(splits, selection))


def _at_chosen_size(splits, selection):
    # The chosen size (from --image-sizes) for the student; the teacher keeps its own, or follows the student's.
    return splits.at_image_size(selection.chosen.image_size, teacher_image_size=splits.preprocessing.teacher_image_size)


def _select_across_families(plan: Plan, splits, shape: dict) -> SelectionProduct:
    """`--student auto|a,b,c`: every family at the target's precision; the run trains the chosen family."""
    from edgekd.hardware.select import select_student as search_families

    sel, target, budget_ms = plan.cfg.selection, plan.target, plan.budget_ms
    selection = search_families(plan.cfg.student.family, target=target, budget_ms=budget_ms, widths=sel.widths,
                                precisions=[target.precision], **shape)
    if not selection.chosen.fits:
        raise EdgeKDError(f"no candidate of {', '.join(selection.families)} fits the {budget_ms:g} ms budget on "
                          f"{target.name} (fastest {min(c.predicted_ms for c in selection.candidates):.3f} ms)",
                          "raise --budget-ms, lower --image-sizes, or name smaller families with --student a,b")
    family = selection.chosen.family
    _selection_table(selection)
    events.info(f"  chosen across {len(selection.families)} families: {family} width {selection.chosen.width:g}")
    return SelectionProduct(selection, family, _at_chosen_size(splits, selection))


def load_teacher(plan: Plan, splits, module=None) -> TeacherProduct:
    """The teacher: the caller's ``module``, else ``--teacher`` (a file, a source spec, an ensemble), else one
    trained on the data (cached by the data's fingerprint)."""
    cfg = plan.cfg
    if module is not None:
        from edgekd.api_data import given_teacher

        teacher, spec, info = given_teacher(module, splits, plan.device)
    else:
        from edgekd.distill import get_teacher

        teacher, spec, info = get_teacher(
            splits, teacher_path=cfg.teacher.spec, teacher_weights=cfg.teacher.weights, progress=cfg.progress,
            device=plan.device, temperature=cfg.train.temperature, teacher_image_size=cfg.data.teacher_image_size)
    events.info(f"  teacher {_describe_teacher(spec, info)}: {info['params']:,} params, "
                f"test accuracy {info['accuracy']:.4f}{' (cached)' if info.get('cached') else ''}")
    if info.get("stop_reason"):
        events.info(f"  trained {info['epochs']} epochs, kept epoch {info['best_epoch']} "
                    f"(val {info['val_accuracy']:.2%}); stopped: {info['stop_reason']}")
    return TeacherProduct(teacher, spec, info)


def student_spec(selection: SelectionProduct, splits):
    """The spec of the chosen student for ``splits`` (its classes and input size)."""
    from edgekd.models import family_spec as _family_spec

    chosen = selection.chosen
    return _family_spec(selection.family, splits.num_classes, tuple(splits.input_shape), width=chosen.width,
                        depth=chosen.depth)


def check_worth(plan: Plan, splits, teacher: TeacherProduct, selection: SelectionProduct, train_cfg) -> WorthProduct:
    """The student trained alone against the teacher on validation: a warning, or with --strict an error
    (before any folder is written)."""
    from edgekd.distill.worth import check_teacher_worth, refuse_unless_worth

    check = check_teacher_worth(teacher.module, splits, student_spec(selection, splits), train_cfg,
                                progress=plan.cfg.progress)
    cached = ", cached" if check.probe.get("cached") else ""
    events.info(f"  student alone ({check.probe['epochs']} epochs, labels only{cached}): {check.message}")
    if plan.cfg.data.strict:
        refuse_unless_worth(check)
    if not check.worth:
        events.warning("warning: the teacher is not clearly better than the student trained alone: "
                       "distillation has little to give (pass a stronger --teacher; --strict makes this an error)")
    return WorthProduct(check)


def check_feature_pairs(cfg: RunConfig, splits, chosen, teacher, device: str, arch: str | None = None) -> None:
    """Feature losses: pair the stages now (one probe image), so an impossible pairing or an ONNX teacher
    is refused before the run folder exists and anything trains."""
    from edgekd.distill.losses import build_loss

    tc = train_config(cfg, device)
    if not build_loss(tc.loss).needs_features:
        return
    import numpy as np
    import torch

    from edgekd.distill.features import pair_stages
    from edgekd.models import family_spec

    student = family_spec(arch or cfg.student.family or "cnn", splits.num_classes, tuple(splits.input_shape),
                          width=chosen.width, depth=chosen.depth).build()
    example = torch.from_numpy(np.asarray(splits.normalized("test")[:2]))
    teacher_view = torch.from_numpy(np.asarray(splits.normalized("test", size=splits.preprocessing.teacher_size)[:2]))
    pair_stages(student, teacher.cpu(), example, teacher_view, explicit=tc.feature_pairs)


def train_config(cfg: RunConfig, device: str, arch: str | None = None):
    """The run's TrainConfig; with ``arch``, that family's recipe (edgekd.distill.recipes) where the user set nothing."""
    from edgekd.distill import TrainConfig

    tc = TrainConfig(**cfg.train_overrides(device))
    if arch is None:
        return tc
    from edgekd.distill.recipes import apply_recipe

    return apply_recipe(tc, arch, given=[k for k in ("lr",) if getattr(cfg.train, k) is not None])


def data_request(cfg: RunConfig):
    """What the run asks of the pixels: the user's options, then the teacher's own preprocessing."""
    from edgekd.data import PreprocessRequest
    from edgekd.data.preprocess import teacher_preprocess

    own, d, spec = {}, cfg.data, cfg.teacher.spec
    teacher = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if teacher:
        own = teacher_preprocess(str(teacher)) or {}
    user_norm = d.mean is not None
    mean = tuple(d.mean) if user_norm else own.get("mean")
    std = tuple(d.std) if d.std is not None else own.get("std")
    return PreprocessRequest(
        image_size=d.image_size, teacher_image_size=d.teacher_image_size or own.get("image_size"),
        mean=mean, std=std, mean_source="user" if user_norm else f"teacher ({own.get('source', teacher)})",
        crop_pct=own.get("crop_pct"), interpolation=own.get("interpolation"),
        photo_augment=False if d.augment is False else None, crop_scale=_crop_scale(d.crop_scale), flip=d.flip)


def _crop_scale(value):
    if value is None:
        return None
    value = tuple(float(v) for v in value)
    return (value[0], 1.0) if len(value) == 1 else value


def _floats(values) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def _describe_teacher(spec, info: dict) -> str:
    if spec is None or spec.arch.startswith(("torchvision:", "timm:")):
        return str(info.get("path"))
    return f"{spec.arch} width {spec.width:g} depth {spec.depth:g}"


def _selection_table(selection) -> None:
    safe = ", judged by the interval's upper end (--safe)" if selection.safe else ""
    rows = []
    for c in selection.candidates:
        mark = "◀ chosen" if c is selection.chosen else ("yes" if c.fits else "no")
        interval = (f"{c.predicted_low_ms:.3f}-{c.predicted_high_ms:.3f}" if c.predicted_high_ms is not None
                    and c.predicted_high_ms != c.predicted_ms else "")
        rows.append([f"{c.width:g}", f"{c.params:,}", f"{c.flops / 1e6:.2f}", f"{c.predicted_ms:.3f}", interval, mark])
        events.emit("candidate_costed", f"width {c.width:g}: {c.predicted_ms:.3f} ms", family=selection.arch
                    if hasattr(selection, "arch") else None, width=c.width, depth=getattr(c, "depth", None),
                    image_size=getattr(c, "image_size", None), predicted_ms=c.predicted_ms, fits=c.fits)
    events.table(f"Candidate students ({selection.latency_source}, budget {selection.budget_ms:g} ms{safe})",
                 ["width", "params", "MFLOPs", "latency ms", "interval ms", "fits"], rows)
