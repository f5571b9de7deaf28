"""``detectron2._C`` of a pure-Python Detectron2 v0.6, installed by fcos_d2.

``tools/install_detectron2.py`` copies this file into the Detectron2 it installs from the
``pb1-detectron2`` sdist, which has no C++/CUDA sources.  It stands in for the compiled
extension module:

* deformable convolution runs on ``torchvision.ops.deform_conv2d`` (CPU and CUDA, forward
  and backward): :func:`deform_conv` and :func:`modulated_deform_conv` replace the
  functions of the same name in ``detectron2/layers/deform_conv.py`` (see the patch beside
  this file);
* the rotated-box ops and the C++ COCO evaluator raise :class:`CompiledOpsMissingError`,
  which says what is missing;
* ``get_compiler_version`` / ``get_cuda_version`` / ``has_cuda`` serve
  ``detectron2.utils.collect_env``.

``PURE_PYTHON`` and ``FCOS_D2_PATCH`` tell this module from a compiled extension (and
which revision of the patch is installed).
"""
import torch
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

PURE_PYTHON = True
FCOS_D2_PATCH = "detectron2-0.6-pure-python/1"

_WHY = (
    "Detectron2's compiled ops (detectron2._C) are absent: this is a pure-Python Detectron2 "
    "install (set up by fcos_d2's tools/install_detectron2.py)."
)
_ROTATED = "Rotated boxes need a compiled Detectron2 (build it from source with its C++ ops)."
_FAST_EVAL = "COCOEvaluator uses pycocotools' COCOeval in this install; call that instead."


class CompiledOpsMissingError(RuntimeError):
    """An op that needs Detectron2's C++/CUDA extension was called without it."""


def _missing(name: str, what: str, remedy: str):
    def op(*args, **kwargs):
        raise CompiledOpsMissingError(f"{what} (detectron2._C.{name}) is not available. {_WHY} {remedy}")

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Unavailable without a compiled Detectron2: {what}."
    return op


box_iou_rotated = _missing("box_iou_rotated", "IoU of rotated boxes", _ROTATED)
nms_rotated = _missing("nms_rotated", "NMS of rotated boxes", _ROTATED)
roi_align_rotated_forward = _missing("roi_align_rotated_forward", "ROIAlignRotated", _ROTATED)
roi_align_rotated_backward = _missing(
    "roi_align_rotated_backward", "ROIAlignRotated (backward)", _ROTATED
)
InstanceAnnotation = _missing("InstanceAnnotation", "the C++ COCO evaluator", _FAST_EVAL)
COCOevalEvaluateImages = _missing("COCOevalEvaluateImages", "the C++ COCO evaluator", _FAST_EVAL)
COCOevalAccumulate = _missing("COCOevalAccumulate", "the C++ COCO evaluator", _FAST_EVAL)


def get_compiler_version() -> str:
    return "none (pure-Python Detectron2 installed by fcos_d2)"


def get_cuda_version() -> str:
    return "none (pure-Python Detectron2 installed by fcos_d2)"


def has_cuda() -> bool:
    return False


# ---------------------------------------------------------------------------------------
# deformable convolution
# ---------------------------------------------------------------------------------------
# Offsets use the same layout in Detectron2 and torchvision: for kernel point k, channel 2k
# is the vertical and 2k+1 the horizontal displacement; the mask of the modulated version
# has deformable_groups * kh * kw channels.  torchvision infers groups and deformable
# groups from the tensor shapes, so they are checked here against the arguments.


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
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
    im2col_step=64,
) -> torch.Tensor:
    """``detectron2.layers.deform_conv.deform_conv`` (``im2col_step`` is unused)."""
    _check_shapes(input, offset, weight, groups, deformable_groups)
    return deform_conv2d(
        input, offset, weight, stride=_pair(stride), padding=_pair(padding),
        dilation=_pair(dilation),
    )  # fmt: skip


def modulated_deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
) -> torch.Tensor:
    """``detectron2.layers.deform_conv.modulated_deform_conv``."""
    _check_shapes(input, offset, weight, groups, deformable_groups, mask)
    return deform_conv2d(
        input, offset, weight, bias=bias, stride=_pair(stride), padding=_pair(padding),
        dilation=_pair(dilation), mask=mask,
    )  # fmt: skip
