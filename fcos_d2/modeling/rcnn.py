"""Detectron2's two-stage ``GeneralizedRCNN`` with fcos_d2's precision policy."""
from typing import Optional, Tuple

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from .execution import ExecutionPolicy, autocast

__all__ = ["AMPGeneralizedRCNN"]


def _outputs_to_float32(module, inputs, outputs):
    """Forward hook: a box predictor's (scores, deltas) leave autocast as float32."""
    return tuple(x.float() for x in outputs)


@META_ARCH_REGISTRY.register()
class AMPGeneralizedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` (e.g. a Faster R-CNN with FCOS proposals) that runs its
    network under autocast in the dtype of ``SOLVER.AMP`` in training and of
    ``TEST.AMP`` at inference (see :mod:`fcos_d2.modeling.execution`), so that every
    client (evaluation, ``DefaultPredictor``, demo.py, Detectron2's tools) gets it.

    Same submodules and checkpoint keys as ``GeneralizedRCNN``. Backbone, proposal
    generator and ROI heads run under autocast; the ROI box predictors' outputs are cast
    to float32, so box decoding, class scores, NMS and the second-stage losses compute
    in float32 (as the FCOS proposal generator does after its head).
    """

    @configurable
    def __init__(
        self,
        *,
        precision: Tuple[Optional[torch.dtype], Optional[torch.dtype]] = (None, None),
        **kwargs,
    ):
        """
        Args:
            precision: (in training, at inference) autocast dtype, None for float32.
            kwargs: those of ``GeneralizedRCNN``.
        """
        super().__init__(**kwargs)
        self.precision = tuple(precision)
        for module in self.roi_heads.modules():
            if isinstance(module, FastRCNNOutputLayers):
                module.register_forward_hook(_outputs_to_float32)

    @classmethod
    def from_config(cls, cfg):
        return {
            **super().from_config(cfg),
            "precision": ExecutionPolicy.from_config(cfg).precision,
        }

    def forward(self, batched_inputs):
        if not self.training:
            return super().forward(batched_inputs)  # calls self.inference
        with autocast(self.device, self.precision[0]):
            return super().forward(batched_inputs)

    def inference(self, *args, **kwargs):
        """``GeneralizedRCNN.inference`` under ``TEST.AMP`` (also what Detectron2's
        ``GeneralizedRCNNWithTTA`` calls)."""
        with autocast(self.device, self.precision[1]):
            return super().inference(*args, **kwargs)
