"""What a runtime descriptor holds, the host runner base class, and the one registry of runtimes."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry


@dataclass(frozen=True)
class FusionRules:
    """What one runtime folds or fuses into the kernel that produces a tensor (read by the latency model).

    fold: ops removed at build time (BatchNorm folded into the preceding conv's weights).
    epilogue: ops computed inside a conv/gemm kernel's epilogue (residual add, some activations).
    epilogue_activations: every activation op the latency model knows is an epilogue op too.
    max_epilogue: how many epilogue ops one conv/gemm kernel can absorb.
    pointwise_chain: whether consecutive pointwise ops become one kernel (TensorRT/OpenVINO do).
    winograd: the precisions at which the runtime runs dense 3x3 stride-1 convs as Winograd F(m, 3)
        (fewer multiplies than the FLOPs counted; ``edgekd.hardware.libraries.winograd_tile`` says which m).
    """

    fold: frozenset = frozenset()
    epilogue: frozenset = frozenset()
    max_epilogue: int = 0
    pointwise_chain: bool = False
    epilogue_activations: bool = False
    winograd: frozenset = frozenset()


class Runner:
    """Base class of host runners: subclasses load ``path`` in ``__init__`` and implement ``_run`` for one batch.

    ``run`` checks the input once for every runtime and splits batches larger than what the loaded
    model accepts (ExecuTorch, LiteRT and TensorRT models have a bounded batch dimension). ``name`` is
    set from the runtime's descriptor when it is registered.
    """

    name: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()

    #: largest batch one call accepts (None: unbounded)
    max_batch: int | None = None
    #: how :meth:`timed_call` runs one inference, recorded beside every latency it measures
    timing_method: ClassVar[str] = "run(x) per call: input checked and converted, outputs copied to numpy"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        missing = [m for m in cls.modules if not importable(m)]
        if missing:
            return False, f"{missing[0]} is not importable: {cls.install_hint}"
        return True, "ok"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, device: str = "cpu"):
        self.path = Path(path)
        self.threads = threads
        self.device = device
        ok, why = self.available()
        if not ok:
            raise EdgeKDError(f"cannot run {self.path.name} with {self.name}: {why}")
        if not self.path.is_file():
            raise EdgeKDError(f"model file {self.path} does not exist", "check the path or re-run the export")

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 4:
            raise EdgeKDError(
                f"{self.name} runner expects a float32 NCHW batch, got {x.dtype} with shape {x.shape}",
                "normalise the images to float32 (N, C, H, W) first",
            )
        x = np.ascontiguousarray(x)
        limit = self.max_batch
        if limit is None or len(x) <= limit:
            return np.asarray(self._run(x), dtype=np.float32)
        return np.concatenate([np.asarray(self._run(x[i:i + limit]), dtype=np.float32)
                               for i in range(0, len(x), limit)])

    __call__ = run

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def timed_call(self, x: np.ndarray) -> "TimedCall":
        """One inference of ``x`` made ready the way the runtime's own benchmark tool runs it (inputs
        prepared once, outputs left in the runtime's buffers), for latency alone.

        On a small model the Python call around an inference (a dict of inputs, a fresh output array)
        costs as much as the inference itself, and it differs from runtime to runtime; timed here, it
        would rank runtimes by their Python bindings. Runners whose runtime can do better override this.
        """
        x = np.ascontiguousarray(x)
        last: list = [None]

        def call():
            last[0] = self.run(x)

        return TimedCall(call, lambda: last[0], self.timing_method)

    def versions(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"runtime": self.name, "path": str(self.path), "threads": self.threads,
                "device": self.device, **self.versions()}


@dataclass(frozen=True)
class TimedCall:
    """An inference ready to be timed: ``call()`` runs it, ``output()`` reads its first output back
    from wherever the runtime left it; ``method`` says how it runs (recorded beside the latency)."""

    call: Callable[[], object]
    output: Callable[[], np.ndarray]
    method: str


@dataclass(frozen=True)
class Runtime:
    """Everything edgekd knows about one inference runtime; every consumer reads it from here."""

    name: str
    description: str
    runner: type[Runner]                    # runs its files on this machine (edgekd bench, accuracy, parity)
    suffixes: tuple[str, ...]               # files its runner loads, main file first
    file_format: str                        # the report's ``format`` of those files ("onnx", "openvino", ...)
    reads: tuple[str, ...] = ()             # other runtimes' files it also runs here (OpenVINO compiles .onnx)
    deploys: tuple[str, ...] = ()           # artifact formats it loads on a device (default: its own format)
    compiles_fp32: bool = False             # builds an FP32 graph at the device's precision (TensorRT)
    # How it fuses kernels; None: not a runtime a device profile (targets/*.yaml) may name.
    fusions: FusionRules | None = None
    export_formats: tuple[str, ...] = ()    # formats a run for a device of this runtime exports besides the base ones
    builds_on_device: bool = False          # artifacts are device-specific builds: ship the ONNX and the build command
    on_device: bool = False                 # the standalone device runner (edgekd runner) has a backend of this name
    # Measuring on a device over SSH (edgekd.devices): the Python modules the device runner needs there,
    # a program that builds and times by itself instead (trtexec), and what to install when they are missing.
    device_modules: tuple[str, ...] = ()
    device_tool: str | None = None
    device_install: str = ""
    packages: tuple[str, ...] = ()          # distributions whose versions a measurement is read against
    color: str = "#16a085"                  # its colour in every report figure

    @property
    def deploy_formats(self) -> tuple[str, ...]:
        return self.deploys or (self.file_format,)

    @property
    def device_formats(self) -> tuple[str, ...]:
        """Artifact formats worth sending to a device: its own builds are made there, never copied."""
        return tuple(f for f in self.deploy_formats if not (self.builds_on_device and f == self.file_format))

    @property
    def is_target_runtime(self) -> bool:
        return self.fusions is not None

    def available(self) -> tuple[bool, str]:
        return self.runner.available()


RUNTIMES: Registry[Runtime] = Registry("runtime")


def register(runtime: Runtime) -> Runtime:
    """Add a runtime to the registry (once, from the module that defines it) and name its runner."""
    RUNTIMES.add(runtime.name, runtime)
    runtime.runner.name = runtime.name
    return runtime


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def module_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing distribution just has no version to report
        return None
