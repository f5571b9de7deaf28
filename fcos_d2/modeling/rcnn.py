"""Detectron2's two-stage ``GeneralizedRCNN`` with fcos_d2's precision policy."""
import types
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances

from .execution import ExecutionPolicy, autocast

__all__ = ["AMPGeneralizedRCNN"]


def _method_copy(function, name: str):
    """A copy of the method ``function`` named ``name``: TorchScript compiles a method under
    its function's name, so a subclass that overrides a method reaches the base class's
    through such a copy (TorchScript has no ``super()``)."""
    copy = types.FunctionType(
        function.__code__, function.__globals__, name, function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__annotations__ = dict(function.__annotations__)
    copy.__doc__ = function.__doc__
    return copy


def _outputs_to_float32(
    module, inputs: Tuple[Tensor], outputs: Tuple[Tensor, Tensor]
) -> Tuple[Tensor, Tensor]:
    """Forward hook: a box predictor's (scores, deltas) leave autocast as float32."""
    scores, deltas = outputs
    return scores.float(), deltas.float()


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

    It scripts as ``GeneralizedRCNN`` does (``torch.jit.script`` of its ``inference``,
    Detectron2's ``export_model.py --export-method scripting``); TorchScript has no
    autocast region, so a scripted model computes in float32.
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

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)  # as GeneralizedRCNN.forward
        with autocast(self.device, self.precision[0]):
            return super().forward(batched_inputs)

    # GeneralizedRCNN's inference, for TorchScript (which has no super())
    _generalized_rcnn_inference = _method_copy(
        GeneralizedRCNN.inference, "_generalized_rcnn_inference"
    )

    def inference(
        self,
        batched_inputs: List[Dict[str, Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """``GeneralizedRCNN.inference`` under ``TEST.AMP`` (also what Detectron2's
        ``GeneralizedRCNNWithTTA`` calls); in float32 when scripted."""
        if torch.jit.is_scripting():
            return self._generalized_rcnn_inference(
                batched_inputs, detected_instances, do_postprocess
            )
        with autocast(self.device, self.precision[1]):
            return super().inference(batched_inputs, detected_instances, do_postprocess)
