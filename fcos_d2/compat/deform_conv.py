"""Deformable convolution for a Detectron2 without compiled ops, via ``torchvision.ops``.

Two levels are provided:

* :func:`deform_conv` / :func:`modulated_deform_conv` replace the functions of the same name
  in ``detectron2.layers.deform_conv`` (which :class:`DeformConv` and
  :class:`ModulatedDeformConv` call).  They rely on torchvision's autograd, so forward and
  backward work on CPU and CUDA, with ``groups`` and ``deformable_groups`` (torchvision
  infers both from the tensor shapes; they are checked here).
* ``deform_conv_forward`` & co. reproduce the calling convention of ``detectron2._C``'s
  entry points (results written into caller-provided tensors) for code that calls them
  directly; they are installed into the ``detectron2._C`` stub.

Offsets use the same layout in Detectron2 and torchvision: for kernel point ``k``, channel
``2k`` is the vertical and ``2k+1`` the horizontal displacement; the mask of modulated
deformable convolution has ``deformable_groups * kh * kw`` channels.
"""
import torch
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

__all__ = [
    "deform_conv",
    "modulated_deform_conv",
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_filter",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
]


def _check_shapes(input, offset, weight, groups, deformable_groups, mask=None):
    if input.dim() != 4:
        raise ValueError(f"Expected 4D tensor as input, got {input.dim()}D tensor instead.")
    kh, kw = weight.shape[-2:]
    if input.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"deformable conv: input has {input.shape[1]} channels but weight "
            f"{tuple(weight.shape)} with groups={groups} expects {weight.shape[1] * groups}"
        )
    if offset.shape[1] != 2 * deformable_groups * kh * kw:
        raise ValueError(
            f"deformable conv: offset has {offset.shape[1]} channels, expected "
            f"2 * deformable_groups({deformable_groups}) * {kh} * {kw} = "
            f"{2 * deformable_groups * kh * kw}"
        )
    if mask is not None and mask.shape[1] != deformable_groups * kh * kw:
        raise ValueError(
            f"modulated deformable conv: mask has {mask.shape[1]} channels, expected "
            f"deformable_groups({deformable_groups}) * {kh} * {kw} = {deformable_groups * kh * kw}"
        )


def deform_conv(
    input,
    offset,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
    im2col_step=64,
):
    """Drop-in for ``detectron2.layers.deform_conv.deform_conv`` (``im2col_step`` is unused)."""
    _check_shapes(input, offset, weight, groups, deformable_groups)
    return _tv_deform_conv2d(
        input,
        offset,
        weight,
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
    )


def modulated_deform_conv(
    input,
    offset,
    mask,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
):
    """Drop-in for ``detectron2.layers.deform_conv.modulated_deform_conv``."""
    _check_shapes(input, offset, weight, groups, deformable_groups, mask)
    return _tv_deform_conv2d(
        input,
        offset,
        weight,
        bias=bias,
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        mask=mask,
    )


# ---------------------------------------------------------------------------------------
# detectron2._C calling conventions (see detectron2/layers/csrc/vision.cpp of v0.6)
# ---------------------------------------------------------------------------------------


def _grads(fn, inputs, grad_output):
    """Gradients of ``fn(*inputs)`` w.r.t. every input, contracted with ``grad_output``."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, grad_output)


def deform_conv_forward(
    input, weight, offset, output, columns, ones,
    kW, kH, dW, dH, padW, padH, dilW, dilH, group, deformable_group, im2col_step,
):  # fmt: skip
    out = _tv_deform_conv2d(
        input, offset, weight, stride=(dH, dW), padding=(padH, padW), dilation=(dilH, dilW)
    )
    output.resize_as_(out).copy_(out)
    return 1


def deform_conv_backward_input(
    input, offset, grad_output, grad_input, grad_offset, weight, columns,
    kW, kH, dW, dH, padW, padH, dilW, dilH, group, deformable_group, im2col_step,
):  # fmt: skip
    def fn(x, o):
        return _tv_deform_conv2d(
            x, o, weight.detach(), stride=(dH, dW), padding=(padH, padW), dilation=(dilH, dilW)
        )

    gi, go = _grads(fn, (input, offset), grad_output)
    grad_input.resize_as_(gi).copy_(gi)
    grad_offset.resize_as_(go).copy_(go)
    return 1


def deform_conv_backward_filter(
    input, offset, grad_output, grad_weight, columns, ones,
    kW, kH, dW, dH, padW, padH, dilW, dilH, group, deformable_group, scale, im2col_step,
):  # fmt: skip
    def fn(w):
        return _tv_deform_conv2d(
            input.detach(), offset.detach(), w,
            stride=(dH, dW), padding=(padH, padW), dilation=(dilH, dilW),
        )  # fmt: skip

    # This entry point is not given the weight; the convolution is linear in the weight, so
    # its gradient does not depend on the weight's value and zeros of its shape will do.
    (gw,) = _grads(fn, (torch.zeros_like(grad_weight),), grad_output)
    grad_weight.add_(gw, alpha=scale)
    return 1


def modulated_deform_conv_forward(
    input, weight, bias, ones, offset, mask, output, columns,
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    group, deformable_group, with_bias,
):  # fmt: skip
    out = _tv_deform_conv2d(
        input, offset, weight, bias=bias if with_bias else None,
        stride=(stride_h, stride_w), padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w),
        mask=mask,
    )  # fmt: skip
    output.resize_as_(out).copy_(out)


def modulated_deform_conv_backward(
    input, weight, bias, ones, offset, mask, columns,
    grad_input, grad_weight, grad_bias, grad_offset, grad_mask, grad_output,
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    group, deformable_group, with_bias,
):  # fmt: skip
    def fn(x, o, m, w, *b):
        return _tv_deform_conv2d(
            x, o, w, bias=b[0] if b else None,
            stride=(stride_h, stride_w), padding=(pad_h, pad_w),
            dilation=(dilation_h, dilation_w), mask=m,
        )  # fmt: skip

    tensors = (input, offset, mask, weight) + ((bias,) if with_bias else ())
    grads = _grads(fn, tensors, grad_output)
    for dst, g in zip((grad_input, grad_offset, grad_mask, grad_weight, grad_bias), grads):
        dst.resize_as_(g).copy_(g)
