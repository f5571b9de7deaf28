"""Probabilistic two-stage ROI heads: the second stage classifies what the first stage found.

"Probabilistic two-stage detection" (Zhou, Koltun, Kraehenbuehl, 2021; CenterNet2) reads
the first stage as a detector of objects, with a probability P(object) per proposal, and
the second stage as a classifier given an object, P(class | object). The score of class
``c`` for proposal ``r`` is then their geometric mean::

    score(r, c) = sqrt(P_r(object) * P_r(c | object))

Two heads, registered in Detectron2's ``ROI_HEADS_REGISTRY``, train exactly as the
Detectron2 heads they subclass and differ only in that test-time score:

* ``ProbabilisticROIHeads`` -- Detectron2's ``StandardROIHeads`` (Faster R-CNN);
* ``ProbabilisticCascadeROIHeads`` -- Detectron2's ``CascadeROIHeads`` (Cascade R-CNN),
  whose P(c | object) is the mean of its stages' class probabilities, as Detectron2's.

P(object) comes from the proposals' ``objectness_logits``: Detectron2's convention is
P(object) = sigmoid(objectness_logits), which
:class:`~fcos_d2.modeling.FCOSProposalGenerator` follows (its probability is the FCOS
score, see there). Both heads load the weights of, and are loaded by, the Detectron2 head
of the same structure: their parameters are the same.
"""
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import Boxes, Instances

__all__ = [
    "ProbabilisticCascadeROIHeads",
    "ProbabilisticFastRCNNOutputLayers",
    "ProbabilisticROIHeads",
    "combine_scores",
    "object_probabilities",
]

#: (predictor, its predictions (class logits, box deltas), the proposals it saw): one stage
Stage = Tuple[FastRCNNOutputLayers, Tuple[Tensor, Tensor], List[Instances]]


def object_probabilities(proposals: Instances) -> Tensor:
    """(R,) P(object) of the first stage: sigmoid of the proposals' ``objectness_logits``
    (-inf gives 0; Detectron2 gives added ground-truth boxes a logit of about 23, i.e. 1)."""
    return proposals.objectness_logits.sigmoid()


def combine_scores(class_probs: Tensor, object_probs: Tensor) -> Tensor:
    """(R, K + 1) second-stage P(c | object) and (R,) first-stage P(object) -> (R, K + 1)
    final scores sqrt(P(object) * P(c | object))."""
    return torch.sqrt(class_probs * object_probs[:, None])


class ProbabilisticFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Detectron2's Fast R-CNN box predictor (same layers, losses and box decoding) whose
    test-time scores combine its class probabilities with the proposals' P(object)
    (:func:`combine_scores`). ``test_score_thresh`` (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``)
    and the per-class NMS apply to the combined score."""

    def inference(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]):
        """Same outputs as ``FastRCNNOutputLayers.inference``, combined scores."""
        boxes = self.predict_boxes(predictions, proposals)
        return self.detect(boxes, self.predict_probs(predictions, proposals), proposals)

    def detect(
        self, boxes: List[Tensor], class_probs: List[Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], List[Tensor]]:
        """Per image, the (Ri, 4) or (Ri, K * 4) ``boxes`` and (Ri, K + 1) P(c | object) of
        the ``proposals`` -> detections scored sqrt(P(object) * P(c | object)), thresholded,
        NMS'ed and kept as ``fast_rcnn_inference`` does (and the kept rows' indices)."""
        scores = [
            combine_scores(probs, object_probabilities(props))
            for probs, props in zip(class_probs, proposals)
        ]
        return fast_rcnn_inference(
            boxes,
            scores,
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )


def _check_predictors(predictors, key: str) -> None:
    wrong = [
        type(p).__name__
        for p in predictors
        if not isinstance(p, ProbabilisticFastRCNNOutputLayers)
    ]
    if wrong:
        raise TypeError(
            f"{key} must be ProbabilisticFastRCNNOutputLayers (it combines the first-stage "
            f"probability with the class probability), got {wrong}"
        )


@ROI_HEADS_REGISTRY.register()
class ProbabilisticROIHeads(StandardROIHeads):
    """Faster R-CNN's ROI heads (Detectron2's ``StandardROIHeads``) scoring detections
    sqrt(P(object) * P(c | object)): ``MODEL.ROI_HEADS.NAME: "ProbabilisticROIHeads"``.

    Training, box pooling and head, mask and keypoint branches are
    ``StandardROIHeads``'; its box predictor is a
    :class:`ProbabilisticFastRCNNOutputLayers` (built from the same config keys).
    """

    @configurable
    def __init__(self, *, box_predictor: ProbabilisticFastRCNNOutputLayers, **kwargs):
        """``box_predictor``: a :class:`ProbabilisticFastRCNNOutputLayers`; the other
        arguments are ``StandardROIHeads``'."""
        _check_predictors([box_predictor], "box_predictor")
        super().__init__(box_predictor=box_predictor, **kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["box_predictor"] = ProbabilisticFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


def refine_proposals(stage: Stage) -> List[Instances]:
    """The next cascade stage's proposals at inference: the boxes ``stage`` predicts for
    its proposals, clipped to the image, with the same ``objectness_logits`` (row ``r``
    stays proposal ``r``: nothing is dropped, as in Detectron2's cascade at inference)."""
    predictor, predictions, proposals = stage
    refined = []
    for boxes, previous in zip(predictor.predict_boxes(predictions, proposals), proposals):
        proposal_boxes = Boxes(boxes.detach())
        proposal_boxes.clip(previous.image_size)
        result = Instances(previous.image_size)
        result.proposal_boxes = proposal_boxes
        result.objectness_logits = previous.objectness_logits
        refined.append(result)
    return refined


@ROI_HEADS_REGISTRY.register()
class ProbabilisticCascadeROIHeads(CascadeROIHeads):
    """Cascade R-CNN's ROI heads (Detectron2's ``CascadeROIHeads``) scoring detections
    sqrt(P(object) * P(c | object)), P(c | object) the mean of the stages' class
    probabilities: ``MODEL.ROI_HEADS.NAME: "ProbabilisticCascadeROIHeads"``.

    Training is ``CascadeROIHeads``' unchanged. At inference the stages run as in
    Detectron2 (stage k + 1 on the boxes of stage k, the last stage's boxes, the mean of
    the stages' class probabilities), written here with public methods only, so that
    every stage's proposals keep the first stage's ``objectness_logits``
    (:meth:`run_stages`).
    """

    @configurable
    def __init__(self, *, box_predictors: List[ProbabilisticFastRCNNOutputLayers], **kwargs):
        """``box_predictors``: one :class:`ProbabilisticFastRCNNOutputLayers` per stage;
        the other arguments are ``CascadeROIHeads``'."""
        _check_predictors(box_predictors, "box_predictors")
        super().__init__(box_predictors=box_predictors, **kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ret["box_predictors"] = [
            ProbabilisticFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w)
            )
            for head, w in zip(ret["box_heads"], weights)
        ]
        return ret

    def forward(
        self,
        images,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets=None,
    ):
        if self.training:
            return super().forward(images, features, proposals, targets)
        instances = self.detect(self.run_stages(features, proposals))
        return self.forward_with_given_boxes(features, instances), {}

    def run_stages(self, features: Dict[str, Tensor], proposals: List[Instances]) -> List[Stage]:
        """Inference: per stage (predictor, predictions, proposals), stage k + 1 on the
        boxes of stage k (:func:`refine_proposals`)."""
        maps = [features[f] for f in self.box_in_features]
        stages: List[Stage] = []
        for head, predictor in zip(self.box_head, self.box_predictor):
            if stages:
                proposals = refine_proposals(stages[-1])
            box_features = self.box_pooler(maps, [p.proposal_boxes for p in proposals])
            stages.append((predictor, predictor(head(box_features)), proposals))
        return stages

    @staticmethod
    def detect(stages: List[Stage]) -> List[Instances]:
        """Detections from the last stage's boxes and the stages' mean P(c | object)."""
        per_stage = [predictor.predict_probs(out, props) for predictor, out, props in stages]
        class_probs = [sum(per_image) / len(stages) for per_image in zip(*per_stage)]
        predictor, predictions, proposals = stages[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        return predictor.detect(boxes, class_probs, proposals)[0]
