"""Folding BatchNorm into the convolution before it: frozen BatchNorm at every forward
(training included), every inference-mode BatchNorm in a cached copy at inference."""
import copy
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = [
    "fold_batchnorm",
    "FoldedBatchNormCache",
    "FrozenBatchNormFoldedConv2d",
    "fold_frozen_batchnorm_per_forward",
]


def _norm_scale_shift(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(C,) scale and shift with norm(x) == x * scale + shift, for an inference-mode
    BatchNorm / FrozenBatchNorm; None for any other norm (GroupNorm, training BN)."""
    if isinstance(norm, FrozenBatchNorm2d):
        weight, bias = norm.weight, norm.bias
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training:
        if norm.running_mean is None:  # track_running_stats=False: batch statistics
            return None
        ones = torch.ones_like(norm.running_var)
        weight = norm.weight if norm.affine else ones
        bias = norm.bias if norm.affine else torch.zeros_like(ones)
    else:
        return None
    return _scale_shift(weight, bias, norm.running_mean, norm.running_var, norm.eps)


def _scale_shift(
    weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float
) -> Tuple[Tensor, Tensor]:
    scale = weight * torch.rsqrt(running_var + eps)
    return scale, bias - running_mean * scale


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every inference-mode BatchNorm that is the ``norm`` of a Detectron2
    :class:`Conv2d` into that convolution's weight and bias, in place.

    Afterwards the module computes the same function (up to float rounding) with one
    pass over each feature map less. Only for inference: the folded module cannot be
    trained as before. Returns the number of folded norms.
    """
    folded = 0
    for conv in module.modules():
        if not isinstance(conv, Conv2d) or conv.norm is None:
            continue
        scale_shift = _norm_scale_shift(conv.norm)
        if scale_shift is None:
            continue
        scale, shift = scale_shift
        memory_format = (
            torch.channels_last
            if conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous()
            else torch.contiguous_format
        )
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(weight.contiguous(memory_format=memory_format), False)
        conv.bias = nn.Parameter(bias, False)
        conv.norm = None
        folded += 1
    return folded


class FoldedBatchNormCache:
    """A BatchNorm-folded copy of a module, rebuilt whenever the module's weights change.

    Weights count as changed when any parameter or buffer was modified in place (its
    version counter moved: optimizer steps, ``load_state_dict``) or replaced (``.to()``).
    The copy is held outside the module tree, so it is in no ``state_dict``.
    """

    def __init__(self):
        self._key = None
        self._folded: Optional[nn.Module] = None

    @staticmethod
    def _weights_key(module: nn.Module):
        tensors = list(module.parameters()) + list(module.buffers())
        return tuple((id(t), t.data_ptr(), t._version) for t in tensors)

    def get(self, module: nn.Module) -> nn.Module:
        key = self._weights_key(module)
        if self._folded is None or key != self._key:
            folded = copy.deepcopy(module)
            fold_batchnorm(folded)
            folded.requires_grad_(False)  # for inference only
            self._folded, self._key = folded, key
        return self._folded

    def clear(self) -> None:
        self._key, self._folded = None, None


class FrozenBatchNormFoldedConv2d(Conv2d):
    """Detectron2's :class:`Conv2d` whose :class:`FrozenBatchNorm2d` ``norm`` is applied
    by scaling the kernel instead of the output.

    ``norm(conv(x, W) + b) == conv(x, W * scale) + (b * scale + shift)`` with the
    per-channel scale and shift of the frozen statistics, so the forward computes the
    same function (up to float rounding) with no pass over the feature map for the norm
    and, in training, none in backward either: the gradient reaches ``W`` through the
    (C_out x C_in x k x k) product, which is small next to the feature maps. The
    parameters and the ``norm`` submodule stay where they were, so checkpoints are
    unchanged. Its ``norm`` is a FrozenBatchNorm2d, or None once :func:`fold_batchnorm`
    folded it (then it is a plain convolution). Scripts (``torch.jit.script``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.norm is not None and not isinstance(self.norm, FrozenBatchNorm2d):
            raise TypeError(f"the norm must be a FrozenBatchNorm2d, got {type(self.norm)}")

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        bias: Optional[Tensor] = self.bias
        if self.norm is not None:  # the FrozenBatchNorm2d (None once fold_batchnorm folded it)
            norm = self.norm
            scale, shift = _scale_shift(
                norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
            )
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm_per_forward(module: nn.Module) -> int:
    """Replace, in place, every Detectron2 :class:`Conv2d` in ``module`` whose ``norm``
    is a :class:`FrozenBatchNorm2d` by a :class:`FrozenBatchNormFoldedConv2d` holding the
    same parameter, norm and activation objects. Returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is not Conv2d or not isinstance(conv.norm, FrozenBatchNorm2d):
                continue
            folded = FrozenBatchNormFoldedConv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
                norm=conv.norm, activation=conv.activation,
            )
            folded.weight, folded.bias = conv.weight, conv.bias
            folded.train(conv.training)
            setattr(parent, name, folded)
            replaced += 1
    return replaced
