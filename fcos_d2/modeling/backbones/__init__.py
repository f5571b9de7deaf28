"""Backbones beyond ResNet, each registered in Detectron2's ``BACKBONE_REGISTRY``
alone and as ``build_fcos_*_fpn_backbone`` (with FPN and P6/P7, giving P3-P7)."""
from .darknet import DarkNet, build_darknet19_backbone, build_fcos_darknet19_fpn_backbone
from .mobilenet import MobileNetV2, build_fcos_mobilenetv2_fpn_backbone, build_mobilenetv2_backbone
from .regnet import build_fcos_regnet_fpn_backbone, build_regnet_backbone

__all__ = [
    "DarkNet",
    "MobileNetV2",
    "build_darknet19_backbone",
    "build_fcos_darknet19_fpn_backbone",
    "build_fcos_mobilenetv2_fpn_backbone",
    "build_fcos_regnet_fpn_backbone",
    "build_mobilenetv2_backbone",
    "build_regnet_backbone",
]
