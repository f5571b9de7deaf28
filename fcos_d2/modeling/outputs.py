"""Glue shared by the FCOS meta-architecture and the FCOS proposal generator.

Both run the same head on the same levels; these functions turn the head's per-level
maps into what the target assigner, the losses and the post-processor consume.
"""
from functools import lru_cache
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from .losses import FCOSLosses
from .targets import FCOSTargetAssigner, compute_locations

__all__ = ["level_locations", "flatten_levels", "check_strides", "fcos_losses"]


@lru_cache(maxsize=128)
def _cached_locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    return compute_locations(height, width, stride, device)


def level_locations(features: List[Tensor], strides: List[int]) -> List[Tensor]:
    """Per level, the (Hi*Wi, 2) image coordinates of its locations (cached per size).

    The returned tensors are shared between calls: do not modify them in place.
    """
    return [
        _cached_locations(f.shape[-2], f.shape[-1], int(s), f.device)
        for f, s in zip(features, strides)
    ]


def flatten_levels(maps: List[Tensor]) -> Tensor:
    """Per-level (N, C, Hi, Wi) maps -> (N, sum Hi*Wi, C), levels in order, row-major."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def check_strides(
    shapes: Dict[str, ShapeSpec], in_features: List[str], strides: List[int]
) -> None:
    """Fail early, naming the keys, when the backbone and MODEL.FCOS disagree."""
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone does not output "
            f"(it gives {sorted(shapes)})"
        )
    actual = [shapes[f].stride for f in in_features]
    if list(actual) != [int(s) for s in strides]:
        raise ValueError(
            f"MODEL.FCOS.FPN_STRIDES is {list(strides)} but the backbone's "
            f"{in_features} have strides {actual}"
        )


def fcos_losses(
    assigner: FCOSTargetAssigner,
    losses: FCOSLosses,
    locations: List[Tensor],
    logits: List[Tensor],
    box_dists: List[Tensor],
    ctrness: List[Tensor],
    gt_instances: List[Instances],
    class_agnostic: bool = False,
) -> Dict[str, Tensor]:
    """Assign targets for the batch and compute the three FCOS losses.

    With ``class_agnostic`` every ground-truth box counts as class 0 (objectness).
    """
    gt_boxes, gt_classes, gt_crowd = [], [], []
    for inst in gt_instances:
        gt_boxes.append(inst.gt_boxes.tensor)
        classes = inst.gt_classes
        gt_classes.append(torch.zeros_like(classes) if class_agnostic else classes)
        gt_crowd.append(inst.gt_is_crowd if inst.has("gt_is_crowd") else None)
    labels, reg_targets = assigner(locations, gt_boxes, gt_classes, gt_crowd)
    return losses(
        flatten_levels(logits),
        flatten_levels(box_dists),
        flatten_levels(ctrness).squeeze(2),
        labels,
        reg_targets,
    )


def per_level_predictions(
    logits: List[Tensor], box_dists: List[Tensor], ctrness: List[Tensor]
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """(N, C, Hi, Wi) maps -> (N, Hi*Wi, C) per level; centerness as (N, Hi*Wi)."""
    return (
        [flatten_levels([x]) for x in logits],
        [flatten_levels([x]) for x in box_dists],
        [flatten_levels([x]).squeeze(2) for x in ctrness],
    )
