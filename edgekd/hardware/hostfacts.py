"""What the host latency model measures about this machine instead of fitting: call and dispatch costs,
DRAM bandwidth, the cache sizes a model's data stays in (and a slower last-level cache's size and speed),
and the SIMD channel block.

A fit on whole networks can trade any of these against the per-class rates (they are nearly collinear
over a probe set), and a trade that fits one machine's probes mispredicts the next machine's models.
Measured directly, they hold wherever they are measured; the fit only decides what is left.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Sizes (MB) the cache sweep reads; the largest is far beyond any last-level cache, so it reads DRAM.
SWEEP_MB = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class HostFacts:
    """Measured facts of this machine that the host coefficients hold fixed."""

    inference_overhead_ms: float     # one ONNX Runtime run() call, kernels aside
    dispatch_ms: float               # what ONNX Runtime spends per kernel, whatever the kernel computes
    dram_read_gbs: float             # single-thread read bandwidth from DRAM
    cache_mb: float | None           # data up to this size is read from cache between inferences
    private_cache_mb: float | None   # one core's private cache (L2), from /sys
    channel_block: int               # NCHWc block of ONNX Runtime's convolutions on this ISA
    # A slower shared level between cache_mb and DRAM (an L3 the sweep reads below the fast-cache threshold
    # but well above DRAM): its size and read bandwidth. None where the fast cache is the last level.
    llc_mb: float | None = None
    llc_read_gbs: float | None = None

    @property
    def llc(self) -> tuple[float, float] | None:
        """(last-level cache MB, its read bandwidth over DRAM's), for ``streamed_weight_mb``: the effective
        cache itself where no slower shared level was found; None where no cache was measured at all."""
        if not self.cache_mb:
            return None
        if not (self.llc_mb and self.llc_read_gbs):
            return self.cache_mb, 1.0
        return self.llc_mb, self.llc_read_gbs / self.dram_read_gbs

    def to_dict(self) -> dict:
        return asdict(self)


def _read_gbs(data: np.ndarray, repeats: int) -> float:
    """Best read bandwidth over ``repeats`` passes of a vectorised max (bandwidth-bound, unlike sum).

    Timed in thread CPU time like the networks themselves: wall-clock time on a loaded machine counts the
    moments the thread was descheduled, and halved the figure from one run to the next.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        data.max()
        best = min(best, time.thread_time() - start)
    return data.nbytes / max(best, 1e-9) / 1e9


def bandwidth_sweep(sizes_mb=SWEEP_MB) -> dict[float, float]:
    """Read bandwidth (GB/s) of arrays of each size: high while they fit a cache, DRAM's beyond."""
    out = {}
    for mb in sizes_mb:
        data = np.ones(int(mb * 2**20) // 4, dtype=np.float32)
        out[float(mb)] = _read_gbs(data, repeats=max(4, int(512 / mb)))
    return out


def cache_from_sweep(sweep: dict[float, float]) -> tuple[float | None, float]:
    """(effective cache MB, DRAM GB/s) from a bandwidth sweep.

    DRAM bandwidth is what the largest array reads at. The effective cache is the largest size still read
    at least at the geometric mean of the best (in-cache) and the DRAM bandwidth: where the hierarchy hands
    over to memory on this machine, whatever the cache sizes /sys reports (a VM may report the host's
    whole L3 while its share is smaller). None when no size reads faster than DRAM.
    """
    sizes = sorted(sweep)
    dram = sweep[sizes[-1]]
    top = max(sweep.values())
    if top < 1.3 * dram:
        return None, dram
    threshold = (top * dram) ** 0.5
    fitting = [mb for mb in sizes if sweep[mb] >= threshold]
    return (float(max(fitting)) * 1.048576 if fitting else None), dram  # MiB -> MB


# A size reads from a cache rather than DRAM when it is read at least this much faster than DRAM.
LLC_SPEEDUP = 1.5


def llc_from_sweep(sweep: dict[float, float], cache_mb: float | None) -> tuple[float | None, float | None]:
    """(MB, GB/s) of the slower shared cache level beyond the effective cache, from a bandwidth sweep.

    The sizes past ``cache_mb`` still read at least ``LLC_SPEEDUP`` times faster than the largest (DRAM)
    array lie in a last-level cache: its size is the largest of them, its bandwidth their median. (None,
    None) when there are none, where the effective cache already is the last level.
    """
    sizes = sorted(sweep)
    dram = sweep[sizes[-1]]
    shared = [mb for mb in sizes[:-1] if mb * 1.048576 > (cache_mb or 0) and sweep[mb] >= LLC_SPEEDUP * dram]
    if not cache_mb or not shared:
        return None, None
    return float(max(shared)) * 1.048576, float(np.median([sweep[mb] for mb in shared]))


def _chain_onnx(n: int) -> Path:
    """``n`` chained ReLUs on a 1x16 tensor: the time per extra ReLU is ONNX Runtime's cost per kernel."""
    import onnx
    from onnx import TensorProto, helper

    from edgekd.fsutil import atomic_path
    from edgekd.hardware.targets import cache_dir

    path = cache_dir() / "probes" / f"overhead-relu-chain{n}.onnx"
    if not path.is_file():
        names = ["x"] + [f"t{i}" for i in range(n)]
        nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
        graph = helper.make_graph(nodes, "overhead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                                  [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 16])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return path


def _quiet_ms(path: Path, threads: int | None, repeats: int) -> float:
    from edgekd.hardware.measure import measure_onnx_ms

    # The minimum over repeats, because interference only ever adds time.
    return min(measure_onnx_ms(path, threads=threads, time_budget_s=0.05, rounds=4)["quiet"] for _ in range(repeats))


def inference_overhead_ms(threads: int | None = 1, repeats: int = 7) -> float:
    """ONNX Runtime's cost of one ``run`` call on this machine (ms), kernels aside.

    The quietest of several timings of a one-ReLU graph on a tiny tensor (the ReLU itself costs ~0.2 us
    of the ~5 us). Measured, not fitted: in a fit on whole networks the per-kernel overheads can absorb
    it (they are nearly collinear with it), which leaves tiny networks, where it is a third of the
    latency, mispredicted.
    """
    return _quiet_ms(_chain_onnx(1), threads, repeats)


def dispatch_overhead_ms(threads: int | None = 1, repeats: int = 5, n: int = 128) -> float:
    """ONNX Runtime's cost per kernel on this machine (ms): the slope between a 1- and an n-ReLU chain."""
    one = _quiet_ms(_chain_onnx(1), threads, repeats)
    many = _quiet_ms(_chain_onnx(n), threads, repeats)
    return max(0.0, (many - one) / (n - 1))


def private_cache_mb() -> float | None:
    """Size of one core's private data cache (L2, or L1 where there is no L2) in MB, from /sys; None if unknown."""
    from edgekd.hardware.targets import cpu_caches

    # Instruction caches, and the last-level cache shared between cores, do not hold a kernel's activations.
    sizes = {level: mib for level, kind, mib in cpu_caches() if kind != "Instruction" and level <= 2 and mib > 0}
    return sizes[max(sizes)] * 1.048576 if sizes else None  # MiB -> MB


def measure_host_facts(threads: int | None = 1) -> HostFacts:
    """Measure everything the host model holds fixed (about two seconds)."""
    from edgekd.hardware.targets import host_channel_multiple

    sweep = bandwidth_sweep()
    cache, dram = cache_from_sweep(sweep)
    llc_mb, llc_gbs = llc_from_sweep(sweep, cache)
    return HostFacts(inference_overhead_ms=inference_overhead_ms(threads), dispatch_ms=dispatch_overhead_ms(threads),
                     dram_read_gbs=dram, cache_mb=cache, private_cache_mb=private_cache_mb(),
                     channel_block=host_channel_multiple(), llc_mb=llc_mb, llc_read_gbs=llc_gbs)


def dram_read_gbs(megabytes: int = 256, repeats: int = 4) -> float:
    """This machine's single-thread DRAM read bandwidth (GB/s), from an array far beyond any cache."""
    return _read_gbs(np.ones(megabytes * 2**20 // 4, dtype=np.float32), repeats)


def cpu_summary() -> str:
    """'<CPU model>, L1d/L2/L3 sizes, ISA flags' of this machine, for benchmark output."""
    from edgekd.hardware.targets import cpu_caches

    model = "unknown CPU"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    caches = ", ".join(f"L{level}{'d' if kind == 'Data' else ''} {mib * 1024:g} KiB" if mib < 1 else
                       f"L{level}{'d' if kind == 'Data' else ''} {mib:g} MiB"
                       for level, kind, mib in cpu_caches() if kind != "Instruction")
    isa = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
                   if f in flags)
    return f"{model}; {caches or 'caches unknown'} (per core where private); ISA: {isa or 'no AVX2'}"
