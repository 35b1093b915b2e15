"""``edgekd distill``: the whole job, from teacher to a measured, exported student."""

from __future__ import annotations

import click

from edgekd.cli import option_defaults
from edgekd.pipeline import DistillOptions

# Defaults come from the options dataclasses: DistillOptions here, TrainConfig for the training modes
# (TrainOption, read when needed: importing TrainConfig imports torch). resume_command reads them too.
D = option_defaults(DistillOptions)


class TrainOption(click.Option):
    """An option whose default is TrainConfig's field of the same name, looked up only when click needs it."""

    def get_default(self, ctx, call=True):
        from edgekd.distill import TrainConfig

        return getattr(option_defaults(TrainConfig), self.name)


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def _is_compute(name: str) -> bool:
    return name in ("auto", "cpu", "cuda") or name.startswith("cuda:")


def _split_device(device: str, train_device: str | None, remote: str | None) -> tuple[str, str | None]:
    """--device is where to train (auto/cpu/cuda) or, any other name, a device to measure on."""
    from edgekd.errors import EdgeKDError

    if _is_compute(device):
        if train_device is not None:
            raise EdgeKDError("--train-device goes with --device NAME (a measuring device)",
                              f"use --device {train_device} alone to choose where to train")
        return device, remote
    if remote is not None and remote != device:
        raise EdgeKDError(f"--device {device} and --remote-device {remote} name two devices", "give one")
    from edgekd.devices.store import get_device

    try:
        get_device(device)
    except EdgeKDError as err:
        raise EdgeKDError(f"--device {device!r} is neither where to train (auto, cpu, cuda[:N]) nor a device to measure "
                          f"on: {err.message}", err.hint) from None
    return train_device or "auto", device


def _names(ctx, param, value):
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("distill")
@click.option("--target", "-t", default=D.target, show_default=True, help="Device profile name (see `edgekd targets`) or a profile YAML file.")
@click.option("--out", "-o", type=click.Path(), help="Run folder (default: edgekd-runs/<target>-<time>).")
@click.option("--data", type=click.Path(), help="IDX folder, ImageFolder tree (train/, val/) or .npz (default: packaged MNIST).")
@click.option("--teacher", multiple=True, help="Teacher: an edgekd .safetensors, torchvision:NAME or timm:NAME (with --teacher-weights), path/to/file.py:factory, or model.onnx; repeat for an ensemble; default: train once and cache.")
@click.option("--teacher-weights", type=click.Path(), multiple=True, help="State dict (.pth/.pt read with weights_only=True, or .safetensors) for a torchvision:/timm:/file.py: teacher; one per such teacher, in order.")
@click.option("--student", default=D.student, show_default=True, help="Student family (cnn, mlp, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0, mnasnet, shufflenet_v2, regnet, resnet), timm:NAME, or path/to/file.py:factory taking width=.")
@click.option("--student-weights", type=click.Path(), help="Start the student from these weights (transfer): every tensor whose shape fits is loaded.")
@click.option("--image-sizes", callback=lambda c, p, v: None if v is None else tuple(int(x) for x in _floats(c, p, v)), help="Candidate student input sizes for the selection, e.g. 160,192,224.")
@click.option("--feature-pairs", help="Feature/attention loss pairs, e.g. student.features.6:teacher.layer2,... (default: paired by stride).")
@click.option("--compare", callback=_names, help="Baselines beside the distilled student: scratch (labels only, same budget), teacher-int8.")
@click.option("--image-size", type=int, help="Student input in pixels (default: the data's own size; image folders: the median, at most 224).")
@click.option("--teacher-image-size", type=int, help="Teacher input in pixels (default: the teacher's own, else --image-size); it sees the same crop, resized.")
@click.option("--mean", callback=_floats, help="Normalisation mean per channel, e.g. 0.485,0.456,0.406 (default: the teacher's, else measured on training images).")
@click.option("--std", callback=_floats, help="Normalisation std per channel, e.g. 0.229,0.224,0.225 (with --mean).")
@click.option("--workers", type=int, help="Processes decoding image files (default: CPU cores - 1; 0 decodes in the main process).")
@click.option("--strict", is_flag=True, help="Warnings are errors: stop at the first image file that will not decode (default: skip it, count it in the report), and when the teacher is not clearly better than the student trained alone (default: a warning).")
@click.option("--crop-scale", callback=_floats, help="Image files: area fraction of the random training crops, MIN[,MAX] (default 0.08,1).")
@click.option("--flip/--no-flip", default=None, help="Image files: random horizontal flips in training (default: on, with the crops).")
@click.option("--budget-ms", type=float, help="Latency budget on the target in ms (default: the target's).")
@click.option("--epochs", type=int, help="Distillation epochs.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--device", default=D.device, show_default=True,
              help="Where to train (auto, cpu, cuda[:N]); or a device added with `edgekd devices add`: measure the "
                   "student there and close the loop (recalibrate, re-select, re-distil).")
