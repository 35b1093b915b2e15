"""Chance checks: a teacher fed the wrong pixels, or a student that learned nothing, stops the run instead of shipping.

A model is *near chance* on a split of at least :data:`MIN_IMAGES` images when its accuracy is less
than a tenth of the way from chance (the most frequent class's share of the labels) to perfect. A teacher is *far below its record* when it keeps less than half of its
recorded accuracy above chance (an edgekd checkpoint records its test accuracy when it was trained).

Before anything trains (:func:`check_teacher`): a teacher near chance on the validation split, or far
below its record, is first shown the validation images at its other plausible input sizes (the
student's, the data's own, the one its weights record); the best of them is kept when it is clearly
better, and said so. If it is still near chance the run stops with the likely cause, unless
``--force``. After training (:func:`check_student`): a student near chance on the validation split
fails the run (report status "failed", exit 1, nothing recommended), unless ``--force``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd import events
from edgekd.errors import EdgeKDError

NEAR_CHANCE_FRACTION = 0.1   # of the way from chance to perfect
MIN_IMAGES = 20
FAR_BELOW_KEEPS = 0.5        # of the recorded accuracy above chance
VAL_SAMPLE = 512             # validation images each candidate input size is scored on
CLEARLY_BETTER = 0.05        # a candidate size replaces the configured one only when this much better


@dataclass(frozen=True)
class Verdict:
    """One model's validation accuracy against chance (and its record, where it has one)."""

    accuracy: float
    chance: float
    images: int
    recorded: float | None = None

    @property
    def near_chance(self) -> bool:
        return near_chance(self.accuracy, self.chance, self.images)

    @property
    def far_below_record(self) -> bool:
        return far_below(self.accuracy, self.recorded, self.chance)

    @property
    def failed(self) -> bool:
        return self.near_chance or self.far_below_record

    def describe(self) -> str:
        rec = f", {self.recorded:.1%} recorded when it was trained" if self.recorded is not None else ""
        return f"{self.accuracy:.1%} on {self.images} validation images (chance {self.chance:.1%}{rec})"

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "chance": self.chance, "images": self.images, "recorded": self.recorded,
                "near_chance": self.near_chance, "far_below_record": self.far_below_record}


