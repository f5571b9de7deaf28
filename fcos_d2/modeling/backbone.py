"""ResNet + FPN backbone that gives FCOS its P3-P7 levels."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_fcos_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet bottom-up, FPN on ``MODEL.FPN.IN_FEATURES`` and a P6/P7 block.

    P6/P7 are computed from ``MODEL.FCOS.TOP_BLOCK_IN_FEATURE``: "p5" as in the FCOS
    paper, or "res5" as in RetinaNet.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_in = cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE
    if top_in == "p5":
        top_in_channels = out_channels
    elif top_in == "res5":
        top_in_channels = bottom_up.output_shape()["res5"].channels
    else:
        raise ValueError(
            f"MODEL.FCOS.TOP_BLOCK_IN_FEATURE must be 'p5' or 'res5', got {top_in!r}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(top_in_channels, out_channels, in_feature=top_in),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
