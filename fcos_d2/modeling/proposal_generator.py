"""FCOS as a proposal generator (an RPN) for Detectron2's two-stage detectors."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import ImageList, Instances

from .head import FCOSHead
from .inference import FCOSPostProcessor
from .losses import FCOSLosses
from .pipeline import FCOSPipeline, check_strides
from .registry import RegistryEntry
from .targets import FCOSTargetAssigner

__all__ = ["FCOSProposalGenerator"]


class FCOSProposalGenerator(FCOSPipeline):
    """The FCOS head, targets, losses and post-processing, used as an RPN.

    Returns Detectron2's proposal convention: per image an ``Instances`` with
    ``proposal_boxes`` (in the padded input's coordinates, clipped to the image) and
    ``objectness_logits`` (sorted, highest first), plus the FCOS losses in training.
    Registered as ``PROPOSAL_GENERATOR_REGISTRY["FCOS"]`` (a
    :class:`~fcos_d2.modeling.registry.RegistryEntry` that builds this class).

    The proposals' object probability is the FCOS score of the class-agnostic head,
    P(object) = sqrt(cls * ctr) (cls * ctr with ``MODEL.FCOS.SCORE_SQRT: False``): the
    focal-loss "object here" probability times the predicted centerness, the confidence the
    one-stage FCOS ranks and is evaluated with. ``objectness_logits`` is its logit, so
    that sigmoid(objectness_logits) gives it back (P(object) = 0 is -inf), Detectron2's
    convention; the probabilistic ROI heads (:mod:`fcos_d2.modeling.roi_heads`) read it so.
    """

    @configurable
    def __init__(
        self,
        *,
        head: nn.Module,
        in_features: List[str],
        strides: List[int],
        target_assigner: FCOSTargetAssigner,
        losses: FCOSLosses,
        postprocessor_train: FCOSPostProcessor,
        postprocessor_test: FCOSPostProcessor,
        class_agnostic: bool = True,
        location_offset: float = 0.5,
        spacing_from_input: bool = False,
    ):
        """
        Args:
            head, in_features, strides, target_assigner, losses: see
                :class:`FCOSPipeline` (``from_config`` reads the strides from the
                backbone's output shapes).
            postprocessor_train, postprocessor_test: proposals in training / at inference.
            class_agnostic: one "object" class (every ground-truth box is class 0).
            location_offset, spacing_from_input: where the locations sit (see
                :class:`FCOSPipeline`).
        """
        super().__init__(
            head=head,
            in_features=in_features,
            strides=strides,
            target_assigner=target_assigner,
            losses=losses,
            postprocessor=postprocessor_test,
            postprocessor_train=postprocessor_train,
            location_offset=location_offset,
            spacing_from_input=spacing_from_input,
        )
        self.class_agnostic = class_agnostic

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        fcos, rpn = cfg.MODEL.FCOS, cfg.MODEL.FCOS.RPN
        in_features = fcos.IN_FEATURES
        strides = check_strides(input_shape, in_features, fcos.FPN_STRIDES)
        num_classes = 1 if rpn.CLASS_AGNOSTIC else fcos.NUM_CLASSES
        head_args = FCOSHead.from_config(cfg, [input_shape[f] for f in in_features])
        assigner_args = FCOSTargetAssigner.from_config(cfg)
        loss_args = FCOSLosses.from_config(cfg)

        def postprocessor(split: str) -> FCOSPostProcessor:
            return FCOSPostProcessor(
                score_thresh=rpn.SCORE_TH,
                pre_nms_topk=rpn[f"PRE_NMS_TOPK_{split}"],
                post_nms_topk=rpn[f"POST_NMS_TOPK_{split}"],
                nms_thresh=rpn[f"NMS_TH_{split}"],
                thresh_with_ctr=fcos.THRESH_WITH_CTR,
                score_sqrt=fcos.SCORE_SQRT,
                min_box_size=rpn.MIN_SIZE,
            )

        return {
            "head": FCOSHead(**{**head_args, "num_classes": num_classes}),
            "in_features": in_features,
            "strides": strides,
            "target_assigner": FCOSTargetAssigner(**{**assigner_args, "num_classes": num_classes}),
            "losses": FCOSLosses(**{**loss_args, "num_classes": num_classes}),
            "postprocessor_train": postprocessor("TRAIN"),
            "postprocessor_test": postprocessor("TEST"),
            "class_agnostic": rpn.CLASS_AGNOSTIC,
            "location_offset": fcos.LOCATION_OFFSET,
            "spacing_from_input": fcos.SPACING_FROM_INPUT,
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        predictions = self.predict(features, (images.tensor.shape[-2], images.tensor.shape[-1]))
        losses: Dict[str, Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("FCOSProposalGenerator needs gt_instances in training")
            losses = self.losses_of(predictions, gt_instances, self.class_agnostic)
        with torch.no_grad():
            detections = self.detect(predictions, images.image_sizes)
        return [self.to_proposals(d) for d in detections], losses

    @staticmethod
    def to_proposals(detections: Instances) -> Instances:
        """Detections (sorted by score) -> ``proposal_boxes`` + ``objectness_logits``,
        the logit of the score (no clamping: sigmoid gives the score back, 0 and 1 too)."""
        proposals = Instances(detections.image_size)
        proposals.proposal_boxes = detections.pred_boxes
        proposals.objectness_logits = torch.logit(detections.scores)
        return proposals


# PROPOSAL_GENERATOR.NAME: "FCOS" builds FCOSProposalGenerator(cfg, input_shape).
PROPOSAL_GENERATOR_REGISTRY.register(RegistryEntry("FCOS", FCOSProposalGenerator))