def chance_accuracy(labels) -> float:
    """The accuracy of always answering the most frequent class."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 1.0


def near_chance(accuracy: float, chance: float, images: int) -> bool:
    """Below a tenth of the way from chance to perfect; on fewer than MIN_IMAGES nothing is judged (a
    handful of validation images cannot tell a student that learned from one that did not)."""
    return images >= MIN_IMAGES and accuracy < chance + NEAR_CHANCE_FRACTION * (1.0 - chance)


def far_below(accuracy: float, recorded: float | None, chance: float) -> bool:
    if recorded is None or recorded - chance < NEAR_CHANCE_FRACTION * (1.0 - chance):
        return False
    return accuracy - chance < FAR_BELOW_KEEPS * (recorded - chance)


def recorded_accuracy(path) -> float | None:
    """The test accuracy an edgekd checkpoint recorded when it was trained (None for anything else)."""
    import json
    from pathlib import Path

    try:
        from safetensors import safe_open

        if not Path(str(path)).is_file():
            return None
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("edgekd.meta", "{}"))
        value = float(meta["accuracy"])
        return value if 0.0 <= value <= 1.0 else None
    except Exception:  # noqa: BLE001 - not an edgekd checkpoint: nothing recorded
        return None


def validation_sample(splits, n: int = VAL_SAMPLE, seed: int = 0):
    """A seeded sample of at most ``n`` validation images (the split itself when it is small)."""
    from edgekd.data import ImageSet

    val = splits.val
    if len(val) <= n:
        return val
    idx = np.sort(np.random.default_rng(seed).permutation(len(val))[:n])
    if isinstance(val, ImageSet):
        return ImageSet(np.ascontiguousarray(val.rows(idx)), val.y[idx], "val-sample")
    return val.subset(idx, "val-sample")


def score(model, images, splits, device: str, size: int) -> float:
    """Accuracy of ``model`` on ``images`` at input ``size``; 0 where the model cannot take that size."""
    from edgekd.distill.evaluate import evaluate

    try:
        return float(evaluate(model.eval(), images, splits, device, size=size))
    except RuntimeError:
        return 0.0


def teacher_sizes(splits, info: dict, user_size: int | None) -> list[int]:
    """The input sizes worth trying on a teacher: the configured one first, then the student's, the data's
    own and the one its weights record. None where the user fixed it (or the teacher resizes itself)."""
    if user_size or info.get("image_size"):
        return []
    pre = splits.preprocessing
    sizes = [pre.teacher_size, pre.image_size, getattr(splits, "native_size", None), info.get("recorded_image_size")]
    return list(dict.fromkeys(int(s) for s in sizes if s))


def check_teacher(run) -> None:
    """The ``teacher`` stage hook: see the module docstring. ``run`` carries teacher, teacher_info, splits,
    device and cfg (force, data.teacher_image_size)."""
    info, splits = run.teacher_info, run.splits
    sample = validation_sample(splits)
    chance = chance_accuracy(sample.y)
    recorded = recorded_accuracy(info.get("path")) if info.get("source") == "user" else None
    if info.get("source") in ("trained", "cache") and info.get("val_accuracy") is not None:
        verdict = Verdict(float(info["val_accuracy"]), chance_accuracy(splits.val.y), len(splits.val))
    else:
        size = splits.preprocessing.teacher_size
        verdict = Verdict(score(run.teacher, sample, splits, run.device, size), chance, len(sample.y), recorded)
        if verdict.failed:
            verdict = _try_sizes(run, sample, verdict)
    info["sanity"] = verdict.to_dict()
    if not verdict.failed:
        return
    message, hint = _teacher_failure(run, verdict)
    if not getattr(run.cfg, "force", False):
        raise EdgeKDError(message, hint + ", or pass --force to distil from it anyway")
    events.warning(f"  {message} (--force: distilling from it anyway)")


def _try_sizes(run, sample, verdict: Verdict) -> Verdict:
    """Score the teacher at each candidate input size; keep the best when it is clearly better."""
    splits, info = run.splits, run.teacher_info
    sizes = teacher_sizes(splits, info, getattr(run.cfg.data, "teacher_image_size", None))
    if len(sizes) < 2:
        return verdict
    scores = {sizes[0]: verdict.accuracy}
    for size in sizes[1:]:
        scores[size] = score(run.teacher, sample, splits, run.device, size)
    best = max(scores, key=scores.get)
    table = ", ".join(f"{s} px {a:.1%}" for s, a in scores.items())
    info["input_size_trials"] = {str(s): a for s, a in scores.items()}
    if best == sizes[0] or scores[best] < verdict.accuracy + CLEARLY_BETTER:
        events.info(f"  teacher input sizes tried on {len(sample.y)} validation images: {table}; none clearly better")
        return verdict
    from edgekd.distill.evaluate import evaluate

    run.splits = splits.at_image_size(splits.preprocessing.image_size, teacher_image_size=best)
    info["accuracy"] = float(evaluate(run.teacher, run.splits.test, run.splits, run.device,
                                      size=run.splits.preprocessing.teacher_size))
    info["input_size_choice"] = {"chosen": best, "was": sizes[0], "trials": info.pop("input_size_trials")}
    events.info(f"  teacher input sizes tried on {len(sample.y)} validation images: {table}; the teacher sees "
                f"{best} px images (test accuracy {info['accuracy']:.4f}); --teacher-image-size fixes it")
    return Verdict(scores[best], verdict.chance, verdict.images, verdict.recorded)


def _teacher_failure(run, verdict: Verdict) -> tuple[str, str]:
    info, pre = run.teacher_info, run.splits.preprocessing
    if info.get("source") in ("trained", "cache"):
        return (f"the default teacher learned nothing on these data: {verdict.describe()}",
                "check that the labels follow from the images (a class per folder, no shuffled list), "
                "or pass a --teacher trained on them")
    what = "near chance" if verdict.near_chance else "far below its record"
    return (f"teacher {info.get('path')} is {what}: {verdict.describe()}; it sees {pre.teacher_size} px images "
            f"normalised with mean {','.join(f'{m:.3f}' for m in pre.mean)} ({pre.mean_source})",
            "give the input it was trained on: --teacher-image-size, --mean/--std, or a teacher trained on these "
            "classes in this order")


def check_student(run) -> None:
    """The ``train`` stage hook: a student near chance on the validation split fails the run (exit 1),
    unless ``--force``. ``run`` carries result (TrainResult), splits and cfg."""
    splits, result = run.splits, run.result
    verdict = Verdict(float(result.val_accuracy), chance_accuracy(splits.val.y), len(splits.val))
    run.student_sanity = verdict.to_dict()
    if not verdict.near_chance:
        return
    message = f"the student learned nothing: {verdict.describe()}"
    hint = ("try more --epochs, another --lr, or a smaller family (--student cnn); check the teacher's accuracy "
            "and that the labels follow from the images")
    if getattr(run.cfg, "force", False):
        events.warning(f"  {message} (--force: exporting it anyway)")
        return
    raise EdgeKDError(message, hint, exit_code=1)
