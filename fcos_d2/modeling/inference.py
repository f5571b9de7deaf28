"""FCOS post-processing: dense head outputs -> scored, class-aware-NMS'ed boxes."""
import math
from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

__all__ = ["FCOSPostProcessor", "decode_boxes"]


def _logit(p: float) -> float:
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return math.log(p / (1.0 - p))


def decode_boxes(points: Tensor, dists: Tensor, strides: Tensor) -> Tensor:
    """(M, 2) points and (M, 4) ltrb distances in stride units -> (M, 4) XYXY boxes."""
    dists = dists * strides[:, None]
    return torch.cat([points - dists[:, :2], points + dists[:, 2:]], dim=1)


class FCOSPostProcessor:
    """Turns per-level head outputs of one batch into detections per image.

    Per level: keep (location, class) pairs whose class probability (or cls * ctr with
    ``thresh_with_ctr``) passes ``score_thresh``, then the ``pre_nms_topk`` best by
    cls * ctr; the final score is sqrt(cls * ctr) (or cls * ctr); then
    class-aware NMS over all levels and at most ``post_nms_topk`` detections. Boxes whose
    width or height (after clipping to the image) is not above ``min_box_size`` are dropped.
    """

    @configurable
    def __init__(
        self,
        *,
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        post_nms_topk: int = 100,
        nms_thresh: float = 0.6,
        thresh_with_ctr: bool = False,
        score_sqrt: bool = True,
        min_box_size: float = 0.0,
    ):
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.thresh_with_ctr = thresh_with_ctr
        self.score_sqrt = score_sqrt
        self.min_box_size = min_box_size

    @classmethod
    def from_config(cls, cfg, is_train: bool = False):
        fcos = cfg.MODEL.FCOS
        return {
            "score_thresh": fcos.INFERENCE_TH_TRAIN if is_train else fcos.INFERENCE_TH_TEST,
            "pre_nms_topk": fcos.PRE_NMS_TOPK_TRAIN if is_train else fcos.PRE_NMS_TOPK_TEST,
            "post_nms_topk": fcos.POST_NMS_TOPK_TRAIN if is_train else fcos.POST_NMS_TOPK_TEST,
            "nms_thresh": fcos.NMS_TH,
            "thresh_with_ctr": fcos.THRESH_WITH_CTR,
            "score_sqrt": fcos.SCORE_SQRT,
        }

    def __call__(
        self,
        locations: List[Tensor],
        strides: List[int],
        logits: List[Tensor],
        box_dists: List[Tensor],
        ctrness: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """
        Args:
            locations: per level, (Ri, 2) image coordinates.
            strides: per level, its stride.
            logits, box_dists, ctrness: per level, (N, Ri, K), (N, Ri, 4), (N, Ri).
            image_sizes: per image, (height, width) of the input before padding.

        Returns:
            per image, Instances with ``pred_boxes``, ``scores``, ``pred_classes`` in
            input-image coordinates (clipped to the image).
        """
        results = []
        for n, image_size in enumerate(image_sizes):
            per_level = [
                self.select_level(loc, stride, lg[n], bd[n], ct[n])
                for loc, stride, lg, bd, ct in zip(locations, strides, logits, box_dists, ctrness)
            ]
            boxes, scores, classes = (torch.cat(x) for x in zip(*per_level))
            results.append(self.nms(boxes, scores, classes, image_size))
        return results

    def select_level(
        self, points: Tensor, stride: int, logits: Tensor, dists: Tensor, ctrness: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Thresholded top-k candidates of one level of one image: boxes, scores, classes.

        Few (location, class) pairs pass the threshold in a trained model: those are
        gathered and only their sigmoids taken. When more than ``pre_nms_topk`` pass, one
        dense top-k over the whole (R, K) score map is cheaper than gathering them all.
        """
        ctr_prob = ctrness.sigmoid()  # (R,)
        if self.thresh_with_ctr:
            dense = logits.sigmoid() * ctr_prob[:, None]  # (R, K) cls * ctr
            passing = dense > self.score_thresh
        else:
            # sigmoid(x) > t  <=>  x > logit(t): threshold the logits, no sigmoid needed
            dense = None
            passing = logits > _logit(self.score_thresh)
        if int(passing.count_nonzero()) > self.pre_nms_topk:
            if dense is None:
                dense = logits.sigmoid() * ctr_prob[:, None]
            # every one of the top k passes: passing scores are >= 0 > the -1 fill
            scores, flat = torch.where(passing, dense, -1.0).flatten().topk(self.pre_nms_topk)
            loc_idx, classes = flat // logits.shape[1], flat % logits.shape[1]
        else:
            loc_idx, classes = passing.nonzero().unbind(1)  # (M,) each
            if dense is not None:
                scores = dense[loc_idx, classes]
            else:
                scores = logits[loc_idx, classes].sigmoid() * ctr_prob[loc_idx]
        if self.score_sqrt:
            scores = torch.sqrt(scores)
        stride_t = dists.new_full((len(loc_idx),), float(stride))
        boxes = decode_boxes(points[loc_idx], dists[loc_idx].to(points.dtype), stride_t)
        return boxes, scores, classes

    def nms(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, image_size: Tuple[int, int]
    ) -> Instances:
        boxes = Boxes(boxes)
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=self.min_box_size)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        keep = batched_nms(boxes.tensor, scores, classes, self.nms_thresh)[: self.post_nms_topk]
        result = Instances(image_size)
        result.pred_boxes = boxes[keep]
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result
