"""Student selection and search over width x depth x image size within a latency and memory budget.

The rule that picks among the candidates that fit (:func:`choose`, :data:`RULE`): the highest accuracy
proxy, then the faster. Within one family, accuracy grows with compute whether it is spent on width, depth
or resolution (Tan & Le 2019), and FLOPs, unlike parameters, count what a larger input costs; across
families the proxy places each family's FLOPs on its published ImageNet figures (:func:`accuracy_proxy`).
``benchmarks/kd_arch.py --selection`` and ``benchmarks/frontier.py`` train candidates to check the pick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edgekd.errors import EdgeKDError
from edgekd.hardware.graph import cached_onnx
from edgekd.hardware.latency import predict_cost, target_graph_cost
from edgekd.hardware.calibration import iter_progress as _progress
from edgekd.hardware.targets import Target, load_target

LATENCY_MODES = ("auto", "measured", "predicted")


@dataclass
class Candidate:
    """One student configuration with its cost on the target."""

    width: float
    depth: float
    resolution: int | None       # the image size when it differs from the data's own, else None
    params: int
    flops: int
    predicted_ms: float          # measured p50 when the selection's latency_source is "measured:..."
    fits: bool                   # within the latency budget (and the memory budget, when one is given)
    memory_mb: float             # weights + peak activations at the target precision
    fits_memory: bool = True
    latency_source: str = ""
    image_size: int | None = None  # the student's input size (pixels, square)
    # The prediction interval (see edgekd.hardware.uncertainty); equal to predicted_ms when measured.
    predicted_low_ms: float | None = None
    predicted_high_ms: float | None = None
    # Outside what the latency model's calibration saw (op classes, FLOPs range, precision): the interval is
    # widened and the reasons listed (edgekd.hardware.latency.extrapolation).
    extrapolated: bool = False
    extrapolation: list = field(default_factory=list)
    family: str = ""
    precision: str = ""
    accuracy_proxy: float | None = None   # see accuracy_proxy(): what ranks candidates across families

    @property
    def upper_ms(self) -> float:
        """The latency a safe selection judges by: the interval's upper end, or the figure itself."""
        return self.predicted_high_ms if self.predicted_high_ms is not None else self.predicted_ms

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    candidates: list[Candidate]
    chosen: Candidate
    budget_ms: float
    latency_source: str          # "measured:host", "predicted:jetson-nano (datasheet)", ...
    target: str = ""
    precision: str = ""
    memory_budget_mb: float | None = None
    pareto: list[Candidate] = field(default_factory=list)
    safe: bool = False           # candidates were judged by the upper end of their prediction interval
    # Across families and precisions (select_student): those searched, and the candidates no other beats on
    # both latency and accuracy proxy, fastest first.
    families: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    front: list[Candidate] = field(default_factory=list)
    # The run's trial of the leading families on the user's data (edgekd.pipeline.trial), when it ran.
    trial: list[dict] = field(default_factory=list)

    @property
    def width(self) -> float:
        return self.chosen.width

    @property
    def family(self) -> str:
        return self.chosen.family

    def to_dict(self) -> dict:
        return {"family": self.chosen.family, "width": self.chosen.width, "depth": self.chosen.depth,
                "resolution": self.chosen.resolution, "image_size": self.chosen.image_size, "rule": RULE,
                "budget_ms": self.budget_ms, "memory_budget_mb": self.memory_budget_mb,
                "latency_source": self.latency_source, "target": self.target,
                "precision": self.chosen.precision or self.precision, "families": list(self.families),
                "precisions": list(self.precisions),
                "safe": self.safe, "chosen": self.chosen.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
                "pareto": [c.to_dict() for c in self.pareto], "front": [c.to_dict() for c in self.front],
                **({"trial": self.trial} if self.trial else {})}


RULE = ("the highest accuracy proxy (to 0.1 point) among the candidates that fit, then the faster (within one "
        "family and precision, up to its widest published width: the most FLOPs)")

