"""The training engine: a cohort of runs trained in lockstep against one frozen teacher.

Runs that share teacher, data, data order and batch size (equal `cohort_key`) train in one process:
each batch is augmented once and goes through the teacher once (under inference mode), then every
student takes its own step with its own loss, optimizer, scheduler, loss scaler, EMA, RNG streams,
checkpoint and MLflow run. A run alone is a cohort of one, so a run's numbers do not depend on its company:

- data order and augmentation are functions of (seed, epoch) only (`data.epoch_generator`);
- each member swaps its own global RNG state in around its step (model init, drop-path) and owns the
  generator that samples L_rs's patches;
- members join at their own checkpointed epoch and leave after their own last epoch.

Modules: `cohort` (what the steps share), `member` (a run's state and checkpoint), `start` (claiming and
opening runs), `teacher`, `step` (one member's step), `evaluation`, `loop` (epochs), `runlog` (MLflow).
"""

from trainer.engine.cohort import Batch, Callback, Cohort, NonFiniteLoss, cohort_key
from trainer.engine.evaluation import evaluate, head_logits
from trainer.engine.loop import train
from trainer.engine.member import Member, Streams, build_member, build_student, effective_lr, precision_of
from trainer.engine.runlog import environment, log_predictions
from trainer.engine.step import forward_loss, train_step
from trainer.engine.teacher import load_teacher, teacher_val_data

__all__ = [
    "Batch",
    "Callback",
    "Cohort",
    "Member",
    "NonFiniteLoss",
    "Streams",
    "build_member",
    "build_student",
    "cohort_key",
    "effective_lr",
    "environment",
    "evaluate",
    "forward_loss",
    "head_logits",
    "load_teacher",
    "log_predictions",
    "precision_of",
    "teacher_val_data",
    "train",
    "train_step",
]
