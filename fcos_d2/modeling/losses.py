"""FCOS losses: focal classification, IoU-family box regression, BCE centerness."""
from typing import Dict

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from fvcore.nn import smooth_l1_loss
from torchvision.ops import sigmoid_focal_loss

from detectron2.config import configurable
from detectron2.utils import comm

from .targets import centerness_targets

__all__ = ["FCOSLosses", "box_iou_ltrb", "iou_loss", "mean_over_workers"]

LOC_LOSS_TYPES = ("iou", "linear_iou", "giou")
CLS_NORMALIZERS = ("fg", "moving_fg", "all")
# MODEL.FCOS.BOX_QUALITY -> the name of the quality branch's loss, for what it computes:
# the BCE against the centerness target has the name AdelaiDet's and Detectron2's FCOS log
# it under (their metrics and ours compare); the BCE against the box IoU has its own.
QUALITY_LOSS_NAMES = {"ctrness": "loss_fcos_ctr", "iou": "loss_fcos_iou"}
BOX_QUALITIES = tuple(QUALITY_LOSS_NAMES)
_EPS = 1e-6
_BOUND = torch.finfo(torch.float16).max  # 65504
MOVING_NUM_FG_INIT = 100.0  # as in AdelaiDet


def mean_over_workers(value: Tensor) -> Tensor:
    """Average of a scalar tensor over all workers (itself in a single process)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / world_size


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {tuple(choices)}, got {value!r}")


def _intersection_union(pred: Tensor, target: Tensor):
    """Intersection and union areas of (M, 4) ltrb boxes around the same points."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    inter_h = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = inter_w * inter_h
    return inter, pred_area + target_area - inter


def box_iou_ltrb(pred: Tensor, target: Tensor) -> Tensor:
    """(M,) IoU of boxes given as (l, t, r, b) distances from the same points."""
    inter, union = _intersection_union(pred, target)
    return inter / union.clamp(min=_EPS)


def iou_loss(pred: Tensor, target: Tensor, loss_type: str = "giou") -> Tensor:
    """Per-location IoU-family loss between boxes given as (l, t, r, b) from one point.

    Args:
        pred, target: (M, 4) non-negative distances around the same locations.
        loss_type: "iou" (-log IoU), "linear_iou" (1 - IoU) or "giou" (1 - GIoU).
    Returns:
        (M,) losses.
    """
    inter, union = _intersection_union(pred, target)
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
    _check_choice("MODEL.FCOS.LOC_LOSS_TYPE", loss_type, LOC_LOSS_TYPES)


