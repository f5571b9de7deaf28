"""FCOS head: classification, box-distance and centerness branches shared over levels."""
import math
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import deform_conv2d

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

__all__ = ["FCOSHead", "Scale", "Tower"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DeformConv3x3(nn.Module):
    """3x3 deformable conv (torchvision's kernel) with its offsets predicted by a 3x3 conv.

    The offset conv starts at zero, so at initialisation it equals a plain 3x3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=1)
        self.offset = nn.Conv2d(in_channels, 2 * 9, kernel_size=3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        return deform_conv2d(x, self.offset(x), self.weight, self.bias, padding=(1, 1))


def _make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm in ("", "none"):
        return nn.Identity()
    raise ValueError(f"MODEL.FCOS.NORM must be 'GN', 'BN' or '', got {norm!r}")


class Tower(nn.Module):
    """``num_convs`` x (3x3 conv + norm + ReLU), conv weights shared over levels.

    GroupNorm is shared over levels too; BatchNorm gets one instance per level because
    the statistics of the levels differ.
    """

    def __init__(
        self, channels: int, num_convs: int, norm: str, num_levels: int, deformable_last: bool
    ):
        super().__init__()
        self.convs = nn.ModuleList()
        for i in range(num_convs):
            if deformable_last and i == num_convs - 1:
                self.convs.append(DeformConv3x3(channels, channels))
            else:
                self.convs.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        levels_with_own_norm = num_levels if norm == "BN" else 1
        self.norms = nn.ModuleList(
            nn.ModuleList(_make_norm(norm, channels) for _ in range(num_convs))
            for _ in range(levels_with_own_norm)
        )

    def forward(self, x: Tensor, level: int) -> Tensor:
        # ModuleLists are iterated, not indexed by a variable: TorchScript needs that
        for i, norms in enumerate(self.norms):  # the levels' shared norms, or each level's
            if len(self.norms) == 1 or i == level:
                for conv, norm in zip(self.convs, norms):
                    x = F.relu(norm(conv(x)), inplace=True)  # the norm's output is not reused
        return x


class FCOSHead(nn.Module):
    """Predicts, for every location of every level:

    * class logits, (N, K, Hi, Wi)
    * distances (l, t, r, b) to the box sides, in units of the level's stride, (N, 4, Hi, Wi)
    * the centerness logit, (N, 1, Hi, Wi)
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        use_relu: bool = True,
        centerness_on_reg: bool = True,
        use_deformable: bool = False,
    ):
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOSHead needs the same channels on every level, got {channels}")
        channels = channels.pop()
        num_levels = len(input_shape)
        self.num_classes = num_classes
        self.use_relu = use_relu
        self.centerness_on_reg = centerness_on_reg

        self.share_tower = Tower(channels, num_share_convs, norm, num_levels, False)
        self.cls_tower = Tower(channels, num_cls_convs, norm, num_levels, use_deformable)
        self.box_tower = Tower(channels, num_box_convs, norm, num_levels, use_deformable)
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.ctrness = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        self.scales = nn.ModuleList(
            Scale(1.0) if use_scale else nn.Identity() for _ in range(num_levels)
        )

        for module in self.modules():  # Normal(0, 0.01) as in the paper
            if isinstance(module, (nn.Conv2d, DeformConv3x3)):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        for module in self.modules():  # deformable offsets start at zero
            if isinstance(module, DeformConv3x3):
                nn.init.zeros_(module.offset.weight)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        fcos = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape,
            "num_classes": fcos.NUM_CLASSES,
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": fcos.NORM,
            "prior_prob": fcos.PRIOR_PROB,
            "use_scale": fcos.USE_SCALE,
            "use_relu": fcos.USE_RELU,
            "centerness_on_reg": fcos.CENTERNESS_ON_REG,
            "use_deformable": fcos.USE_DEFORMABLE,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Returns per-level lists of class logits, box distances and centerness logits."""
        logits, box_dists, ctrness = [], [], []
        for level, scale in enumerate(self.scales):  # one per level
            shared = self.share_tower(features[level], level)
            cls_feat = self.cls_tower(shared, level)
            box_feat = self.box_tower(shared, level)
            logits.append(self.cls_logits(cls_feat))
            ctrness.append(self.ctrness(box_feat if self.centerness_on_reg else cls_feat))
            # scale and exp in float32: exp(x) overflows float16 from x = 11.1 on
            dist = scale(self.bbox_pred(box_feat).float())
            box_dists.append(F.relu(dist) if self.use_relu else torch.exp(dist))
        return logits, box_dists, ctrness
