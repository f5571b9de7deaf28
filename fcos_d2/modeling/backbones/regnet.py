"""RegNet (Radosavovic et al., 2020) for FCOS, with Detectron2's implementation.

``MODEL.REGNETS`` holds the RegNet parameters (defaults: RegNetX-400MF). Stage ``sK``
ends at stride 2^K; ``s2``/``s3``/``s4`` feed the FPN (64/160/384 channels for
RegNetX-400MF).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem

from ..backbone import fcos_fpn_from_bottom_up

__all__ = ["build_regnet_backbone", "build_fcos_regnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_regnet_backbone(cfg, input_shape: ShapeSpec) -> RegNet:
    """Detectron2's ``RegNet`` (SimpleStem, ResBottleneckBlock) from ``MODEL.REGNETS``."""
    if input_shape.channels != 3:
        raise ValueError(f"RegNet's stem takes 3 input channels, got {input_shape.channels}")
    r = cfg.MODEL.REGNETS
    return RegNet(
        stem_class=SimpleStem,
        stem_width=r.STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depth=r.DEPTH,
        w_a=r.WA,
        w_0=r.W0,
        w_m=r.WM,
        group_width=r.GROUP_WIDTH,
        bottleneck_ratio=r.BOTTLENECK_RATIO,
        se_ratio=r.SE_RATIO,
        norm=r.NORM,
        out_features=r.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_regnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """RegNet + FPN + P6/P7: P3-P7 for FCOS."""
    return fcos_fpn_from_bottom_up(cfg, build_regnet_backbone(cfg, input_shape))
