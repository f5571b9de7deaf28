"""FCOS post-processing: dense head outputs -> scored, class-aware-NMS'ed boxes."""
import logging
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torchvision.ops import batched_nms, nms

from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import log_every_n_seconds

from .deprecation import renamed_argument
from .recording import exporting, recording
from .predictions import FCOSPredictions

__all__ = [
    "FCOSPostProcessor",
    "class_aware_nms",
    "clip_boxes",
    "decode_boxes",
    "finite_mask",
    "nonempty_mask",
    "rescale_boxes",
    "to_instances",
]

logger = logging.getLogger(__name__)

Size = Tuple[Union[int, Tensor], Union[int, Tensor]]


def _logit(p: float) -> float:
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return math.log(p / (1.0 - p))


def class_offset_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float):
    """Class-aware NMS as one NMS over the boxes shifted apart by class: what torchvision's
    ``batched_nms`` computes for up to 1000 boxes on CPU and while tracing, without its
    branch on the number of boxes, which ``torch.export`` cannot record.

    torchvision declares to ``torch.export`` that its NMS keeps at least 2 boxes (the
    recorded graph asserts it): two lowest-scored boxes apart from all others (at negative
    coordinates) make that true for 0 or 1 candidates, and are dropped from the result."""
    top = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # defined for 0 boxes too
    shifted = boxes + (classes.to(boxes) * (top + 1))[:, None]
    apart = torch.tensor(
        [[-3.0, -3.0, -2.0, -2.0], [-6.0, -6.0, -5.0, -5.0]], dtype=boxes.dtype, device=boxes.device
    )
    lowest = scores.new_full((2,), -1.0)  # candidates' scores are >= 0
    keep = nms(torch.cat([shifted, apart]), torch.cat([scores, lowest]), iou_threshold)
    return keep[:-2]  # best first: the two added boxes come last


def class_aware_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float):
    """Indices of the boxes that NMS within each class keeps, best score first:
    torchvision's ``batched_nms``, or :func:`class_offset_nms` under ``torch.export``."""
    if exporting():
        return class_offset_nms(boxes, scores, classes, iou_threshold)
    return batched_nms(boxes, scores, classes, iou_threshold)


def finite_mask(boxes: Tensor, scores: Tensor) -> Tensor:
    """(M,) whether a candidate's box and score are finite; the number of the others (from
    a head whose outputs overflowed or diverged) goes to a log line, except while a graph
    is being recorded."""
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not recording():
        _log_non_finite(len(finite) - int(finite.count_nonzero()))
    return finite


@torch.jit.unused  # Python logging: never reached in a graph (see recording())
def _log_non_finite(dropped: int) -> None:
    if dropped:
        log_every_n_seconds(
            logging.WARNING,
            f"FCOS post-processing dropped {dropped} candidates with a non-finite "
            "box or score (the head's outputs overflowed or diverged)",
            n=10,
            name=__name__,
        )