# The accuracy proxy: top-1 error falls as a power of compute, (100 - top1) ~ FLOPs ** -ERROR_EXPONENT, anchored
# at the family's published ImageNet top-1 (FamilyTraits.reference). The power law, not a fixed number of points
# per doubling, because the published width x resolution tables of MobileNetV2 (Sandler et al. 2018, the TF-slim
# checkpoints from 11 to 582 MMACs) and MnasNet-A1 (Tan et al. 2019, 47 to 592 MMACs) lose points ever faster as
# compute shrinks and gain ever fewer as it grows; one exponent fits both (tests/test_select_proxy.py).
ERROR_EXPONENT = 0.2
# The references count multiply-adds (torchvision's "GFLOPS" column, the papers' MAdds); edgekd counts 2 FLOPs each.
FLOPS_PER_MAC = 2
# Published top-1 figures are given to 0.1 point: a smaller difference in the proxy is no evidence either way.
PROXY_RESOLUTION = 0.1
# The typical loss of post-training INT8 quantization (MobileNetV3-Large's 8-bit checkpoint: 1.3 points).
PRECISION_COST = {"fp32": 0.0, "fp16": 0.0, "int8": 1.0}


def credited_flops(flops: float, width: float | None, published_widths) -> float:
    """The FLOPs the proxy credits: beyond the widest published width multiplier nothing says accuracy still
    grows (nor how fast), so a wider candidate is credited as if it stopped there (FLOPs grow as width^2)."""
    if width is None or not published_widths or width <= published_widths[1]:
        return float(flops)
    return float(flops) * (published_widths[1] / width) ** 2


def accuracy_proxy(family: str, flops: int, precision: str = "fp32", width: float | None = None) -> float | None:
    """Where ``family`` at ``flops`` FLOPs (``width``: its width multiplier) ranks across families: ImageNet-like
    top-1 points, a ranking score (below the published range it extrapolates and may fall under chance); None
    for a family with no published reference (ranked after every family with one; by FLOPs among themselves)."""
    from edgekd.models import family_traits

    traits = family_traits(family) if family else None
    if traits is None or traits.reference is None or flops <= 0:
        return None
    top1, gmacs = traits.reference
    flops = credited_flops(flops, width, traits.published_widths)
    return scaled_top1(top1, gmacs * 1e9 * FLOPS_PER_MAC, flops) - PRECISION_COST.get(precision, 0.0)


def scaled_top1(top1: float, reference_flops: float, flops: float) -> float:
    """A network's top-1 moved from ``reference_flops`` to ``flops`` along the power law of
    :data:`ERROR_EXPONENT`."""
    return float(100.0 - (100.0 - top1) * (reference_flops / flops) ** ERROR_EXPONENT)


def capability(c: Candidate) -> tuple:
    """What :func:`choose` maximizes: see :data:`RULE`."""
    if c.accuracy_proxy is None:
        return (False, 0.0, c.flops, c.width, -c.predicted_ms)
    return (True, round(c.accuracy_proxy / PROXY_RESOLUTION), -c.predicted_ms, c.flops, c.width)


def choose(fitting: list[Candidate]) -> Candidate:
    """The candidate to train among those that fit: see :data:`RULE` and the module docstring."""
    return max(fitting, key=capability)


