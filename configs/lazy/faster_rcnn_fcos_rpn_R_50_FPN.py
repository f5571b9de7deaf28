"""Faster R-CNN R-50-FPN whose proposals come from FCOS, as a Detectron2 LazyConfig.

Detectron2's ``GeneralizedRCNN`` (as ``AMPGeneralizedRCNN``, float32 unless given a
``precision``) + ``StandardROIHeads`` with fcos_d2's
``FCOSProposalGenerator`` (class-agnostic FCOS head, Detectron2's anchor-RPN proposal
budget) -- the LazyConfig twin of ``configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml``.
One FPN gives P2-P7: the FCOS proposal head reads P3-P7, the ROI heads pool from P2-P5.
Data, optimizer, schedule and ``train`` are those of ``fcos_R_50_FPN.py``.
"""
import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    StandardROIHeads,
)

from fcos_d2.modeling import AMPGeneralizedRCNN, FCOSPostProcessor, FCOSProposalGenerator

from .fcos_R_50_FPN import dataloader, lr_multiplier, model as _fcos, optimizer, train


def _proposal_postprocessor(pre_nms_topk: int, post_nms_topk: int, nms_thresh: float):
    """MODEL.FCOS.RPN.*: no score threshold, top-k per level, NMS, top-k per image."""
    return L(FCOSPostProcessor)(
        score_thresh=0.0,
        pre_nms_topk=pre_nms_topk,
        post_nms_topk=post_nms_topk,
        nms_thresh=nms_thresh,
        thresh_with_ctr=False,
        score_sqrt=True,
        min_box_size=1.0,
    )


# Same ResNet + FPN (+ P6/P7 from P5) as the one-stage FCOS, with P2 added.
_backbone = _fcos.backbone
_backbone.bottom_up.out_features = ["res2", "res3", "res4", "res5"]

# The class-agnostic FCOS head (one "object" class), targets and losses.
_rpn_head = _fcos.head
_rpn_head.num_classes = 1
# one level deeper than in the one-stage model: channels of model.backbone
_rpn_head.input_shape = [L(ShapeSpec)(channels="${.....backbone.out_channels}")] * 5

model = L(AMPGeneralizedRCNN)(
    backbone=_backbone,
    proposal_generator=L(FCOSProposalGenerator)(
        head=_rpn_head,
        in_features=["p3", "p4", "p5", "p6", "p7"],
        strides=[8, 16, 32, 64, 128],
        target_assigner=_fcos.target_assigner,
        losses=_fcos.losses,
        postprocessor_train=_proposal_postprocessor(2000, 1000, 0.7),
        postprocessor_test=_proposal_postprocessor(1000, 1000, 0.7),
        class_agnostic=True,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),  # the last of box_head.fc_dims
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
        ),
    ),
    pixel_mean=_fcos.pixel_mean,
    pixel_std=_fcos.pixel_std,
    input_format="BGR",
)

# The ROI heads learn from non-crowd boxes only, as Detectron2's DatasetMapper gives them.
dataloader.train.mapper.keep_crowd = False
optimizer.lr = 0.02
train.output_dir = "output/lazy_faster_rcnn_fcos_rpn_R_50_FPN_1x"
