"""Probabilistic two-stage FCOS, 3-stage Cascade R-CNN second stage, R-50-FPN, COCO 1x
(LazyConfig).

``ProbabilisticCascadeROIHeads`` on FCOS proposals with their object probability: stages
trained on positives at IoU 0.6 / 0.7 / 0.8 (Detectron2's box-delta weights 10/5, 20/10,
30/15), each detection scored sqrt(P(object) * mean of the stages' P(class | object)).
Proposals, data and schedule are ``prob_faster_rcnn_fcos_R_50_FPN.py``'s. The twin of
``configs/FCOS-RPN/prob_cascade_rcnn_R_50_FPN_1x.yaml``. NOT trained or evaluated in this
project (it needs COCO and GPUs).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from fcos_d2.modeling.roi_heads import (
    ProbabilisticCascadeROIHeads,
    ProbabilisticFastRCNNOutputLayers,
)

from .prob_faster_rcnn_fcos_R_50_FPN import dataloader, lr_multiplier, model, optimizer, train

_STAGE_IOUS = [0.6, 0.7, 0.8]
_DELTA_WEIGHTS = [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]

# one box head, predictor and matcher per stage instead of one of each
_predictor = model.roi_heads.pop("box_predictor")
model.roi_heads.pop("box_head")
model.roi_heads.pop("proposal_matcher")
model.roi_heads.update(
    _target_=ProbabilisticCascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels="${.....backbone.out_channels}", height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        )
        for _ in _STAGE_IOUS
    ],
    box_predictors=[
        L(ProbabilisticFastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),  # the last of box_heads' fc_dims
            box2box_transform=L(Box2BoxTransform)(weights=weights),
            num_classes="${...num_classes}",
            cls_agnostic_bbox_reg=True,
            test_score_thresh=_predictor.test_score_thresh,
            test_nms_thresh=_predictor.test_nms_thresh,
            test_topk_per_image=_predictor.test_topk_per_image,
        )
        for weights in _DELTA_WEIGHTS
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
        for iou in _STAGE_IOUS
    ],
)

train.output_dir = "output/lazy_prob_cascade_rcnn_fcos_R_50_FPN_1x"
