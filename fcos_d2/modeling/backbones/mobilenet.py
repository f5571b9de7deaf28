"""MobileNetV2 (Sandler et al., 2018) for FCOS: inverted residual blocks, ReLU6, norm.

Stage ``mbK`` ends at stride 2^K; the stem (3x3 conv, stride 2) belongs to ``mb1``. The
final 1x1 conv to 1280 channels and the classifier are left out, so ``mb3``/``mb4``/
``mb5`` give 32/96/320 channels (times the width multiplier).
"""
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN

from ..backbone import fcos_fpn_from_bottom_up
from .common import Stage, StageBackbone, conv_norm_act

__all__ = [
    "InvertedResidual",
    "MobileNetV2",
    "build_mobilenetv2_backbone",
    "build_fcos_mobilenetv2_fpn_backbone",
]

STEM_CHANNELS = 32
# Per stage, its block groups (expansion t, output channels c, blocks n, first stride s),
# the rows of the paper's Table 2.
MOBILENETV2_STAGES: Tuple[Tuple[Tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1),),  # mb1 (after the stem), stride 2
    ((6, 24, 2, 2),),  # mb2, stride 4
    ((6, 32, 3, 2),),  # mb3, stride 8
    ((6, 64, 4, 2), (6, 96, 3, 1)),  # mb4, stride 16
    ((6, 160, 3, 2), (6, 320, 1, 1)),  # mb5, stride 32
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, losing at most 10% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when ``expansion == 1``), 3x3 depthwise conv, linear 1x1
    projection; ReLU6 after the first two; identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, norm: str):
        super().__init__()
        hidden = in_channels * expansion
        layers: List[nn.Module] = []
        if expansion != 1:
            layers.append(conv_norm_act(in_channels, hidden, 1, norm=norm, activation=nn.ReLU6()))
        layers += [
            conv_norm_act(
                hidden, hidden, 3, stride=stride, groups=hidden, norm=norm, activation=nn.ReLU6()
            ),
            conv_norm_act(hidden, out_channels, 1, norm=norm),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


def mobilenet_stage(
    in_channels: int, groups: Sequence[Tuple[int, int, int, int]], width_mult: float, norm: str
) -> Tuple[nn.Sequential, int]:
    """The inverted residual blocks of one stage and its output channels."""
    blocks = []
    for expansion, channels, num_blocks, stride in groups:
        out_channels = make_divisible(channels * width_mult)
        for i in range(num_blocks):
            block_stride = stride if i == 0 else 1
            block = InvertedResidual(in_channels, out_channels, block_stride, expansion, norm)
            blocks.append(block)
            in_channels = out_channels
    return nn.Sequential(*blocks), in_channels


class MobileNetV2(StageBackbone):
    """MobileNetV2 with stages ``mb1`` .. ``mb5`` (strides 2 .. 32)."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        norm: str = "BN",
        out_features: Sequence[str] = ("mb3", "mb4", "mb5"),
        freeze_at: int = 0,
    ):
        stem_channels = make_divisible(STEM_CHANNELS * width_mult)
        stem = conv_norm_act(
            in_channels, stem_channels, 3, stride=2, norm=norm, activation=nn.ReLU6()
        )
        stages, channels = [], stem_channels
        for k, groups in enumerate(MOBILENETV2_STAGES, start=1):
            blocks, out_channels = mobilenet_stage(channels, groups, width_mult, norm)
            module = nn.Sequential(stem, blocks) if k == 1 else blocks
            # every stage halves the resolution: mb1 in its stem, the others in a block
            stages.append(Stage(f"mb{k}", module, 2, out_channels))
            channels = out_channels
        super().__init__(stages, out_features, freeze_at)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "in_channels": input_shape.channels,
            "width_mult": cfg.MODEL.MOBILENET.WIDTH_MULT,
            "norm": cfg.MODEL.MOBILENET.NORM,
            "out_features": cfg.MODEL.MOBILENET.OUT_FEATURES,
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        }


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2:
    """MobileNetV2 alone, configured by ``MODEL.MOBILENET``."""
    return MobileNetV2(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_fcos_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """MobileNetV2 + FPN + P6/P7: P3-P7 for FCOS."""
    return fcos_fpn_from_bottom_up(cfg, build_mobilenetv2_backbone(cfg, input_shape))