def capability_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both latency (lower) and :func:`capability` (higher), fastest first."""
    front = []
    for c in sorted(cands, key=lambda c: (c.predicted_ms, [-x for x in capability(c)[:3]])):
        if not front or capability(c) > capability(front[-1]):
            front.append(c)
    return front


def _latency_mode(target: Target, latency: str) -> str:
    if latency not in LATENCY_MODES:
        raise EdgeKDError(f"unknown latency mode {latency!r}", f"use one of {', '.join(LATENCY_MODES)}")
    if latency == "auto":
        # Where the target is this machine, timing the real graph beats any model of it.
        return "measured" if target.measured else "predicted"
    if latency == "measured" and not target.measured:
        raise EdgeKDError(f"{target.name} is not this machine, so its latency cannot be measured here",
                          "measure on the device with the on-device runner and `edgekd calibrate`, or use latency='predicted'")
    return latency


def evaluate_candidate(arch: str, *, target: Target, num_classes: int, input_shape, width: float, depth: int = 1,
                       resolution: int | None = None, precision: str | None = None, mode: str = "predicted",
                       runtime: str | None = None, costing: str = "auto") -> Candidate:
    """Cost one configuration on ``target`` and predict (or measure) its latency.

    ``costing="auto"`` traces a registered family without exporting it (``edgekd.hardware.fastcost``, the
    same kernels as its ONNX graph) when the latency is predicted; ``"onnx"`` (and anything measured, or
    costed as this machine's ONNX Runtime executes it, or a model edgekd cannot build) exports the graph.
    """
    c, h, w = (int(s) for s in input_shape[-3:])
    if resolution is not None:
        h = w = int(resolution)
    shape = [1, c, h, w]
    precision = precision or target.precision
    cost, params, path = _candidate_cost(arch, target=target, num_classes=num_classes, shape=shape, width=width,
                                         depth=depth, precision=precision, mode=mode, runtime=runtime, costing=costing)
    if mode == "measured":
        from edgekd.hardware.measure import measure_onnx_ms

        ms = measure_onnx_ms(path, threads=target.threads, time_budget_s=0.4)["p50"]
        source, (low, high), reasons = f"measured:{target.name}", (ms, ms), []
    else:
        pred = predict_cost(cost, target, precision, runtime)
        ms, source = pred.total_ms, pred.latency_source
        low, high = pred.interval_ms or (None, None)
        reasons = list(getattr(pred, "extrapolation", []))
    return Candidate(width=float(width), depth=depth, resolution=resolution, params=int(params),
                     flops=int(cost.flops), predicted_ms=float(ms), fits=True, memory_mb=float(cost.memory_mb),
                     latency_source=source, image_size=h, predicted_low_ms=low, predicted_high_ms=high,
                     extrapolated=bool(reasons), extrapolation=reasons, family=arch, precision=precision,
                     accuracy_proxy=accuracy_proxy(arch, int(cost.flops), precision, width=float(width)))


COSTINGS = ("auto", "onnx")


def _candidate_cost(arch: str, *, target: Target, num_classes: int, shape: list[int], width: float, depth: float,
                    precision: str, mode: str, runtime: str | None, costing: str):
    """(GraphCost, params, ONNX path or None) of one candidate: traced when it can be, exported otherwise."""
    from edgekd.models import count_params, create, create_kwargs, family_traits

    if costing not in COSTINGS:
        raise EdgeKDError(f"unknown costing {costing!r}", f"use one of {', '.join(COSTINGS)}")
    on = runtime or target.runtime
    executed = target.measured and on == "onnxruntime"   # ORT's own optimized graph: needs the real file
    if costing == "auto" and mode == "predicted" and not executed and family_traits(arch).traceable:
        from edgekd.hardware.fastcost import fast_cost

        cost, params = fast_cost(arch, num_classes=num_classes, input_shape=shape, width=width, depth=depth,
                                 runtime=on, precision=precision)
        return cost, params, None
    size_kw = create_kwargs(arch, shape)
    path = cached_onnx(arch, num_classes=num_classes, input_shape=shape, width=width, depth=depth, **size_kw)
    cost = target_graph_cost(path, target, precision, runtime=runtime)
    params = count_params(create(arch, num_classes=num_classes, in_channels=shape[1], width=width, depth=depth, **size_kw))
    return cost, params, path


def judged_ms(cand: Candidate, safe: bool) -> float:
    """The latency a candidate is judged by: its prediction, or with ``safe`` the upper end of its interval."""
    return cand.upper_ms if safe else cand.predicted_ms


def _judge(cands: list[Candidate], budget_ms: float, memory_mb: float | None, safe: bool = False) -> None:
    """Mark which candidates fit the budgets; a safe selection keeps only those whose interval's upper end fits."""
    for cand in cands:
        cand.fits_memory = memory_mb is None or cand.memory_mb <= memory_mb
        cand.fits = judged_ms(cand, safe) <= budget_ms and cand.fits_memory


def _unreachable(cands: list[Candidate], budget_ms: float, target: Target, memory_mb: float | None,
                 safe: bool = False) -> EdgeKDError:
    fastest = min(cands, key=lambda c: judged_ms(c, safe))
    smallest = min(cands, key=lambda c: (c.params, c.predicted_ms))
    verb = "measured" if fastest.latency_source.startswith("measured") else "predicted"
    if judged_ms(fastest, safe) > budget_ms:
        figure = (f"{smallest.predicted_ms:#.3g} ms, up to {smallest.upper_ms:#.3g} ms at the upper end of its interval "
                  f"(--safe)" if safe else f"{smallest.predicted_ms:#.3g} ms")
        which = f"{smallest.family} " if smallest.family and len({c.family for c in cands}) > 1 else ""
        return EdgeKDError(
            f"no candidate fits the {budget_ms:g} ms budget on {target.name}: the smallest "
            f"({which}width {smallest.width:g}, depth {smallest.depth}) is {verb} at {figure}",
            f"raise --budget-ms to at least {judged_ms(fastest, safe) * 1.05:.3g} or choose a faster --target")
    lightest = min(cands, key=lambda c: c.memory_mb)
    return EdgeKDError(
        f"no candidate fits {memory_mb:g} MB of memory on {target.name}: the lightest (width {lightest.width:g}) "
        f"needs {lightest.memory_mb:.3g} MB", f"raise --memory-mb to at least {lightest.memory_mb * 1.05:.3g}")


def select_width(arch: str, widths, *, target: Target | str, budget_ms: float | None, num_classes: int, input_shape,
                 depth: float = 1, precision: str | None = None, latency: str = "auto",
                 progress: bool = False, image_sizes=None, safe: bool = False, runtime: str | None = None) -> Selection:
    """Cost every width (x image size) on the target and :func:`choose` among those within the budget
    (the target's default if None); with one image size that is the widest that fits.

    ``latency="auto"`` measures on this machine when the target is ``host`` (``measured: true``) and
    predicts with the latency model otherwise; the Selection's ``latency_source`` says which. ``safe``
    judges each candidate by the upper end of its prediction interval instead of the prediction.
    """
    target = load_target(target) if not isinstance(target, Target) else target
    budget = float(target.budget_ms if budget_ms is None else budget_ms)
    if budget <= 0:
        raise EdgeKDError(f"the latency budget must be positive, got {budget:g} ms", "pass --budget-ms with a positive number")
    widths = sorted({float(w) for w in widths})
    if not widths:
        raise EdgeKDError("no candidate widths given", "pass at least one width, e.g. 0.5")
    mode = _latency_mode(target, latency)
    native = int(input_shape[-1])
    sizes = _image_sizes(image_sizes, native)
    grid = [(w, r) for r in sizes for w in widths]
    cands = []
    for width, size in _progress(grid, f"costing {len(grid)} candidates on {target.name}", progress):
        cands.append(evaluate_candidate(arch, target=target, num_classes=num_classes, input_shape=input_shape,
                                        width=width, depth=depth, precision=precision, mode=mode, runtime=runtime,
                                        resolution=None if size == native else size))
    _judge(cands, budget, None, safe)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        raise _unreachable(cands, budget, target, None, safe)
    chosen = choose(fitting)
    return Selection(candidates=cands, chosen=chosen, budget_ms=budget, latency_source=cands[0].latency_source,
                     target=target.name, precision=precision or target.precision, pareto=pareto_front(cands), safe=safe)


def _image_sizes(sizes, native: int) -> list[int]:
    sizes = sorted({int(r) for r in (sizes or [native])})
    if any(r < 8 for r in sizes):
        raise EdgeKDError(f"image sizes must be at least 8 pixels, got {min(sizes)}", "e.g. --image-sizes 32,64 or 160,192,224")
    if sizes[-1] > 4096:
        raise EdgeKDError(f"image size {sizes[-1]} is over 4096 pixels", "search image sizes an edge model takes")
    return sizes


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both latency (lower) and capacity (more params), sorted by latency."""
    front = []
    for c in sorted(cands, key=lambda c: (c.predicted_ms, -c.params)):
        if not front or c.params > front[-1].params:
            front.append(c)
    return front


def search(arch: str, *, target: Target | str, budget_ms: float | None, num_classes: int, input_shape,
           widths=None, depths=None, resolutions=None, memory_mb: float | None = None,
           precision: str | None = None, latency: str = "auto", progress: bool = False, safe: bool = False,
           runtime: str | None = None) -> Selection:
    """Search one family's width x depth x image size at one precision: :func:`select_student` with ``[arch]``."""
    return select_student([arch], target=target, budget_ms=budget_ms, num_classes=num_classes, input_shape=input_shape,
                          widths=widths, depths=depths, image_sizes=resolutions, memory_mb=memory_mb,
                          precisions=[precision] if precision else None, latency=latency, progress=progress,
                          safe=safe, runtime=runtime)


def student_families(students) -> list[str]:
    """``"auto"`` (or None): every registered family; ``"a,b"`` or a list: those (each checked by name)."""
    from edgekd.models import families, family_traits

    if students is None or students == "auto":
        return families()
    names = [n.strip() for n in (students.split(",") if isinstance(students, str) else students) if n and n.strip()]
    if not names:
        raise EdgeKDError("no student family given", "pass --student auto or e.g. mobilenet_v2,resnet")
    for name in names:
        family_traits(name)   # an unknown name is refused here, with the closest known one
    return list(dict.fromkeys(names))


def select_student(families=None, *, target: Target | str, budget_ms: float | None = None, num_classes: int,
                   input_shape, image_sizes=None, widths=None, depths=None, precisions=None,
                   memory_mb: float | None = None, latency: str = "auto", safe: bool = False,
                   runtime: str | None = None, progress: bool = False) -> Selection:
    """Search every family in ``families`` (``"auto"``/None: all registered) over width x depth x image size
    x precision and :func:`choose` the most capable candidate within the latency and memory budgets.

    Widths and depths default to each family's own (given depths apply to families with a depth knob).
    ``precisions`` default to the target's precision for one family and to every precision the target
    runs fast (``Target.precisions``) for several. The Selection's ``front`` is the Pareto front across
    all of them (latency against :func:`capability`), ``chosen.family`` the family to train.
    """
    from edgekd.models import family_traits

    target = load_target(target) if not isinstance(target, Target) else target
    names = student_families(families)
    budget, memory = _budgets(target, budget_ms, memory_mb, num_classes)
    precs = _precisions(precisions, target, len(names))
    native = int(input_shape[-1])
    sizes = _image_sizes(image_sizes, native)
    mode = _latency_mode(target, latency)
    grid = []
    for name in names:
        traits = family_traits(name)
        fam_depths = depths if depths and (traits.has_depth_multiplier or len(names) == 1) else traits.depths
        ws, ds = _grid_axes(widths or traits.widths, fam_depths)
        grid += [(name, w, d, r, p) for p in precs for r in sizes for d in ds for w in ws]
    cands = []
    what = f"costing {len(grid)} candidates of {len(names)} families on {target.name}" if len(names) > 1 \
        else f"searching {len(grid)} candidates on {target.name}"
    for name, w, d, r, p in _progress(grid, what, progress):
        cands.append(evaluate_candidate(name, target=target, num_classes=num_classes, input_shape=input_shape,
                                        width=w, depth=d, resolution=None if r == native else r, precision=p,
                                        mode=mode, runtime=runtime))
    _judge(cands, budget, memory, safe)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        raise _unreachable(cands, budget, target, memory, safe)
    return Selection(candidates=cands, chosen=choose(fitting), budget_ms=budget, latency_source=cands[0].latency_source,
                     target=target.name, precision=precs[0] if len(precs) == 1 else target.precision,
                     memory_budget_mb=memory, pareto=pareto_front(cands), safe=safe, families=names,
                     precisions=precs, front=capability_front(cands))


def _budgets(target: Target, budget_ms, memory_mb, num_classes) -> tuple[float, float]:
    budget = float(target.budget_ms if budget_ms is None else budget_ms)
    memory = float(target.memory_mb if memory_mb is None else memory_mb)
    if not (0 < budget < math.inf and 0 < memory < math.inf):
        raise EdgeKDError("latency and memory budgets must be positive", "pass positive --budget-ms and --memory-mb")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 1_000_000:
        raise EdgeKDError(f"the number of classes must be 1 to 1,000,000, got {num_classes}", "pass e.g. --num-classes 10")
    return budget, memory


def _precisions(precisions, target: Target, n_families: int) -> list[str]:
    from edgekd.hardware.graph import BYTES_PER_ELEMENT

    if precisions:
        precs = list(dict.fromkeys(str(p) for p in precisions))
    else:
        precs = list(target.precisions) if n_families > 1 else [target.precision]
    unknown = [p for p in precs if p not in BYTES_PER_ELEMENT]
    if unknown:
        raise EdgeKDError(f"unknown precision {unknown[0]!r}", f"use {', '.join(BYTES_PER_ELEMENT)}")
    return precs


def _grid_axes(widths, depths) -> tuple[list[float], list]:
    widths = sorted({float(w) for w in widths})
    depths = sorted({float(d) if float(d) != int(d) else int(d) for d in depths})
    if not (widths and 0 < widths[0] and widths[-1] <= 64) or not (depths and 0 < depths[0] and depths[-1] <= 16):
        raise EdgeKDError(f"widths must be in (0, 64] and depths in (0, 16], got {widths} and {depths}",
                          "pass e.g. --widths 0.5,1,2 --depths 1,2")
    return widths, depths


def teacher_as_candidate(teacher, *, target: Target | str, budget_ms: float, input_shape, precision: str | None = None,
                         safe: bool = False) -> Candidate:
    """The teacher itself costed like a student, at ``precision`` (default: the target's) on its own ``input_shape``
    (C, H, W); ``.fits`` says whether it meets the budget. Where it fits, the honest advice is that the user may
    ship the teacher (its INT8 model, say) instead of a smaller student. The run's ``teacher`` stage hook
    (``edgekd.pipeline.advice.teacher_on_target``) and ``benchmarks/frontier.py`` use it."""
    from edgekd.hardware.latency import predict_latency_ms
    from edgekd.models import count_params

    target = load_target(target) if not isinstance(target, Target) else target
    precision = precision or target.precision
    shape = tuple(int(s) for s in input_shape[-3:])
    was_training = teacher.training
    try:
        pred = predict_latency_ms(teacher.eval(), target, input_shape=(1, *shape), precision=precision)
    finally:
        teacher.train(was_training)
    low, high = pred.interval_ms or (None, None)
    reasons = list(pred.extrapolation)
    cand = Candidate(width=1.0, depth=1, resolution=None, params=int(count_params(teacher)), flops=int(pred.flops),
                     predicted_ms=float(pred.total_ms), fits=True, memory_mb=float(pred.memory_mb),
                     latency_source=pred.latency_source, image_size=shape[-1], predicted_low_ms=low,
                     predicted_high_ms=high, extrapolated=bool(reasons), extrapolation=reasons, family="teacher",
                     precision=precision)
    cand.fits = judged_ms(cand, safe) <= float(budget_ms)
    return cand
