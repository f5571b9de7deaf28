"""FCOS losses: focal classification, IoU-family box regression, BCE centerness."""
from typing import Dict

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from detectron2.config import configurable
from detectron2.utils import comm

from .targets import centerness_targets

__all__ = ["FCOSLosses", "iou_loss", "mean_over_workers"]

LOC_LOSS_TYPES = ("iou", "linear_iou", "giou")
_EPS = 1e-6


def mean_over_workers(value: Tensor) -> Tensor:
    """Average of a scalar tensor over all workers (itself in a single process)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / world_size


def iou_loss(pred: Tensor, target: Tensor, loss_type: str = "giou") -> Tensor:
    """Per-location IoU-family loss between boxes given as (l, t, r, b) from one point.

    Args:
        pred, target: (M, 4) non-negative distances around the same locations.
        loss_type: "iou" (-log IoU), "linear_iou" (1 - IoU) or "giou" (1 - GIoU).
    Returns:
        (M,) losses.
    """
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    inter_h = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = inter_w * inter_h
    union = pred_area + target_area - inter
    iou = inter / union.clamp(min=_EPS)
    if loss_type == "iou":
        return -torch.log(iou.clamp(min=_EPS))
    if loss_type == "linear_iou":
        return 1 - iou
    if loss_type == "giou":
        enclose_w = torch.max(pred[:, 0], target[:, 0]) + torch.max(pred[:, 2], target[:, 2])
        enclose_h = torch.max(pred[:, 1], target[:, 1]) + torch.max(pred[:, 3], target[:, 3])
        enclose = (enclose_w * enclose_h).clamp(min=_EPS)
        giou = iou - (enclose - union) / enclose
        return 1 - giou
    raise ValueError(f"MODEL.FCOS.LOC_LOSS_TYPE must be one of {LOC_LOSS_TYPES}, got {loss_type!r}")


class FCOSLosses:
    """Computes ``loss_fcos_cls``, ``loss_fcos_loc`` and ``loss_fcos_ctr``.

    * classification: sigmoid focal loss summed over all non-ignored locations and divided
      by the number of positives (averaged over workers, so 1 and N workers agree);
    * box: IoU-family loss of positives weighted by their centerness targets, divided by
      the sum of those targets (averaged over workers);
    * centerness: BCE of positives, divided by the number of positives.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loc_loss_type: str = "giou",
    ):
        if loc_loss_type not in LOC_LOSS_TYPES:
            raise ValueError(
                f"MODEL.FCOS.LOC_LOSS_TYPE must be one of {LOC_LOSS_TYPES}, got {loc_loss_type!r}"
            )
        self.num_classes = num_classes
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loc_loss_type = loc_loss_type

    @classmethod
    def from_config(cls, cfg):
        fcos = cfg.MODEL.FCOS
        return {
            "num_classes": fcos.NUM_CLASSES,
            "focal_alpha": fcos.LOSS_ALPHA,
            "focal_gamma": fcos.LOSS_GAMMA,
            "loc_loss_type": fcos.LOC_LOSS_TYPE,
        }

    def __call__(
        self,
        logits: Tensor,
        box_dists: Tensor,
        ctrness: Tensor,
        labels: Tensor,
        reg_targets: Tensor,
    ) -> Dict[str, Tensor]:
        """
        Args:
            logits: (N, R, K) class logits over all levels' locations.
            box_dists: (N, R, 4) predicted distances, in stride units.
            ctrness: (N, R) centerness logits.
            labels: (N, R) from :class:`FCOSTargetAssigner` (K background, -1 ignored).
            reg_targets: (N, R, 4) target distances, in stride units.
        """
        # Loss math in fp32, also under mixed precision.
        logits, box_dists, ctrness = logits.float(), box_dists.float(), ctrness.float()
        valid = labels >= 0
        positive = valid & (labels != self.num_classes)
        num_pos = mean_over_workers(positive.sum().to(logits.dtype)).clamp(min=1.0)

        cls_target = F.one_hot(labels.clamp(min=0), self.num_classes + 1)[..., : self.num_classes]
        loss_cls = sigmoid_focal_loss(
            logits[valid],
            cls_target[valid].to(logits.dtype),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="sum",
        ) / num_pos

        pos_dists = box_dists[positive]
        pos_targets = reg_targets[positive]
        ctr_targets = centerness_targets(pos_targets)
        ctr_norm = mean_over_workers(ctr_targets.sum()).clamp(min=1e-6)
        loc = iou_loss(pos_dists, pos_targets, self.loc_loss_type)
        loss_loc = (loc * ctr_targets).sum() / ctr_norm
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctrness[positive], ctr_targets, reduction="sum"
        ) / num_pos
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
