"""Pieces shared by the backbones written for fcos_d2 (DarkNet-19, MobileNetV2)."""
from typing import Dict, List, NamedTuple, Optional, Sequence

from fvcore.nn import weight_init
from torch import Tensor, nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import Backbone

__all__ = ["Stage", "StageBackbone", "conv_norm_act", "freeze_module"]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    norm: str = "BN",
    activation: Optional[nn.Module] = None,
) -> Conv2d:
    """A "same"-padded conv, then ``norm`` (no conv bias when there is one), then
    ``activation`` (None: linear). MSRA-initialised."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)
    return conv


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no gradients, BatchNorms become FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class Stage(NamedTuple):
    """One stage of a :class:`StageBackbone`."""

    name: str
    module: nn.Module
    stride: int  # by how much the stage downsamples its input
    channels: int  # its output channels


class StageBackbone(Backbone):
    """A backbone whose stages run one after another; any stage can be an output.

    Stages after the last requested output are dropped. ``freeze_at=k`` freezes the
    first k stages (the convention of Detectron2's ResNet: 1 is the stem).
    """

    def __init__(self, stages: Sequence[Stage], out_features: Sequence[str], freeze_at: int = 0):
        super().__init__()
        names = [s.name for s in stages]
        unknown = [f for f in out_features if f not in names]
        if not out_features or unknown:
            raise ValueError(f"out_features {list(out_features)} must be among {names}")
        last = max(names.index(f) for f in out_features)
        self._out_features = list(out_features)
        self._stage_names: List[str] = []
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        stride = 1
        for stage in stages[: last + 1]:
            stride *= stage.stride
            self.add_module(stage.name, stage.module)
            self._stage_names.append(stage.name)
            self._out_feature_strides[stage.name] = stride
            self._out_feature_channels[stage.name] = stage.channels
        for name in self._stage_names[:freeze_at]:
            setattr(self, name, freeze_module(getattr(self, name)))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        outputs = {}
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
