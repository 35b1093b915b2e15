"""Inference runtimes: one descriptor per runtime (files, formats, fusions, runner, colour), registered once.

Each module of this package defines one runtime: its host runner class and a :class:`Runtime`
descriptor passed to :func:`register`. Every consumer (device profiles, the latency model's fusions,
``edgekd bench``, the gate, the default export formats, the on-device runner, the report's colours)
reads the descriptors, so adding a runtime is adding one module here.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.runtimes.base import (  # noqa: F401
    RUNTIMES, FusionRules, Runner, Runtime, importable, module_version, register,
)


def get(name: str) -> Runtime:
    """The descriptor of a registered runtime (a one-line error with a suggestion for a typo)."""
    return RUNTIMES.get(name)


def runtimes() -> list[Runtime]:
    return [rt for _, rt in RUNTIMES.items()]


def target_runtimes() -> list[str]:
    """Runtimes a device profile may name: those whose kernel fusions the latency model knows."""
    return [rt.name for rt in runtimes() if rt.is_target_runtime]


def fusion_rules(name: str) -> FusionRules:
    rt = RUNTIMES.get(name) if name in RUNTIMES else None
    if rt is None or rt.fusions is None:
        raise EdgeKDError(f"unknown runtime {name!r} for fusion rules", f"use one of {', '.join(target_runtimes())}")
    return rt.fusions


def model_suffixes() -> tuple[str, ...]:
    """Every model-file suffix some runtime runs, in registry order."""
    out: list[str] = []
    for rt in runtimes():
        out += [s for s in rt.suffixes if s not in out]
    return tuple(out)


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def runtime_for_file(path: str | os.PathLike) -> str:
    """The runtime whose own files end like ``path`` (.onnx -> onnxruntime, .xml -> openvino, ...)."""
    suffix = _suffix(path)
    for rt in runtimes():
        if suffix in rt.suffixes:
            return rt.name
    raise EdgeKDError(f"no runtime runs {suffix or 'suffix-less'} files ({Path(path).name})",
                      f"pass a model file ending in one of {', '.join(sorted(model_suffixes()))}")


def readers_of(path: str | os.PathLike) -> list[str]:
    """Runtimes that can run this file here or elsewhere, the file's own runtime first."""
    suffix = _suffix(path)
    own = [rt.name for rt in runtimes() if suffix in rt.suffixes]
    return own + [rt.name for rt in runtimes() if suffix in rt.reads and rt.name not in own]


def format_of_file(path: str | os.PathLike, default: str | None = None) -> str | None:
    """The report ``format`` of a model file, from its suffix (.ort is an ONNX Runtime file: "onnx")."""
    suffix = _suffix(path)
    return next((rt.file_format for rt in runtimes() if suffix in rt.suffixes), default)


def _register_all() -> None:
    # Every module here defines one runtime and registers it on import; sorted, so the order is stable.
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"{__name__}.{module}")


_register_all()
