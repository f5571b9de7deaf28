from .launch import launch
from .trainer import Trainer, build_evaluator

__all__ = ["Trainer", "build_evaluator", "launch"]
