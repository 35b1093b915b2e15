"""Honest uncertainty for latency predictions, learned from how wrong a calibration was on data it did not see.

Every calibration is refitted with each measurement (or each fold) left out and asked to predict it;
the ratios measured / predicted of those held-out predictions are what a new model's prediction can
expect. Their spread gives a prediction interval (on the log scale, where latency errors are symmetric,
with Student-t quantiles so that five held-out errors give a wider interval than fifty), applied to a
prediction p as [p x low, p x high].
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.9


@dataclass(frozen=True)
class Interval:
    """A multiplicative prediction interval: the latency lies in [p x low, p x high] with probability ``level``."""

    low: float
    high: float
    level: float
    n: int              # held-out errors it was learned from
    method: str         # e.g. "leave-one-out over 18 published measurements"

    def apply(self, ms: float) -> tuple[float, float]:
        return ms * self.low, ms * self.high

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Interval | None":
        if not d:
            return None
        return cls(low=float(d["low"]), high=float(d["high"]), level=float(d.get("level", LEVEL)), n=int(d.get("n", 0)),
                   method=str(d.get("method", "")))

    def describe(self) -> str:
        return f"{100 * self.level:.0f}% interval x{self.low:.2f}..x{self.high:.2f} from {self.n} held-out errors ({self.method})"


def interval_from_ratios(ratios: Sequence[float], method: str, level: float = LEVEL) -> Interval | None:
    """Prediction interval for the next ratio measured / predicted, from held-out ratios (None below two)."""
    from scipy.stats import t

    logs = np.log(np.asarray([r for r in ratios if r > 0 and math.isfinite(r)], dtype=np.float64))
    n = len(logs)
    if n < 2:
        return None
    # A new prediction's error: the held-out mean plus the spread of one more draw (sqrt(1 + 1/n)).
    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(logs.std(ddof=1)) * math.sqrt(1 + 1 / n)
    centre = float(logs.mean())
    return Interval(low=math.exp(centre - half), high=math.exp(centre + half), level=level, n=n, method=method)


# fit(train_indices) -> predict(test_indices) -> predicted ms for those indices
FitPredict = Callable[[list[int]], Callable[[list[int]], np.ndarray]]


def held_out_predictions(n: int, fit_predict: FitPredict, folds: int | None = None, seed: int = 0) -> np.ndarray:
    """Each measurement's prediction by a fit that did not see it: leave-one-out, or ``folds`` random folds."""
    order = list(range(n))
    if folds is not None and folds < n:
        random.Random(seed).shuffle(order)
        groups = [order[i::folds] for i in range(folds)]
    else:
        groups = [[i] for i in order]
    predicted = np.zeros(n)
    for test in groups:
        train = [i for i in range(n) if i not in set(test)]
        predicted[test] = fit_predict(train)(test)
    return predicted


def leave_half_out(n: int, fit_predict: FitPredict, splits: int = 20, seed: int = 0) -> dict:
    """Fit on a random half, predict the other half, and back; over ``splits`` random halvings.

    Returns every held-out prediction as (index, predicted ms) pairs: each measurement is predicted
    ``splits`` times, each time by a fit on a different half of the others.
    """
    rng = random.Random(seed)
    pairs: list[tuple[int, float]] = []
    for _ in range(splits):
        order = list(range(n))
        rng.shuffle(order)
        half = n // 2
        for train, test in ((order[:half], order[half:]), (order[half:], order[:half])):
            if not train or not test:
                continue
            pred = fit_predict(sorted(train))(sorted(test))
            pairs += list(zip(sorted(test), (float(p) for p in pred)))
    return {"splits": splits, "predictions": pairs}


def error_stats(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """within10 / within20 / median |error| of predictions against measurements."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    rel = np.abs(p / m - 1)
    return {"n": int(len(rel)), "within10": float(np.mean(rel <= 0.10)), "within20": float(np.mean(rel <= 0.20)),
            "median_abs_pct_err": float(np.median(rel) * 100)}


# Each doubling of a network's FLOPs beyond the range a calibration saw widens its interval by this much
# either way: the per-kernel and per-inference terms that dominate far below the range, and the
# bandwidth and cache effects far above it, were fitted on networks where they mattered less.
WIDENING_PER_DOUBLING = 0.1


def widen(interval: Interval | None, *, unseen_share: float, prior: Interval | None, range_factor: float,
          reasons: list[str]) -> Interval | None:
    """An interval widened for a prediction outside what its calibration saw.

    ``unseen_share`` of the prediction rests on op classes the calibration never exercised, so that
    share carries the datasheet's own interval (``prior``); ``range_factor`` (>= 1) is how far the
    network's FLOPs lie outside the calibration's range.
    """
    base = interval or prior
    if base is None:
        return None
    low, high = base.low, base.high
    if unseen_share > 0 and prior is not None:
        low *= 1 - unseen_share * max(0.0, 1 - prior.low)
        high *= 1 + unseen_share * max(0.0, prior.high - 1)
    if range_factor > 1:
        w = 1 + WIDENING_PER_DOUBLING * math.log2(range_factor)
        low, high = low / w, high * w
    return Interval(low=low, high=high, level=base.level, n=base.n,
                    method=f"{base.method}; widened: {'; '.join(reasons)}")
