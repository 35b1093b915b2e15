"""Knowledge distillation: registered losses, one training loop, and the (cached) default teacher."""

from edgekd.distill.losses import LOSSES, CombinedLoss, DistillLoss, ModelOutputs, build_loss, parse_loss_spec
from edgekd.distill.train import TrainConfig, TrainResult, evaluate, predict_logits, train
from edgekd.distill.teacher import cache_root, default_teacher_spec, get_teacher

__all__ = ["LOSSES", "CombinedLoss", "DistillLoss", "ModelOutputs", "build_loss", "parse_loss_spec",
           "TrainConfig", "TrainResult", "evaluate", "predict_logits", "train",
           "cache_root", "default_teacher_spec", "get_teacher"]