@click.option("--train-device", default=None, help="Where to train when --device names a measuring device (auto, cpu, cuda).")
@click.option("--remote-device", default=None, hidden=True)
@click.option("--max-rounds", type=int, default=D.max_rounds, show_default=True,
              help="With --device NAME: at most this many distil-and-measure rounds.")
@click.option("--temperature", "-T", type=float, default=D.temperature, show_default=True, help="Softmax temperature of the soft targets.")
@click.option("--alpha", type=float, default=D.alpha, show_default=True, help="Weight of the distillation loss against the hard-label loss.")
@click.option("--loss", default=D.loss, show_default=True, help="Distillation loss(es), e.g. kd, dkd, kd+at:0.5.")
@click.option("--mode", cls=TrainOption, type=click.Choice(["offline", "online", "self"]), show_default=True, help="offline: frozen teacher; online: teacher and student learn together; self: born-again generations.")
@click.option("--temperature-end", type=float, help="Anneal the temperature linearly from -T to this value.")
@click.option("--assistant-width", type=float, help="Teacher-assistant: distil teacher -> this width -> student.")
@click.option("--generations", cls=TrainOption, type=int, show_default=True, help="Born-again generations (--mode self).")
@click.option("--finetune-epochs", cls=TrainOption, type=int, show_default=True, help="Two-stage: fine-tune on labels alone afterwards.")
@click.option("--augment/--no-augment", default=None, help="Arrays: random shifts (teacher logits of the clean image stay cached). Image files are augmented by default (random crops + flips, the teacher seeing the same crop); --augment makes the teacher see the clean image (its outputs cached), --no-augment turns crops and flips off.")
@click.option("--consistent", is_flag=True, help="With --augment: the teacher labels each shifted image itself (no logit cache, slower; closes more of the gap).")
@click.option("--mixup", cls=TrainOption, type=float, show_default=True, help="Mixup with Beta(a, a) weights, the teacher labelling each blend (0: off).")
@click.option("--batch-size", type=int, help="Training batch size.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--widths", callback=_floats, help="Candidate width multipliers, e.g. 0.25,0.5,1,2.")
@click.option("--width", type=float, help="Skip the search and distil this width.")
@click.option("--formats", callback=_names, help="Export formats (default: onnx, ort-int8, openvino-fp16, openvino-int8, plus the target's runtime).")
@click.option("--max-drop", type=float, default=D.max_drop * 100, show_default=True, help="Largest accuracy drop, in points, a quantized artifact may have vs the FP32 student.")
@click.option("--threads", type=int, help="CPU threads for training and benchmarking.")
@click.option("--safe", is_flag=True, help="Choose the width by the upper end of each candidate's latency interval (learned from the held-out errors of the target's calibration), not the prediction.")
@click.option("--bench-seconds", type=float, default=D.bench_seconds, show_default=True, help="Time spent measuring each artifact's latency.")
@click.option("--tune", type=int, default=D.tune, show_default=True, help="Search temperature, alpha, loss and learning rate with this many trials on the validation split first (Optuna: pip install \"edgekd[tune]\").")
@click.option("--tune-minutes", type=float, default=D.tune_minutes, show_default=True, help="Time budget of the --tune search.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bars (CI logs).")
def command(**kw):
    """Pick the widest student that fits TARGET's latency budget, distil, export, measure, report."""
    from edgekd.pipeline import distill

    kw["progress"] = not kw.pop("no_progress")
    kw["device"], kw["remote_device"] = _split_device(kw["device"], kw.pop("train_device"), kw["remote_device"])
    kw["max_drop"] = kw["max_drop"] / 100.0  # points on the command line, a fraction in the library
    for name in ("teacher", "teacher_weights"):
        kw[name] = list(kw[name]) if len(kw[name]) > 1 else (kw[name][0] if kw[name] else None)
    extra = {"mode": kw.pop("mode"), "generations": kw.pop("generations"),
             "finetune_epochs": kw.pop("finetune_epochs")}
    for name in ("temperature_end", "assistant_width", "feature_pairs"):
        if kw[name] is not None:
            extra[name] = kw[name]
        kw.pop(name)
    consistent = kw.pop("consistent")
    augment = kw.pop("augment")
    if augment is False:
        kw["photo_augment"] = False
    if augment:
        extra.update(augment=True, teacher_view="same" if consistent else "clean")
    elif consistent:
        from edgekd.errors import EdgeKDError

        raise EdgeKDError("--consistent needs --augment", "add --augment, or drop --consistent")
    mixup = kw.pop("mixup")
    if mixup:
        extra["mixup"] = mixup
    distill(DistillOptions(extra=extra, **kw))
