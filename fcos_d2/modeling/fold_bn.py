"""Inference-time folding of BatchNorm into the convolution before it."""
import copy
from typing import Optional, Tuple

import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "FoldedBatchNormCache"]


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
    scale = weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, bias - norm.running_mean * scale


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