def nonempty_mask(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """(M,) whether an (M, 4) XYXY box is wider and higher than ``min_size``; for 0,
    Detectron2's ``Boxes.nonempty()``."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (widths > min_size) & (heights > min_size)


def decode_boxes(points: Tensor, dists: Tensor, stride: float) -> Tensor:
    """(M, 2) points and (M, 4) ltrb distances in stride units -> (M, 4) XYXY boxes."""
    dists = dists * stride
    return torch.cat([points - dists[:, :2], points + dists[:, 2:]], dim=1)


def clip_boxes(boxes: Tensor, image_size: Size) -> Tensor:
    """(M, 4) XYXY boxes clipped to [0, width] x [0, height].

    ``image_size`` may hold tensors (an exported graph's dynamic size).
    """
    height, width = _size_as(image_size[0], boxes), _size_as(image_size[1], boxes)
    upper = torch.stack([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), upper)


def _size_as(size: Union[int, Tensor], like: Tensor) -> Tensor:
    """A height or width as a 0-dim tensor of ``like``'s dtype and device."""
    if isinstance(size, Tensor):  # (TorchScript types each branch's call)
        return torch.as_tensor(size, dtype=like.dtype, device=like.device)
    return torch.as_tensor(size, dtype=like.dtype, device=like.device)


def _size_tensor(size: Union[Tuple[int, int], Tensor]) -> Tensor:
    """(height, width) as a (2,) tensor; sizes that are tensors (traced ones) stay in the
    graph instead of becoming constants."""
    if isinstance(size, Tensor):
        return size
    return torch.stack([torch.as_tensor(s) for s in size])


def rescale_boxes(
    boxes: Tensor,
    from_size: Union[Tuple[int, int], Tensor],
    to_size: Union[Tuple[int, int], Tensor],
    remove_empty_boxes: bool = True,
    **renamed,
) -> Tuple[Tensor, Tensor]:
    """(M, 4) XYXY boxes in an image of ``from_size`` -> in one of ``to_size``, clipped to
    it, as Detectron2's ``detector_postprocess`` does (the scale computed in float64,
    applied in the boxes' dtype); eager inference and the exported graphs call this.

    Args:
        from_size, to_size: (height, width): Python ints, 0-dim tensors or a (2,) int64
            tensor (an exported graph's dynamic sizes).
        remove_empty_boxes: whether the returned mask drops the boxes left with no area
            (``detector_postprocess`` drops them; torchvision keeps them); its deprecated
            name is ``remove_empty``.
    Returns:
        the (M, 4) boxes and an (M,) bool mask of those to keep.
    """
    remove_empty_boxes = renamed_argument(
        "rescale_boxes", renamed, "remove_empty", "remove_empty_boxes", remove_empty_boxes
    )
    to_size, from_size = _size_tensor(to_size), _size_tensor(from_size)
    scale = (to_size.double() / from_size.double()).to(boxes.dtype)  # (2,) y, x
    boxes = boxes * torch.stack([scale[1], scale[0], scale[1], scale[0]])
    boxes = clip_boxes(boxes, (to_size[0], to_size[1]))
    if not remove_empty_boxes:
        return boxes, torch.ones_like(boxes[:, 0], dtype=torch.bool)
    return boxes, nonempty_mask(boxes)


def _cls_times_ctr(logits: Tensor, ctr_prob: Tensor) -> Tensor:
    """(R, K) class probabilities times the (R,) centerness probabilities."""
    return logits.sigmoid() * ctr_prob[:, None]


def to_instances(
    boxes: Tensor, scores: Tensor, classes: Tensor, image_size: Tuple[int, int]
) -> Instances:
    """Detections as Detectron2's ``Instances`` (pred_boxes, scores, pred_classes)."""
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = classes
    return result


class FCOSPostProcessor(nn.Module):
    """Turns the head's predictions for a batch into detections per image.

    Per level: keep (location, class) pairs whose class probability (or cls * ctr with
    ``thresh_with_ctr``) passes ``score_thresh``, then the ``pre_nms_topk`` best by
    cls * ctr; the final score is sqrt(cls * ctr) (or cls * ctr); then class-aware NMS
    over all levels and at most ``post_nms_topk`` detections. Boxes whose width or
    height (after clipping to the image) is not above ``min_box_size`` are dropped, and
    so are candidates with a non-finite box or score (a diverging or overflowed head),
    counted in a log line.

    torchvision's FCOS instead thresholds the final score (``thresh_on_final_score``) and
    keeps empty boxes (``remove_empty_boxes=False``).

    :meth:`detect_image` is the whole computation for one image on tensors; it can be
    traced (``torch.jit.trace``, ONNX export). :meth:`final_detections` is its last step
    (after the per-level selection), which test-time augmentation also merges with. A
    module without parameters or buffers (no checkpoint keys), so that it scripts
    (``torch.jit.script``) with the model that holds it.
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
        thresh_on_final_score: bool = False,
        remove_empty_boxes: bool = True,
        **renamed,
    ):
        """
        Args:
            remove_empty_boxes: drop the boxes whose width or height after clipping is not
                above ``min_box_size`` (the empty ones for 0), ``MODEL.FCOS.REMOVE_EMPTY_BOXES``;
                ``remove_small_boxes`` is its deprecated name.
            the others: see the class.
        """
        super().__init__()
        self.remove_empty_boxes = renamed_argument(
            "FCOSPostProcessor", renamed, "remove_small_boxes", "remove_empty_boxes",
            remove_empty_boxes,
        )
        self.thresh_on_final_score = thresh_on_final_score
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
            "thresh_on_final_score": fcos.THRESH_ON_FINAL_SCORE,
            "remove_empty_boxes": fcos.REMOVE_EMPTY_BOXES,
        }

    def forward(
        self, predictions: FCOSPredictions, image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """
        Args:
            predictions: the batch's per-level head outputs.
            image_sizes: per image, (height, width) of the input before padding.

        Returns:
            per image, Instances with ``pred_boxes``, ``scores``, ``pred_classes`` in
            input-image coordinates (clipped to the image), best score first.
        """
        results: List[Instances] = []
        with record_function("FCOSPostProcessor.__call__"):  # a profiler range (benchmarks/)
            for n, image_size in enumerate(image_sizes):
                boxes, scores, classes = self.detect_image(predictions, n, image_size)
                results.append(to_instances(boxes, scores, classes, image_size))
        return results

    def detect_image(
        self, predictions: FCOSPredictions, n: int, image_size: Size
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Detections of image ``n``: (D, 4) boxes, (D,) scores, (D,) classes."""
        boxes, scores, classes = [], [], []
        for points, stride, logits, dists, ctrness in zip(
            predictions.locations,
            predictions.strides,
            predictions.logits,
            predictions.box_dists,
            predictions.ctrness,
        ):
            level = self.select_level(points, stride, logits[n], dists[n], ctrness[n])
            boxes.append(level[0])
            scores.append(level[1])
            classes.append(level[2])
        return self.final_detections(
            torch.cat(boxes), torch.cat(scores), torch.cat(classes), image_size
        )

    def select_level(
        self, points: Tensor, stride: int, logits: Tensor, dists: Tensor, ctrness: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Thresholded top-k candidates of one level of one image: boxes, scores, classes.

        Args:
            points: (R, 2); logits: (R, K); dists: (R, 4); ctrness: (R,).

        Few (location, class) pairs pass the threshold in a trained model: those are
        gathered and only their sigmoids taken. When more than ``pre_nms_topk`` pass
        (and always while tracing, where the count is not known), one dense top-k over
        the whole (R, K) score map is cheaper than gathering them all.
        """
        ctr_prob = ctrness.sigmoid()  # (R,)
        dense: Optional[Tensor] = None  # (R, K) cls * ctr, the score map before any sqrt
        if self.thresh_on_final_score or self.thresh_with_ctr:
            cls_ctr = _cls_times_ctr(logits, ctr_prob)
            # torchvision thresholds the final score: sqrt(cls * ctr) with score_sqrt
            sqrt = self.thresh_on_final_score and self.score_sqrt
            passing = (torch.sqrt(cls_ctr) if sqrt else cls_ctr) > self.score_thresh
            dense = cls_ctr
        else:
            # sigmoid(x) > t  <=>  x > logit(t): threshold the logits, no sigmoid needed
            passing = logits > _logit(self.score_thresh)
        if recording() or int(passing.count_nonzero()) > self.pre_nms_topk:
            if dense is None:
                dense = _cls_times_ctr(logits, ctr_prob)
            loc_idx, classes, scores = self.dense_topk(dense, passing)
        else:
            loc_idx, classes = passing.nonzero().unbind(1)  # (M,) each
            if dense is not None:
                scores = dense[loc_idx, classes]
            else:
                scores = logits[loc_idx, classes].sigmoid() * ctr_prob[loc_idx]
        if self.score_sqrt:
            scores = torch.sqrt(scores)
        boxes = decode_boxes(points[loc_idx], dists[loc_idx].to(points.dtype), float(stride))
        return boxes, scores, classes

    def dense_topk(self, dense: Tensor, passing: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The ``pre_nms_topk`` best passing pairs of an (R, K) score map: location
        indices, classes and scores (cls * ctr)."""
        num_classes = dense.shape[1]
        # passing scores are >= 0 > the -1 fill; the padding makes k <= the numel always
        flat = torch.where(passing, dense, -1.0).flatten()
        flat = torch.cat([flat, flat.new_full((self.pre_nms_topk,), -1.0)])
        scores, index = flat.topk(self.pre_nms_topk)
        keep = scores >= 0
        scores, index = scores[keep], index[keep]
        return index // num_classes, index % num_classes, scores

    def final_detections(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, image_size: Size
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Candidates of one image -> its detections: (D, 4) boxes clipped to
        ``image_size``, (D,) scores and (D,) classes, best score first.

        Drops the candidates with a non-finite box or score and (with
        ``remove_empty_boxes``) those whose clipped box is not larger than
        ``min_box_size``, then keeps the ``post_nms_topk`` best after class-aware NMS.
        """
        keep = finite_mask(boxes, scores)  # before clipping, which makes inf coordinates finite
        boxes = clip_boxes(boxes, image_size)
        if self.remove_empty_boxes:
            keep = keep & nonempty_mask(boxes, self.min_box_size)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        keep = class_aware_nms(boxes, scores, classes, self.nms_thresh)[: self.post_nms_topk]
        return boxes[keep], scores[keep], classes[keep]
