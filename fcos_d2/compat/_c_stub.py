"""A stand-in for ``detectron2._C`` on a pure-Python Detectron2 install.

* deformable-convolution entry points: real implementations (torchvision), see
  :mod:`fcos_d2.compat.deform_conv`;
* rotated-box ops (``box_iou_rotated``, ``nms_rotated``, ``roi_align_rotated_*``) and the C++
  COCO evaluator: raise :class:`CompiledOpsMissingError` saying what is missing;
* ``get_compiler_version`` / ``get_cuda_version`` / ``has_cuda``: used by
  ``detectron2.utils.collect_env``;
* any other name: ``AttributeError`` (so ``hasattr``/``getattr(..., default)`` keep working).
"""
import importlib.machinery
import types

__all__ = ["CompiledOpsMissingError", "STUB_MARKER", "make_stub"]

STUB_MARKER = "__fcos_d2_stub__"

_WHY = (
    "Detectron2's compiled ops (detectron2._C) are absent: this is a pure-Python Detectron2 "
    "install (set up by fcos_d2's tools/install_detectron2.py)."
)


class CompiledOpsMissingError(RuntimeError):
    """An op that needs Detectron2's C++/CUDA extension was called without it."""


def _missing(name: str, what: str, remedy: str):
    def op(*args, **kwargs):
        raise CompiledOpsMissingError(f"{what} (detectron2._C.{name}) is not available. {_WHY} {remedy}")

    op.__name__ = name
    op.__qualname__ = name
    op.__doc__ = f"Unavailable without a compiled Detectron2: {what}."
    return op


_ROTATED = "Rotated boxes need a compiled Detectron2 (build it from source with its C++ ops)."
_FAST_EVAL = (
    "Use pycocotools' COCOeval, e.g. COCOEvaluator(..., use_fast_impl=False); "
    "fcos_d2.compat.apply() makes the default COCOEvaluator do so."
)

_MISSING_OPS = {
    "box_iou_rotated": ("IoU of rotated boxes", _ROTATED),
    "nms_rotated": ("NMS of rotated boxes", _ROTATED),
    "roi_align_rotated_forward": ("ROIAlignRotated", _ROTATED),
    "roi_align_rotated_backward": ("ROIAlignRotated (backward)", _ROTATED),
    "InstanceAnnotation": ("the C++ COCO evaluator", _FAST_EVAL),
    "COCOevalEvaluateImages": ("the C++ COCO evaluator", _FAST_EVAL),
    "COCOevalAccumulate": ("the C++ COCO evaluator", _FAST_EVAL),
}

_DEFORM_OPS = (
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_filter",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
)


def make_stub() -> types.ModuleType:
    mod = types.ModuleType("detectron2._C", __doc__)
    setattr(mod, STUB_MARKER, True)
    mod.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", None, origin="fcos_d2.compat")
    mod.CompiledOpsMissingError = CompiledOpsMissingError
    for name, (what, remedy) in _MISSING_OPS.items():
        setattr(mod, name, _missing(name, what, remedy))
    from . import deform_conv as _deform  # torch/torchvision: only imported when needed

    for name in _DEFORM_OPS:
        setattr(mod, name, getattr(_deform, name))
    mod.get_compiler_version = lambda: "none (pure-Python Detectron2; fcos_d2.compat stub)"
    mod.get_cuda_version = lambda: "none (pure-Python Detectron2; fcos_d2.compat stub)"
    mod.has_cuda = lambda: False

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"detectron2._C has no attribute {name!r}. {_WHY}")

    mod.__getattr__ = __getattr__
    return mod
