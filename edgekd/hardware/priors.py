"""Kind priors: each op class's achieved fraction of peak compute, borrowed from other devices' calibrations.

A profile's ``efficiency`` figures are estimates, and a runtime with no published figures of its own
predicts from them alone. The alternative here: borrow each class's achieved efficiency
(1 / (ms per MFLOP x peak)) from calibrations of other devices of the same kind of processor, the
closest ones first:

1. the same runtime at the same precision (the same kernels on other silicon);
2. the same precision on the same kind of processor;
3. any precision on the same kind of processor (each relative to its own precision's peak).

The geometric mean of the donors in the first tier that has a class decides it; a class no donor
identified keeps the profile's own figure. ``benchmarks/published_loo.py`` reports it beside the shipped
prediction; the shipped model does not use it, because on the published tables edgekd ships the kernel
library and its version move a class's efficiency more than the device does (README, "Leave one source
out"). Pure functions over plain data (no latency-model import).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

# Runtimes whose kernels run on a GPU; every other runtime a profile names runs on the CPU.
GPU_RUNTIMES = ("tensorrt",)
# The kernel class whose fitted rate stands for each compute group (and profile efficiency key).
GROUP_CLASS = {"conv": "conv", "pointwise": "conv_pointwise", "dwconv": "dwconv", "gemm": "gemm", "pool": "pool",
               "elementwise": "elementwise", "data": "data"}
TIERS = ("same runtime and precision", "same precision", "any precision")


def processor_kind(runtime: str) -> str:
    return "gpu" if runtime in GPU_RUNTIMES else "cpu"


@dataclass(frozen=True)
class Donor:
    """One calibration another prior may borrow from: where it was fitted and what its fit identified."""

    target: str
    runtime: str
    precision: str
    peak_gflops: float           # the donor device's peak at this precision
    ms_per_mflop: dict           # compute group -> fitted ms per MFLOP
    groups: tuple[str, ...]      # the compute groups its networks exercised (its coverage)

    @property
    def kind(self) -> str:
        return processor_kind(self.runtime)

    def efficiency(self) -> dict[str, float]:
        """Achieved fraction of peak of every group the donor's fit identified."""
        return {g: 1.0 / (ms * self.peak_gflops) for g, ms in self.ms_per_mflop.items()
                if g in self.groups and ms > 0}


def donor_from_fit(target: str, runtime: str, precision: str, peak_gflops: float, coefficients: dict,
                   coverage: dict | None) -> Donor:
    """A donor from a fitted coefficient dict (``Coefficients.to_dict()``) and its coverage."""
    classes = coefficients.get("classes", {})
    rates = {g: float(classes[c]["ms_per_mflop"]) for g, c in GROUP_CLASS.items() if c in classes}
    return Donor(target, runtime, precision, float(peak_gflops), rates, tuple((coverage or {}).get("classes", ())))


def _tier(donor: Donor, runtime: str, precision: str) -> int | None:
    if donor.kind != processor_kind(runtime):
        return None
    from edgekd.hardware.targets import KERNEL_LIBRARY

    if donor.runtime in (runtime, KERNEL_LIBRARY.get(runtime)) and donor.precision == precision:
        return 0
    return 1 if donor.precision == precision else 2


def kind_efficiency(runtime: str, precision: str, donors) -> tuple[dict[str, float], dict[str, str]]:
    """Each compute group's borrowed efficiency for ``runtime`` at ``precision``, and where it came from.

    Groups no donor of the same kind identified are absent (the profile keeps its own figure for them).
    """
    eff: dict[str, float] = {}
    origin: dict[str, str] = {}
    for group in GROUP_CLASS:
        by_tier: dict[int, list[tuple[Donor, float]]] = {}
        for d in donors:
            tier = _tier(d, runtime, precision)
            value = d.efficiency().get(group)
            if tier is not None and value is not None:
                by_tier.setdefault(tier, []).append((d, value))
        if not by_tier:
            continue
        tier = min(by_tier)
        values = [v for _, v in by_tier[tier]]
        eff[group] = math.exp(sum(math.log(v) for v in values) / len(values))
        origin[group] = f"{TIERS[tier]}: " + ", ".join(f"{d.target} {d.runtime}/{d.precision}" for d, _ in by_tier[tier])
    return eff, origin


def shipped_donors() -> tuple[Donor, ...]:
    """Every calibration shipped with edgekd, as donors."""
    from edgekd.hardware.targets import shipped_profiles

    return _shipped_donors(tuple(shipped_profiles()))


@functools.lru_cache(maxsize=4)
def _shipped_donors(names: tuple[str, ...]) -> tuple[Donor, ...]:
    from edgekd.hardware.targets import load_target, shipped_calibrations

    out = []
    for name in names:
        entries = shipped_calibrations(name)
        if not entries:
            continue
        peaks = load_target(name).peak_gflops
        for e in entries:
            if e["precision"] in peaks:
                out.append(donor_from_fit(name, e["runtime"], e["precision"], peaks[e["precision"]],
                                          e["coefficients"], e.get("coverage")))
    return tuple(out)
