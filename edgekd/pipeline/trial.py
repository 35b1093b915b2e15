"""The selection checked on the user's data: the best candidates of the leading families trained for real.

The accuracy proxy ranks families by what they reach on ImageNet (hundreds of epochs on a million images).
On a small folder and a short schedule the ranking can turn over: a depthwise-separable network that wins on
ImageNet may not train at all in a few hundred steps where a plain residual network does. So where the run
searches several families (``--student auto`` or ``a,b,c``), the ``trial`` stage trains the candidate each of
the ``--trial`` leading families would ship (the proxy's pick first; the teacher's own family, when it is a
registered one that fits, takes the last place: a student of the teacher's architecture is the one users
and the distillation literature expect to learn from it best) on the labels alone, with the run's own budget
and each family's recipe, and scores them on the validation split. The proxy's pick is kept unless
another is clearly better, by the same paired test the worth check uses (of the validation images exactly
one of the two gets right, the other must win ``WORTH_Z`` standard errors more); among those clearly better,
the most accurate. The pick's trial is the worth check's "student alone" (the same cached run).

One training run per candidate is one draw of its training noise. Where a challenger is ahead of the pick
but not clearly (``SECOND_LOOK_Z`` <= z < ``WORTH_Z``), the trial takes a second look before it decides:
the pick and each such challenger are trained again with the next seed, and the test is repeated on the
pooled pairs (every validation image once per seed). A real gap then grows by about sqrt(2) standard
errors and a lucky one shrinks; candidates that are plainly behind or plainly ahead cost no second run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd import events


@dataclass
class TrialEntry:
    family: str
    width: float
    depth: float
    image_size: int | None
    predicted_ms: float
    accuracy_proxy: float | None
    val_accuracy: float
    z_vs_proxy_pick: float      # the paired test against the proxy's pick (0 for the pick itself)
    seconds: float
    cached: bool
    seeds: int = 1              # training runs pooled in the test (2 after a second look)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def trial_candidates(selection, k: int, prefer: str | None = None) -> list:
    """The candidate each of the ``k`` leading families would ship (``choose`` within the family), the proxy's
    pick first, then by the same ranking; ``prefer`` (the teacher's family) takes the last place when it has a
    candidate that fits and the ranking left it out."""
    from edgekd.hardware.select import capability, choose

    fitting = [c for c in selection.candidates if c.fits]
    best = {}
    for family in dict.fromkeys(c.family for c in fitting):
        best[family] = choose([c for c in fitting if c.family == family])
    others = sorted((c for f, c in best.items() if f != selection.chosen.family), key=capability, reverse=True)
    picked = [selection.chosen] + others[:max(0, k - 1)]
    if k >= 2 and prefer in best and best[prefer] not in picked:
        picked = picked[:k - 1] + [best[prefer]]
    return picked


def teacher_family(spec, module=None) -> str | None:
    """The registered student family the teacher belongs to, if any: its spec's family, a torchvision/timm
    model name's longest registered prefix (``torchvision:resnet18`` -> ``resnet``), else the module's class."""
    from edgekd.models import families

    names = sorted(families(), key=len, reverse=True)
    arch = getattr(spec, "arch", None) or (type(module).__name__ if module is not None else "")
    arch = str(arch).split(":")[-1].lower()
    if arch in names:
        return arch
    return next((f for f in names if arch.startswith(f.replace("_", "")) or arch.startswith(f)), None)


def run_trial(selection, splits, k: int, train_config, *, prefer: str | None = None, progress: bool = False,
              cache_dir=None) -> tuple[object, list[TrialEntry]]:
    """Train the picks of ``selection``'s ``k`` leading families on the labels (each run cached beside the
    teachers, or in ``cache_dir``), compare them on validation; returns (the candidate to distil, the entries).
    ``splits`` are the data at their own size; ``train_config(family)`` the run's TrainConfig for a family."""
    from dataclasses import replace

    from edgekd.distill.worth import scratch_predictions
    from edgekd.models import family_spec

    cands = trial_candidates(selection, k, prefer)

    def trained(i: int, seed_offset: int = 0):
        cand = cands[i]
        at = splits.at_image_size(cand.image_size, teacher_image_size=splits.preprocessing.teacher_image_size)
        spec = family_spec(cand.family, at.num_classes, tuple(at.input_shape), width=cand.width, depth=cand.depth)
        events.info(f"  trial {i + 1}/{len(cands)}{' (second seed)' if seed_offset else ''}: {cand.family} width "
                    f"{cand.width:g}{f' depth {cand.depth:g}' if cand.depth != 1 else ''} at {at.input_shape[-1]} px, "
                    f"labels only")
        cfg = train_config(cand.family)
        if seed_offset:
            cfg = replace(cfg, seed=cfg.seed + seed_offset)
        pred, probe = scratch_predictions(at, spec, cfg, cache_dir=cache_dir, progress=progress)
        return pred, np.asarray(at.labels("val")), probe

    runs = [[trained(i)] for i in range(len(cands))]
    entries = [_entry(cands[i], runs[i], runs[0]) for i in range(len(cands))]
    second = second_look(entries)
    if second:
        events.info(f"  {', '.join(entries[i].family for i in second)} ahead of the proxy's pick but not clearly: "
                    "a second seed for "
                    f"{'them' if len(second) > 1 else 'it'} and the pick")
        for i in [0] + second:
            runs[i].append(trained(i, seed_offset=1))
        entries = [_entry(cands[i], runs[i], runs[0]) for i in range(len(cands))]
    return cands[decide(entries)], entries


