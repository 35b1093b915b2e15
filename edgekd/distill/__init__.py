"""Knowledge distillation: registered losses, one training loop, and the (cached) default teacher."""

from edgekd.distill.losses import LOSSES, CombinedLoss, DistillLoss, ModelOutputs, build_loss, parse_loss_spec
from edgekd.distill.train import MODES, TrainConfig, TrainResult, evaluate, predict_logits, train, train_stage
from edgekd.distill.teacher import EnsembleTeacher, cache_root, default_teacher_spec, get_teacher

__all__ = ["LOSSES", "CombinedLoss", "DistillLoss", "ModelOutputs", "build_loss", "parse_loss_spec",
           "MODES", "TrainConfig", "TrainResult", "evaluate", "predict_logits", "train", "train_stage",
           "EnsembleTeacher", "cache_root", "default_teacher_spec", "get_teacher"]
