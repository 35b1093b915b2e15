"""Knowledge distillation: registered losses, one training loop, and the (cached) default teacher.

The names below are imported on first use, so that ``edgekd.distill.trainconfig`` (which the command line
reads to validate options) loads without torch.
"""

import importlib
import sys
import types

from edgekd import _APIPackage

# Public name -> the submodule defining it.
_EXPORTS = {
    **dict.fromkeys(("LOSSES", "CombinedLoss", "DistillLoss", "ModelOutputs", "build_loss", "parse_loss_spec"),
                    "losses"),
    **dict.fromkeys(("MODES", "TrainConfig", "TrainResult", "evaluate", "predict_logits", "train", "train_stage"),
                    "train"),
    **dict.fromkeys(("EnsembleTeacher", "cache_root", "default_teacher_spec", "get_teacher"), "teacher"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(_APIPackage):
    """Stays callable as ``edgekd.distill(...)`` (edgekd's _APIPackage) and keeps ``train`` and ``evaluate``
    the functions: the import system binds a submodule as an attribute of its package, and these two names are
    both submodules and exported functions (the functions won when this package imported them eagerly)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
