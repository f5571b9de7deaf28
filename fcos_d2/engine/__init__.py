from .amp import AMPTrainer
from .launch import launch
from .trainer import Trainer, build_evaluator

__all__ = ["AMPTrainer", "Trainer", "build_evaluator", "launch"]
