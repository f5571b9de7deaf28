"""FCOS modules, registered in Detectron2's registries on import."""
from .backbone import build_fcos_resnet_fpn_backbone
from . import backbones  # noqa: F401  (registers DarkNet-19, MobileNetV2, RegNet)
from .head import FCOSHead
from .inference import FCOSPostProcessor
from .losses import FCOSLosses
from .meta_arch import FCOS
from .pipeline import FCOSPipeline, FCOSPredictions
from .proposal_generator import FCOSProposalGenerator
from .rcnn import AMPGeneralizedRCNN
from .roi_heads import ProbabilisticCascadeROIHeads, ProbabilisticROIHeads  # noqa: F401
from .targets import FCOSTargetAssigner, compute_locations

__all__ = [
    "AMPGeneralizedRCNN",
    "FCOS",
    "FCOSHead",
    "FCOSLosses",
    "FCOSPipeline",
    "FCOSPredictions",
    "FCOSPostProcessor",
    "FCOSProposalGenerator",
    "FCOSTargetAssigner",
    "build_fcos_resnet_fpn_backbone",
    "compute_locations",
]
