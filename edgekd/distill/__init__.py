"""Knowledge distillation: registered losses, one training loop, and the (cached) default teacher.

The names below are imported on first use, so that ``edgekd.distill.trainconfig`` (which the command line
reads to validate options) loads without torch.
"""

import importlib

# Public name -> the submodule defining it.
_EXPORTS = {
    **dict.fromkeys(("LOSSES", "CombinedLoss", "DistillLoss", "ModelOutputs", "build_loss", "parse_loss_spec"),
                    "losses"),
    **dict.fromkeys(("MODES", "TrainConfig", "TrainResult", "evaluate", "predict_logits", "train", "train_stage"),
                    "train"),
    **dict.fromkeys(("EnsembleTeacher", "cache_root", "default_teacher_spec", "get_teacher"), "teacher"),
}

__all__ = list(_EXPORTS)
# Names that are both submodules and functions of this package: the functions (edgekd._APIPackage keeps the
# import system from rebinding them to the submodules).
_NOT_SUBMODULES = ("train", "evaluate")


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
