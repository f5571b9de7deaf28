"""DarkNet-19, the YOLOv2 backbone (Redmon & Farhadi, 2017), for FCOS.

Stage ``darkK`` works at stride 2^K: after the first stage each one starts with 2x2 max
pooling, followed by convs alternating 3x3 and 1x1 (each conv + norm + LeakyReLU(0.1)).
The classifier (1x1 conv to 1000 classes, global pooling) is left out.
"""
from typing import List, Sequence, Tuple

from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN

from ..backbone import fcos_fpn_from_bottom_up
from .common import Stage, StageBackbone, conv_norm_act

__all__ = ["DarkNet", "build_darknet19_backbone", "build_fcos_darknet19_fpn_backbone"]

# Output channels of the convs of each stage (kernel 3, 1, 3, 1, ...).
DARKNET19_STAGE_WIDTHS: Tuple[Tuple[int, ...], ...] = (
    (32,),  # dark0, stride 1
    (64,),  # dark1, stride 2
    (128, 64, 128),  # dark2, stride 4
    (256, 128, 256),  # dark3, stride 8
    (512, 256, 512, 256, 512),  # dark4, stride 16
    (1024, 512, 1024, 512, 1024),  # dark5, stride 32
)


def darknet_stage(
    in_channels: int, widths: Sequence[int], norm: str, downsample: bool
) -> nn.Sequential:
    """Optional 2x2 max pooling, then convs alternating 3x3 and 1x1 with LeakyReLU(0.1)."""
    layers: List[nn.Module] = [nn.MaxPool2d(2, stride=2, ceil_mode=True)] if downsample else []
    for i, width in enumerate(widths):
        kernel = 3 if i % 2 == 0 else 1
        act = nn.LeakyReLU(0.1, inplace=True)
        layers.append(conv_norm_act(in_channels, width, kernel, norm=norm, activation=act))
        in_channels = width
    return nn.Sequential(*layers)


class DarkNet(StageBackbone):
    """DarkNet with stages ``dark0`` .. ``dark5``; DarkNet-19 by default.

    Outputs for the default ``("dark3", "dark4", "dark5")``: strides 8/16/32 with
    256/512/1024 channels.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        stage_widths: Sequence[Sequence[int]] = DARKNET19_STAGE_WIDTHS,
        norm: str = "BN",
        out_features: Sequence[str] = ("dark3", "dark4", "dark5"),
        freeze_at: int = 0,
    ):
        stages = []
        for k, widths in enumerate(stage_widths):
            module = darknet_stage(in_channels, widths, norm, downsample=k > 0)
            stages.append(Stage(f"dark{k}", module, 2 if k > 0 else 1, widths[-1]))
            in_channels = widths[-1]
        super().__init__(stages, out_features, freeze_at)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "in_channels": input_shape.channels,
            "norm": cfg.MODEL.DARKNET.NORM,
            "out_features": cfg.MODEL.DARKNET.OUT_FEATURES,
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        }


@BACKBONE_REGISTRY.register()
def build_darknet19_backbone(cfg, input_shape: ShapeSpec) -> DarkNet:
    """DarkNet-19 alone, configured by ``MODEL.DARKNET``."""
    return DarkNet(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_fcos_darknet19_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """DarkNet-19 + FPN + P6/P7: P3-P7 for FCOS."""
    return fcos_fpn_from_bottom_up(cfg, build_darknet19_backbone(cfg, input_shape))