def _entry(cand, runs: list, pick_runs: list) -> TrialEntry:
    """A candidate's entry from its runs (one per seed) against the proxy's pick's runs of the same seeds,
    the pairs pooled over seeds (the pick against itself: z 0)."""
    from edgekd.distill.worth import compare

    seeds = min(len(runs), len(pick_runs))
    mine, theirs, labels = [], [], []
    for (pred, y, _), (first, _, _) in zip(runs[:seeds], pick_runs[:seeds]):
        n = min(len(pred), len(first), len(y))  # image files that did not decode
        mine.append(pred[:n]), theirs.append(first[:n]), labels.append(y[:n])
    probe = runs[0][2]
    check = compare(np.concatenate(mine), np.concatenate(theirs), np.concatenate(labels), probe)
    return TrialEntry(cand.family, cand.width, cand.depth, cand.image_size, cand.predicted_ms, cand.accuracy_proxy,
                      check.teacher_val_accuracy, float(check.z),
                      float(sum(r[2].get("seconds", 0.0) for r in runs[:seeds])),
                      all(bool(r[2].get("cached")) for r in runs[:seeds]), seeds)


# A challenger at least this many standard errors ahead of the proxy's pick, but short of WORTH_Z, earns
# both a second training run before the trial decides (see the module docstring).
SECOND_LOOK_Z = 1.0


def second_look(entries: list[TrialEntry]) -> list[int]:
    """The challengers ahead of the proxy's pick but not clearly (SECOND_LOOK_Z <= z < WORTH_Z), each run once."""
    from edgekd.distill.worth import WORTH_Z

    return [i for i, e in enumerate(entries) if i and e.seeds == 1 and SECOND_LOOK_Z <= e.z_vs_proxy_pick < WORTH_Z]


def decide(entries: list[TrialEntry]) -> int:
    """The entry to distil: the proxy's pick (entry 0) unless others are clearly better than it on validation
    (z >= WORTH_Z); then the most accurate of those, the earlier (higher-ranked) one on a tie."""
    from edgekd.distill.worth import WORTH_Z

    better = [i for i, e in enumerate(entries) if i and e.z_vs_proxy_pick >= WORTH_Z]
    return max(better, key=lambda i: (entries[i].val_accuracy, -i)) if better else 0


def applies(plan, product) -> bool:
    """Several families searched, ``--trial`` >= 2 and at least two of them with a candidate that fits."""
    from edgekd.pipeline.prepare import searches_families

    k = plan.cfg.selection.trial
    return (k >= 2 and searches_families(plan.cfg.student.family) and plan.cfg.selection.width is None
            and len(trial_candidates(product.selection, k)) >= 2)


def trial_stage(plan, data, product, train_config, teacher=None, teacher_splits=None):
    """The ``trial`` stage: ``product`` (a SelectionProduct) with the trial's pick as the chosen candidate and
    the entries in the selection's report (``selection.trial``)."""
    from edgekd.pipeline.prepare import _at_chosen_size
    from edgekd.pipeline.products import SelectionProduct

    prefer = teacher_family(teacher.spec, teacher.module) if teacher is not None else None
    chosen, entries = run_trial(product.selection, data.splits, plan.cfg.selection.trial, train_config,
                                prefer=prefer, progress=plan.cfg.progress)
    selection = product.selection
    proxy_pick = selection.chosen
    selection.trial = [e.to_dict() for e in entries]
    selection.chosen = chosen
    for e in entries:
        mark = "◀ chosen" if (e.family, e.width, e.depth, e.image_size) == (
            chosen.family, chosen.width, chosen.depth, chosen.image_size) else ""
        events.info(f"  {e.family} width {e.width:g}: val {e.val_accuracy:.2%} (z {e.z_vs_proxy_pick:+.1f} vs the "
                    f"proxy's pick){', cached' if e.cached else ''} {mark}".rstrip())
    if chosen is not proxy_pick:
        events.info(f"  the trial overrules the accuracy proxy: {chosen.family} width {chosen.width:g} instead of "
                    f"{proxy_pick.family} width {proxy_pick.width:g} (clearly better on validation)")
    # From the teacher stage's splits where there are some: it may have given the teacher another input size.
    splits = _at_chosen_size(teacher_splits if teacher_splits is not None else data.splits, selection)
    return SelectionProduct(selection, chosen.family, splits)
