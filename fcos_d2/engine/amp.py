"""Mixed-precision training on CUDA and on CPUs.

Detectron2's ``AMPTrainer`` requires CUDA (in v0.6 it asserts it at every step) and
autocasts to float16 only. :class:`AMPTrainer` here runs the same loop on any device, in
float16 or bfloat16:

* the forward (model and losses) under ``torch.autocast(device, dtype)``; fcos_d2's own
  models compute targets, losses and post-processing in float32 inside it;
* float16: a ``torch.amp.GradScaler`` scales the loss before backward and skips the
  steps whose gradients overflowed (CUDA and CPU alike);
* bfloat16: no scaling is needed (float32's exponent range); the scaler is present but
  disabled, so checkpoints have the same keys.

The scaler's state is in the trainer's ``state_dict``: a resumed run continues with the
scale the killed one had reached.
"""
import inspect
import logging
import time
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer

from ..modeling.execution import amp_dtype, device_type

__all__ = ["AMPTrainer", "training_precision"]

logger = logging.getLogger(__name__)


def training_precision(cfg) -> torch.dtype:
    """The autocast dtype of ``SOLVER.AMP.PRECISION`` on ``MODEL.DEVICE`` ("auto":
    float16 on CUDA, bfloat16 on CPUs; see :mod:`fcos_d2.modeling.execution`)."""
    precision = cfg.SOLVER.AMP.get("PRECISION", "auto")
    dtype = amp_dtype(precision, cfg.MODEL.DEVICE, training=True, key="SOLVER.AMP.PRECISION")
    if dtype is None:
        raise ValueError(
            "SOLVER.AMP.ENABLED is True but SOLVER.AMP.PRECISION is 'float32': set "
            "ENABLED False for float32 training, or PRECISION 'float16' / 'bfloat16'"
        )
    return dtype


def _write_metrics(loss_dict, data_time: float, cur_iter: int) -> None:
    """``SimpleTrainer.write_metrics`` of the installed Detectron2 (v0.6 takes no
    ``cur_iter``; newer versions need it)."""
    if "cur_iter" in inspect.signature(SimpleTrainer.write_metrics).parameters:
        SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter=cur_iter)
    else:
        SimpleTrainer.write_metrics(loss_dict, data_time)


class AMPTrainer(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` loop under autocast, with a gradient scaler for
    float16, on CUDA or CPU.

    Args:
        model, data_loader, optimizer: as in ``SimpleTrainer``.
        device: where the model runs ("cuda", "cuda:1", "cpu").
        precision: ``torch.float16`` or ``torch.bfloat16``.
        grad_scaler: default: a ``torch.amp.GradScaler`` for ``device``, enabled for
            float16 only.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        device: str = "cuda",
        precision: torch.dtype = torch.float16,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
    ):
        super().__init__(model, data_loader, optimizer)
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMPTrainer: precision must be float16 or bfloat16, got {precision}")
        self.device_type = device_type(device)
        self.precision = precision
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(
                self.device_type, enabled=precision == torch.float16
            )
        self.grad_scaler = grad_scaler
        self._batches = None  # the data stream, started at the first step
        logger.info(
            f"Mixed-precision training: autocast {str(precision).replace('torch.', '')} on "
            f"{self.device_type}, gradient scaling {'on' if grad_scaler.is_enabled() else 'off'}"
        )

    def run_step(self):
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        if self._batches is None:
            self._batches = iter(self.data_loader)
        start = time.perf_counter()
        data = next(self._batches)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
        losses = sum(v.float() for v in loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        _write_metrics(loss_dict, data_time, self.iter)
        self.grad_scaler.step(self.optimizer)  # skipped when float16 gradients overflowed
        self.grad_scaler.update()

    def state_dict(self):
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
