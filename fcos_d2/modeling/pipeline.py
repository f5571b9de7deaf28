"""The FCOS pipeline after the feature maps, written once.

:class:`FCOSPipeline` holds the head, the target assigner, the losses and the
post-processor, and the levels' strides (read from the backbone's output shapes). Its
steps:

* ``features -> predictions``: :meth:`FCOSPipeline.predict` runs the head and lays its
  maps out per level as :class:`FCOSPredictions`;
* ``predictions -> losses``: :meth:`FCOSPipeline.losses_of`;
* ``predictions -> detections``: :meth:`FCOSPipeline.detect`.

The one-stage detector (:class:`~fcos_d2.modeling.FCOS`), the proposal generator
(:class:`~fcos_d2.modeling.FCOSProposalGenerator`), the exported graph and TTA call them.
``predict`` and ``detect`` script (``torch.jit.script``); ``losses_of``, for training
only, is left out of scripting (``@torch.jit.unused``).
:class:`FCOSPredictions` and :func:`level_locations` are defined in
:mod:`fcos_d2.modeling.predictions`.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from .execution import float32
from .inference import FCOSPostProcessor
from .losses import FCOSLosses
from .predictions import FCOSPredictions, level_locations
from .targets import FCOSTargetAssigner
from .visualize import log_positive_locations

__all__ = ["FCOSPredictions", "FCOSPipeline", "check_strides", "level_locations"]


def check_strides(
    shapes: Dict[str, ShapeSpec], in_features: Sequence[str], strides: Optional[Sequence[int]]
) -> List[int]:
    """The strides of ``in_features`` read from the backbone's ``shapes``.

    Fails early, naming the keys, when a feature is missing, or when ``strides`` (the
    ``MODEL.FCOS.FPN_STRIDES`` key, kept as a check; None skips it) disagrees.
    """
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone does not output "
            f"(it gives {sorted(shapes)})"
        )
    actual = [int(shapes[f].stride) for f in in_features]
    if strides is not None and actual != [int(s) for s in strides]:
        raise ValueError(
            f"MODEL.FCOS.FPN_STRIDES is {list(strides)} but the backbone's "
            f"{list(in_features)} have strides {actual}"
        )
    return actual


class FCOSPipeline(nn.Module):
    """Head, targets, losses and post-processing of FCOS over the levels ``in_features``.

    A base class: :class:`~fcos_d2.modeling.FCOS` adds a backbone and image handling,
    :class:`~fcos_d2.modeling.FCOSProposalGenerator` the proposal convention. Submodule
    names (``head``, ``losses``) are those of the checkpoints.
    """

    def __init__(
        self,
        *,
        head: nn.Module,
        in_features: Sequence[str],
        strides: Sequence[int],
        target_assigner: FCOSTargetAssigner,
        losses: FCOSLosses,
        postprocessor: FCOSPostProcessor,
        postprocessor_train: Optional[FCOSPostProcessor] = None,
        location_offset: float = 0.5,
        spacing_from_input: bool = False,
    ):
        """
        Args:
            head: maps the ``in_features`` maps to per-level (logits, box distances,
                centerness) maps, e.g. :class:`~fcos_d2.modeling.FCOSHead`.
            in_features: e.g. ["p3", "p4", "p5", "p6", "p7"].
            strides: the strides of those features (see :func:`check_strides`).
            target_assigner, losses: see their classes.
            postprocessor: turns predictions into detections at inference.
            postprocessor_train: the one used in training mode (default: the same).
            location_offset: where a location sits in its stride cell
                (``MODEL.FCOS.LOCATION_OFFSET``, see :func:`compute_locations`).
            spacing_from_input: space the locations by padded input size // level size
                (``MODEL.FCOS.SPACING_FROM_INPUT``, torchvision's anchors); ``predict``
                then needs the input size.
        """
        super().__init__()
        target_assigner.check_num_levels(len(in_features))
        self.head = head
        self.in_features = list(in_features)
        self.strides = [int(s) for s in strides]
        self.target_assigner = target_assigner
        self.losses = losses
        self.postprocessor = postprocessor
        if postprocessor_train is None:
            postprocessor_train = postprocessor
        self.postprocessor_train = postprocessor_train
        self.location_offset = float(location_offset)
        self.spacing_from_input = spacing_from_input

    def predict(
        self, features: Dict[str, Tensor], input_size: Optional[Tuple[int, int]] = None
    ) -> FCOSPredictions:
        """Run the head on ``features[in_features]``; ``input_size``: the (H, W) of the
        padded input batch, needed with ``spacing_from_input``."""
        return self.predictions_of(self.head([features[f] for f in self.in_features]), input_size)

    def predictions_of(
        self,
        head_outputs: Tuple[List[Tensor], List[Tensor], List[Tensor]],
        input_size: Optional[Tuple[int, int]] = None,
    ) -> FCOSPredictions:
        """The head's per-level (logits, box distances, centerness) maps (N, C, Hl, Wl)
        -> predictions, the locations placed by ``location_offset`` and, with
        ``spacing_from_input``, the padded input's ``input_size`` (H, W). The raw exported
        graph's outputs go through here too."""
        if self.spacing_from_input and input_size is None:
            raise ValueError(
                "MODEL.FCOS.SPACING_FROM_INPUT places the locations by the padded input "
                "size: pass input_size"
            )
        return FCOSPredictions.from_head(
            head_outputs[0],  # the maps' sizes are the features'
            self.strides,
            head_outputs,
            self.location_offset,
            input_size if self.spacing_from_input else None,
        )

    @torch.jit.unused  # training only
    def losses_of(
        self,
        predictions: FCOSPredictions,
        gt_instances: List[Instances],
        class_agnostic: bool = False,
    ) -> Dict[str, Tensor]:
        """Assign targets for the batch and compute the three FCOS losses, in float32
        whatever the autocast state.

        With ``class_agnostic`` every ground-truth box counts as class 0 (objectness).
        """
        # a profiler range, so that the time of this part can be read (benchmarks/)
        with float32(predictions.logits[0].device), record_function("FCOSPipeline.losses_of"):
            return self._losses_of(predictions, gt_instances, class_agnostic)

    def _losses_of(self, predictions, gt_instances, class_agnostic):
        gt_boxes, gt_classes, gt_crowd = [], [], []
        for inst in gt_instances:
            gt_boxes.append(inst.gt_boxes.tensor)
            classes = inst.gt_classes
            gt_classes.append(torch.zeros_like(classes) if class_agnostic else classes)
            gt_crowd.append(inst.gt_is_crowd if inst.has("gt_is_crowd") else None)
        labels, reg_targets = self.target_assigner(
            predictions.locations, predictions.strides, gt_boxes, gt_classes, gt_crowd
        )
        log_positive_locations(labels, self.target_assigner.num_classes)
        return self.losses(
            torch.cat(predictions.logits, dim=1),  # (N, R, K)
            torch.cat(predictions.box_dists, dim=1),  # (N, R, 4)
            torch.cat(predictions.ctrness, dim=1),  # (N, R)
            labels,
            reg_targets,
        )

    def detect(
        self, predictions: FCOSPredictions, image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """Per image, the post-processed detections in input-image coordinates (with
        the training post-processor in training mode), computed in float32."""
        if torch.jit.is_scripting():  # TorchScript has no autocast region: float32 already
            return self._postprocess(predictions, image_sizes)
        with float32(predictions.logits[0].device):
            return self._postprocess(predictions, image_sizes)

    def _postprocess(
        self, predictions: FCOSPredictions, image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        if self.training:
            return self.postprocessor_train(predictions, image_sizes)
        return self.postprocessor(predictions, image_sizes)