class FCOSLosses(nn.Module):
    """Computes ``loss_fcos_cls``, ``loss_fcos_loc`` and the box-quality loss,
    ``loss_fcos_ctr`` (centerness target) or ``loss_fcos_iou`` (IoU target).

    * classification: sigmoid focal loss summed over all non-ignored locations, divided by
      the number of positives ("fg", averaged over workers so 1 and N workers agree), by
      its moving average ("moving_fg") or by the number of non-ignored locations ("all");
    * box: IoU-family (or smooth-L1) loss of positives weighted by their centerness
      targets, divided by the sum of those targets (averaged over workers);
    * box quality: BCE of positives against the centerness target ("ctrness") or against
      the IoU of the predicted and ground-truth boxes ("iou"), divided by the positives.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loc_loss_type: str = "giou",
        cls_normalizer: str = "fg",
        box_quality: str = "ctrness",
        moving_fg_momentum: float = 0.9,
    ):
        super().__init__()
        _check_choice("MODEL.FCOS.LOC_LOSS_TYPE", loc_loss_type, LOC_LOSS_TYPES + ("smooth_l1",))
        _check_choice("MODEL.FCOS.LOSS_NORMALIZER_CLS", cls_normalizer, CLS_NORMALIZERS)
        _check_choice("MODEL.FCOS.BOX_QUALITY", box_quality, BOX_QUALITIES)
        self.num_classes = num_classes
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loc_loss_type = loc_loss_type
        self.cls_normalizer = cls_normalizer
        self.box_quality = box_quality
        self.moving_fg_momentum = moving_fg_momentum
        # Running mean of the positives per batch, for cls_normalizer="moving_fg". It is
        # training state (saved, so a resumed run continues exactly), not a weight:
        # weights from elsewhere, without it, load and start it at its initial value.
        self.register_buffer("moving_num_fg", torch.tensor(MOVING_NUM_FG_INIT))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # fmt: skip
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "moving_num_fg"
        if key in missing_keys:  # weights without training state: keep the initial value
            missing_keys.remove(key)

    @classmethod
    def from_config(cls, cfg):
        fcos = cfg.MODEL.FCOS
        return {
            "num_classes": fcos.NUM_CLASSES,
            "focal_alpha": fcos.LOSS_ALPHA,
            "focal_gamma": fcos.LOSS_GAMMA,
            "loc_loss_type": fcos.LOC_LOSS_TYPE,
            "cls_normalizer": fcos.LOSS_NORMALIZER_CLS,
            "box_quality": fcos.BOX_QUALITY,
        }

    @torch.jit.unused  # training only: a scripted model runs inference
    def forward(
        self,
        logits: Tensor,
        box_dists: Tensor,
        quality: Tensor,
        labels: Tensor,
        reg_targets: Tensor,
    ) -> Dict[str, Tensor]:
        """
        Args:
            logits: (N, R, K) class logits over all levels' locations.
            box_dists: (N, R, 4) predicted distances, in stride units.
            quality: (N, R) centerness (or IoU) logits.
            labels: (N, R) from :class:`FCOSTargetAssigner` (K background, -1 ignored).
            reg_targets: (N, R, 4) target distances, in stride units.
        """
        # Loss math in fp32, also under mixed precision. A head output that overflowed
        # float16 (inf) is bounded to float16's range, so that the losses stay finite (a
        # NaN still shows as NaN); no gradient flows through the bounded entries.
        # Masks weight the sums instead of selecting elements: no data-dependent shapes,
        # so no host-device sync on GPUs.
        logits, quality = (x.float().clamp(-_BOUND, _BOUND) for x in (logits, quality))
        box_dists = box_dists.float().clamp(max=_BOUND)
        valid = labels >= 0
        positive = valid & (labels != self.num_classes)
        pos_weight = positive.to(logits.dtype)
        num_pos = mean_over_workers(pos_weight.sum())

        cls_target = F.one_hot(labels.clamp(min=0), self.num_classes + 1)[..., : self.num_classes]
        focal = sigmoid_focal_loss(
            logits,
            cls_target.to(logits.dtype),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="none",
        )
        loss_cls = (focal.sum(dim=-1) * valid).sum() / self.cls_normalization(num_pos, valid)

        # Predictions and targets off the positives are replaced by a unit box, so that
        # every term stays finite (a NaN or inf times a zero weight would still poison the
        # loss and the gradient) and no gradient reaches the non-positive predictions.
        unit_box = torch.ones_like(box_dists)
        targets = torch.where(positive[..., None], reg_targets.float(), unit_box).reshape(-1, 4)
        dists = torch.where(positive[..., None], box_dists, unit_box).reshape(-1, 4)
        ctr_targets = centerness_targets(targets) * pos_weight.reshape(-1)
        ctr_norm = mean_over_workers(ctr_targets.sum()).clamp(min=1e-6)
        if self.loc_loss_type == "smooth_l1":
            loc = smooth_l1_loss(dists, targets, beta=1.0 / 9, reduction="none").sum(1)
        else:
            loc = iou_loss(dists, targets, self.loc_loss_type)
        loss_loc = (loc * ctr_targets).sum() / ctr_norm

        if self.box_quality == "iou":
            quality_targets = box_iou_ltrb(dists.detach(), targets)
        else:
            quality_targets = ctr_targets
        quality_bce = F.binary_cross_entropy_with_logits(
            quality.reshape(-1), quality_targets, reduction="none"
        )
        loss_quality = (quality_bce * pos_weight.reshape(-1)).sum() / num_pos.clamp(min=1.0)
        return {
            "loss_fcos_cls": loss_cls,
            "loss_fcos_loc": loss_loc,
            QUALITY_LOSS_NAMES[self.box_quality]: loss_quality,
        }

    def cls_normalization(self, num_pos: Tensor, valid: Tensor) -> Tensor:
        """The classification loss's divisor, per ``cls_normalizer``."""
        if self.cls_normalizer == "all":
            return mean_over_workers(valid.sum().to(num_pos.dtype)).clamp(min=1.0)
        if self.cls_normalizer == "moving_fg":
            if self.training:
                m = self.moving_fg_momentum
                self.moving_num_fg.mul_(m).add_((1 - m) * num_pos.detach())
            return self.moving_num_fg.clamp(min=1.0)
        return num_pos.clamp(min=1.0)
