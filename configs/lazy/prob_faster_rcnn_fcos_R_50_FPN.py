"""Probabilistic two-stage FCOS, Faster R-CNN second stage, R-50-FPN, COCO 1x (LazyConfig).

FCOS proposals carry their object probability; ``ProbabilisticROIHeads`` scores each
detection sqrt(P(object) * P(class | object)). The recipe of "Probabilistic two-stage
detection" (CenterNet2): 4000 / 2000 proposals before / after NMS in training, 1000 / 256
at test, proposal NMS at IoU 0.9, second-stage positives at IoU >= 0.6, class-agnostic box
regression. The rest is ``faster_rcnn_fcos_rpn_R_50_FPN.py``. The twin of
``configs/FCOS-RPN/prob_faster_rcnn_R_50_FPN_1x.yaml``. NOT trained or evaluated in this
project (it needs COCO and GPUs).
"""
from fcos_d2.modeling.roi_heads import ProbabilisticFastRCNNOutputLayers, ProbabilisticROIHeads

from .faster_rcnn_fcos_rpn_R_50_FPN import dataloader, lr_multiplier, model, optimizer, train

# MODEL.FCOS.RPN.*: top-k per level before NMS, NMS, top-k per image
model.proposal_generator.postprocessor_train.pre_nms_topk = 4000
model.proposal_generator.postprocessor_train.post_nms_topk = 2000
model.proposal_generator.postprocessor_train.nms_thresh = 0.9
model.proposal_generator.postprocessor_test.pre_nms_topk = 1000
model.proposal_generator.postprocessor_test.post_nms_topk = 256
model.proposal_generator.postprocessor_test.nms_thresh = 0.9

model.roi_heads._target_ = ProbabilisticROIHeads
model.roi_heads.proposal_matcher.thresholds = [0.6]
model.roi_heads.box_predictor._target_ = ProbabilisticFastRCNNOutputLayers
model.roi_heads.box_predictor.cls_agnostic_bbox_reg = True

train.output_dir = "output/lazy_prob_faster_rcnn_fcos_R_50_FPN_1x"
