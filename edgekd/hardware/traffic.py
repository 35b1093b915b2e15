"""Memory traffic the host and device latency models charge beyond a kernel's own rates: weights re-read
between inferences once a model overflows the cache, and activations that overflow a core's private cache.
"""

from __future__ import annotations

from edgekd.hardware.graph import GraphCost, Kernel

# A kernel that multiplies each weight by fewer inputs than this per inference (a batch-1 GEMM, a conv on a
# 1x1 map) waits on its weight loads: nothing hides them.
WEIGHT_BOUND_REUSE = 4


def exposed_weight_bytes(k: Kernel, private_mb: float | None) -> int:
    """Weight bytes of a kernel whose loads its arithmetic cannot hide when they come from the shared cache:
    those of a kernel using each weight a few times (``WEIGHT_BOUND_REUSE``), or of one whose weights
    overflow the core's private cache, so that each pass over the output re-fetches them."""
    if not k.weight_bytes:
        return 0
    if k.flops < 2 * WEIGHT_BOUND_REUSE * max(k.params, 1):
        return k.weight_bytes
    return k.weight_bytes if private_mb and k.weight_bytes / 1e6 > private_mb else 0


def streamed_weight_mb(cost: GraphCost, cache_mb: float | None, *, llc: tuple[float, float] | None = None,
                       private_mb: float | None = None) -> float:
    """MB of weights re-read from DRAM per inference (DRAM-equivalent MB where they come from the shared cache).

    Without a measured hierarchy (``llc`` None): all of them once the inference's traffic exceeds the cache.
    With one (``llc`` = (last-level cache MB, its bandwidth over DRAM's)): a model resident (weights plus
    peak activations) within the cache costs nothing; within the last-level cache only the weights the
    arithmetic cannot hide are re-read (``exposed_weight_bytes``), at the shared cache's speed; beyond it,
    all of them from DRAM. Dense convs stream their weights behind their arithmetic, so charging every
    weight whenever the traffic overflowed the private cache overcharged wide CNNs that live in the L3.
    """
    level = weight_level(cost, cache_mb, llc)
    if level is None:
        return 0.0
    if level == "DRAM":
        return cost.weight_bytes / 1e6
    return sum(exposed_weight_bytes(k, private_mb) for k in cost.kernels) / 1e6 / llc[1]


def weight_level(cost: GraphCost, cache_mb: float | None, llc: tuple[float, float] | None = None) -> str | None:
    """Where an inference re-reads its weights from (see ``streamed_weight_mb``): None (they stay in the
    cache), "the shared cache" or "DRAM"."""
    if not cache_mb:
        return None
    if llc is None:
        return "DRAM" if sum(k.bytes for k in cost.kernels) / 1e6 > cache_mb else None
    resident_mb = (cost.weight_bytes + cost.peak_activation_bytes) / 1e6
    if resident_mb <= cache_mb:
        return None
    return "DRAM" if resident_mb > llc[0] else "the shared cache"


# Kernels whose time is their memory traffic (few FLOPs per byte). A dense conv or GEMM that spills still
# runs at its compute rate, its loads hidden behind the arithmetic, so only these pay for spilling.
MEMORY_BOUND = ("dwconv", "pool", "elementwise", "data")


def spilled_mb(k: Kernel, spill_mb: float | None) -> float:
    """MB of activations a memory-bound kernel streams through the shared cache once they exceed the private one."""
    if k.op_class not in MEMORY_BOUND:
        return 0.0
    act = (k.input_bytes + k.output_bytes) / 1e6
    return act if spill_mb and act > spill_mb else 0.0
