"""Detectron2's test-time resize as tensor operations that trace into a graph.

At test time Detectron2 resizes with ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``,
which resizes uint8 images with Pillow's bilinear filter. That filter is antialiased: when
it shrinks, its triangle kernel widens with the scale, so every input pixel counts; ONNX's
``Resize`` (and ``F.interpolate``) only antialias from opset 18 on, and their plain linear
mode samples 2 pixels per output pixel, which aliases when shrinking. So the graph
computes Pillow's resampling itself: the same coefficients (computed in float64, in the
same order of operations), the same 22-bit fixed-point rounding, two passes (horizontal,
then vertical, each rounded to 0..255), in float64, where those integer sums are exact.

The result equals ``PIL.Image.resize(..., BILINEAR)`` pixel for pixel for landscape
images and portrait ones up to about 1.6:1 (tested on random sizes and settings), so the
graph sees the pixels the eager model sees. Pillow 13 runs its vertical pass first for
some resizes -- when one axis grows while the other shrinks (never at test time), and
for some reductions of tall images (height about twice the width or more); its rule is
not documented and the graph keeps Pillow's classic horizontal-first order, so there
about 20 % of the pixels differ by one grey level.

Each pass gathers, for every output row (or column), its ``T = 2 * ceil(scale) + 1``
input rows and sums them with their weights: memory grows with ``T`` (shrinking a
4000x3000 image to 1067x800 holds a 0.7 GB float64 intermediate).

Sizes are kept as 1-element tensors rather than 0-dim ones: the TorchScript-based ONNX
exporter casts 0-dim ("scalar") tensors to float32 in arithmetic, which would break the
float64 size and coefficient arithmetic.
"""
from typing import Tuple

import torch
from torch import Tensor
from torch.onnx.operators import shape_as_tensor

__all__ = ["resized_size", "bilinear_coefficients", "resize_bilinear"]

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2


def resized_size(
    height: Tensor, width: Tensor, short_edge: int, max_size: int
) -> Tuple[Tensor, Tensor]:
    """Detectron2's ``ResizeShortestEdge.get_output_shape`` on (1,) int64 sizes.

    The short side becomes ``short_edge`` unless the long side would then exceed
    ``max_size``; sizes round as ``int(x + 0.5)``. Returns (1,) int64 new height, width.
    """
    h, w = height.double(), width.double()
    size = torch.full_like(h, float(short_edge))
    scale = size / torch.minimum(h, w)
    new_h = torch.where(h < w, size, scale * h)
    new_w = torch.where(h < w, scale * w, size)
    longest = torch.maximum(new_h, new_w)
    shrink = torch.where(longest > max_size, float(max_size) / longest, torch.ones_like(longest))
    new_h, new_w = new_h * shrink, new_w * shrink
    return torch.floor(new_h + 0.5).long(), torch.floor(new_w + 0.5).long()


def bilinear_coefficients(in_size: Tensor, out_size: Tensor) -> Tuple[Tensor, Tensor]:
    """Pillow's bilinear (triangle) filter taps from ``in_size`` to ``out_size`` samples.

    Output sample ``o`` is centred at ``(o + 0.5) * scale`` in the input (scale = in / out);
    the triangle's support is ``max(scale, 1)``; its taps are the input samples
    ``[first, end)`` around the centre, weighted by the triangle at their centres and
    normalised to sum 1, then rounded to 22-bit fixed point.

    Args:
        in_size, out_size: (1,) int64 tensors.
    Returns:
        index: (O, T) int64 input samples (taps past ``end`` repeat the last sample);
        weights: (O, T) float64 fixed-point weights (integers; 0 past ``end``).
    """
    in_f = in_size.double()
    scale = in_f / out_size.double()
    support = torch.clamp(scale, min=1.0)  # triangle support (1) times the filter scale
    inverse = 1.0 / support
    num_taps = torch.ceil(support).long() * 2 + 1  # (1,)
    center = (torch.arange(out_size[0], dtype=torch.float64) + 0.5) * scale  # (O,)
    first = torch.clamp(torch.floor(center - support + 0.5), min=0.0)  # (O,)
    end = torch.minimum(torch.floor(center + support + 0.5), in_f)  # (O,), exclusive
    taps = first[:, None] + torch.arange(num_taps[0], dtype=torch.float64)  # (O, T)
    weights = torch.clamp(1.0 - torch.abs((taps - center[:, None] + 0.5) * inverse), min=0.0)
    weights = torch.where(taps < end[:, None], weights, torch.zeros_like(weights))
    weights = weights / weights.sum(dim=1, keepdim=True)
    fixed = torch.floor(weights * float(1 << _PRECISION_BITS) + 0.5)  # (O, T)
    index = torch.minimum(taps, in_f - 1).long()
    return index, fixed


def _resample_rows(image: Tensor, out_size: Tensor) -> Tensor:
    """One pass along the first axis: (A, B, C) float64 -> (O, B, C), rounded to 0..255
    as Pillow rounds its fixed-point sums."""
    index, fixed = bilinear_coefficients(shape_as_tensor(image)[0:1], out_size)
    total = (image[index] * fixed[:, :, None, None]).sum(dim=1)  # (O, B, C), exact integers
    rounded = torch.floor((total + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS))
    return torch.clamp(rounded, 0.0, 255.0)


def resize_bilinear(image: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """(H, W, C) uint8 image -> (height, width, C) float64 with integer values 0..255,
    equal to ``PIL.Image.fromarray(image).resize((width, height), Image.BILINEAR)``.

    ``height``, ``width``: (1,) int64 tensors.
    """
    x = image.transpose(0, 1).double()  # (W, H, C): rows first for a contiguous gather
    x = _resample_rows(x, width)  # (width, H, C), Pillow's horizontal pass
    return _resample_rows(x.transpose(0, 1), height)  # (height, width, C)
