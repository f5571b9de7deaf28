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
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from .execution import float32
from .inference import FCOSPostProcessor, recording
from .losses import FCOSLosses
from .targets import FCOSTargetAssigner, compute_locations
from .visualize import log_positive_locations

__all__ = ["FCOSPredictions", "FCOSPipeline", "check_strides", "level_locations"]


@lru_cache(maxsize=128)
def _cached_locations(
    height: int,
    width: int,
    stride: int,
    device: torch.device,
    offset: float,
    spacing: Optional[Tuple[int, int]],
) -> Tensor:
    return compute_locations(height, width, stride, device, offset, spacing)


def _spacing(input_size, feature: Tensor, tracing: bool):
    """(H // Hi, W // Wi): Python ints, or while tracing the traced sizes' quotients, so
    that an exported graph computes the spacing of each input it is given."""
    if tracing:
        return input_size[0] // feature.shape[-2], input_size[1] // feature.shape[-1]
    return (
        int(input_size[0]) // int(feature.shape[-2]),
        int(input_size[1]) // int(feature.shape[-1]),
    )


def level_locations(
    features: Sequence[Tensor],
    strides: Sequence[int],
    offset: float = 0.5,
    input_size: Optional[Tuple[int, int]] = None,
) -> List[Tensor]:
    """Per level, the (Hi*Wi, 2) image coordinates of its locations (cached per size).

    ``offset``: see :func:`compute_locations`. With ``input_size`` (the padded input's
    (H, W)), the locations of a level are spaced by (H // Hi, W // Wi) instead of its
    stride, as torchvision's ``AnchorGenerator`` spaces its anchors.

    The returned tensors are shared between calls: do not modify them in place. While
    tracing, they are computed from the traced shapes instead, so an exported graph
    follows the input size.
    """
    tracing = recording()
    spacings = [None if input_size is None else _spacing(input_size, f, tracing) for f in features]
    locate = compute_locations if tracing else _cached_locations
    return [
        locate(f.shape[-2], f.shape[-1], int(s), f.device, float(offset), spacing)
        for f, s, spacing in zip(features, strides, spacings)
    ]


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


def _per_level(maps: List[Tensor]) -> List[Tensor]:
    """Per-level (N, C, Hi, Wi) maps -> (N, Hi*Wi, C), row-major."""
    return [m.flatten(2).transpose(1, 2) for m in maps]


@dataclass
class FCOSPredictions:
    """The head's outputs for one batch, per level ``l`` (``Rl`` = Hl * Wl locations)."""

    locations: List[Tensor]  # (Rl, 2) image coordinates of the locations
    strides: List[int]
    logits: List[Tensor]  # (N, Rl, K) class logits
    box_dists: List[Tensor]  # (N, Rl, 4) (l, t, r, b) distances in stride units
    ctrness: List[Tensor]  # (N, Rl) centerness (box quality) logits

    @classmethod
    def from_head(
        cls,
        features: List[Tensor],
        strides: List[int],
        head_outputs: Tuple[List[Tensor], List[Tensor], List[Tensor]],
        location_offset: float = 0.5,
        input_size: Optional[Tuple[int, int]] = None,
    ) -> "FCOSPredictions":
        """From the feature maps (for their sizes) and the head's per-level
        (logits, box distances, centerness) maps of shape (N, C, Hl, Wl); the locations'
        ``location_offset`` and ``input_size`` as in :func:`level_locations`."""
        # Under autocast the head's maps may be float16 / bfloat16: everything after the
        # head (targets, losses, decoding, NMS) computes in float32.
        logits, box_dists, ctrness = ([m.float() for m in maps] for maps in head_outputs)
        return cls(
            locations=level_locations(features, strides, location_offset, input_size),
            strides=list(strides),
            logits=_per_level(logits),
            box_dists=_per_level(box_dists),
            ctrness=[c.flatten(1) for c in ctrness],
        )


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
        self.postprocessor_train = postprocessor_train or postprocessor
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
            tuple(input_size) if self.spacing_from_input else None,
        )

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
        postprocessor = self.postprocessor_train if self.training else self.postprocessor
        with float32(predictions.logits[0].device):
            return postprocessor(predictions, image_sizes)
