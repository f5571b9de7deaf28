"""ResNet + FPN backbone that gives FCOS its P3-P7 levels, and the shared FPN wrapper."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_fcos_resnet_fpn_backbone", "fcos_fpn_from_bottom_up"]


def fcos_fpn_from_bottom_up(cfg, bottom_up: Backbone) -> FPN:
    """FPN on ``MODEL.FPN.IN_FEATURES`` of any bottom-up network, plus a P6/P7 block.

    P6/P7 are computed from ``MODEL.FCOS.TOP_BLOCK_IN_FEATURE``: "p5" as in the FCOS
    paper, or "res5" as in RetinaNet -- for a non-ResNet bottom-up, "res5" means its
    stride-32 feature, the last of ``MODEL.FPN.IN_FEATURES``.
    """
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_in = cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE
    if top_in == "p5":
        top_in_channels = out_channels
    elif top_in == "res5":
        top_in = in_features[-1]
        top_in_channels = bottom_up.output_shape()[top_in].channels
    else:
        raise ValueError(
            f"MODEL.FCOS.TOP_BLOCK_IN_FEATURE must be 'p5' or 'res5', got {top_in!r}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(top_in_channels, out_channels, in_feature=top_in),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet bottom-up, FPN on ``MODEL.FPN.IN_FEATURES`` and a P6/P7 block."""
    return fcos_fpn_from_bottom_up(cfg, build_resnet_backbone(cfg, input_shape))
