"""Compatibility layer for a pure-Python Detectron2 v0.6 on current libraries.

``pip install`` cannot build Detectron2's C++/CUDA extension from the ``pb1-detectron2``
sdist (it ships no C++ sources), so ``tools/install_detectron2.py`` installs its Python code
only.  That code, written for 2021's libraries, needs a few fixes to run.
:func:`apply` makes them, **only where needed**:

* nothing at all when ``detectron2._C`` is importable (a full official build, v0.6 or newer),
  or when Detectron2 is not installed;
* otherwise, each of the following only where its problem exists:

  - ``detectron2._C``: a stub module (see :mod:`fcos_d2.compat._c_stub`) so the eager
    ``from detectron2 import _C`` imports succeed; rotated-box ops raise a clear
    :class:`CompiledOpsMissingError`; ``collect_env`` gets its version stubs;
  - deformable convolution: ``DeformConv`` / ``ModulatedDeformConv`` run on
    ``torchvision.ops.deform_conv2d`` (forward and backward, CPU and CUDA);
  - COCO evaluation: ``COCOeval_opt`` (the C++ evaluator) becomes pycocotools' ``COCOeval``
    and ``COCOEvaluator`` uses the official evaluation even with its default
    ``use_fast_impl=True``, so it works with default arguments;
  - ``detectron2.layers.nms_rotated``: raises the same clear error instead of an unknown
    ``torch.ops.detectron2`` operator;
  - ``detectron2.engine.create_ddp_model``: no ``device_ids`` for a CPU model, which
    ``DistributedDataParallel`` rejects (multi-process CPU training with gloo, see
    :func:`fcos_d2.engine.launch.launch`);
  - numpy >= 1.24: the removed aliases ``np.bool``/``np.int``/``np.float``/... that v0.6 uses;
  - Pillow >= 10: ``Image.LINEAR`` (a default argument in ``detectron2.data.transforms``).

A full Detectron2 build is left entirely alone, so a compiled v0.6 on numpy >= 1.24 or
Pillow >= 10 still needs older numpy/Pillow (or a newer Detectron2).

Call :func:`apply` before anything imports ``detectron2.layers`` (importing :mod:`fcos_d2`
does it first).  Patches of Detectron2 modules are applied when those modules are imported
(post-import hooks), or immediately if they already are.
"""
import importlib.util
import sys
import threading
import warnings

from ._c_stub import STUB_MARKER, CompiledOpsMissingError

__all__ = ["apply", "compiled_ops_available", "applied_patches", "CompiledOpsMissingError"]

_lock = threading.RLock()
_applied = []  # names of the patches applied so far, in order


def applied_patches():
    """Names of the patches :func:`apply` has made in this process."""
    return list(_applied)


def _is_stub(module) -> bool:
    return module is not None and getattr(module, STUB_MARKER, False)


def compiled_ops_available() -> bool:
    """Whether Detectron2's real compiled extension ``detectron2._C`` can be imported.

    Returns False when Detectron2 itself is not installed.
    """
    if _is_stub(sys.modules.get("detectron2._C")):
        return False
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def _detectron2_installed() -> bool:
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


# -------------------------------------------------------------------------------------
# library aliases
# -------------------------------------------------------------------------------------

# Aliases removed in numpy 1.24 (``np.bool`` came back in numpy 2 as ``np.bool_``).
_NUMPY_ALIASES = {
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
    "long": int,
    "unicode": str,
}


def _patch_numpy() -> bool:
    import numpy as np

    added = []
    for name, value in _NUMPY_ALIASES.items():
        if name in vars(np):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                getattr(np, name)  # numpy < 1.24: present, deprecated
                continue
            except AttributeError:
                pass
        setattr(np, name, value)
        added.append(name)
    if added:
        _applied.append("numpy aliases: " + ", ".join("np." + n for n in added))
    return bool(added)


def _patch_pillow() -> bool:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    _applied.append("PIL.Image.LINEAR = Image.BILINEAR")
    return True


# -------------------------------------------------------------------------------------
# detectron2._C and the modules that use it
# -------------------------------------------------------------------------------------


def _install_c_stub() -> bool:
    if _is_stub(sys.modules.get("detectron2._C")):
        return False
    import detectron2

    from ._c_stub import make_stub

    stub = make_stub()
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub
    _applied.append("detectron2._C stub")
    return True


def _patch_deform_conv_module(mod) -> None:
    from . import deform_conv as impl

    if getattr(mod, "_fcos_d2_patched", False):
        return
    mod.deform_conv = impl.deform_conv
    mod.modulated_deform_conv = impl.modulated_deform_conv
    mod._fcos_d2_patched = True
    _applied.append("detectron2.layers.deform_conv -> torchvision.ops.deform_conv2d")


def _patch_nms_module(mod) -> None:
    from ._c_stub import _missing, _ROTATED

    if getattr(mod, "_fcos_d2_patched", False):
        return
    raiser = _missing("nms_rotated", "NMS of rotated boxes", _ROTATED)

    def nms_rotated(boxes, scores, iou_threshold):
        raiser()

    nms_rotated.__doc__ = raiser.__doc__
    mod.nms_rotated = nms_rotated
    mod._fcos_d2_patched = True
    layers = sys.modules.get("detectron2.layers")
    if layers is not None and hasattr(layers, "nms_rotated"):
        layers.nms_rotated = nms_rotated
    _applied.append("detectron2.layers.nms.nms_rotated -> clear error")


def _patch_fast_eval_module(mod) -> None:
    from .evaluation import COCOeval_opt

    if getattr(mod, "_fcos_d2_patched", False):
        return
    mod.COCOeval_opt = COCOeval_opt
    mod._fcos_d2_patched = True
    coco_evaluation = sys.modules.get("detectron2.evaluation.coco_evaluation")
    if coco_evaluation is not None:
        coco_evaluation.COCOeval_opt = COCOeval_opt
    _applied.append("detectron2.evaluation.fast_eval_api.COCOeval_opt -> pycocotools COCOeval")


def _patch_coco_evaluation_module(mod) -> None:
    """COCOEvaluator(use_fast_impl=True) (the default) would log "unofficial COCO API" while
    the fallback above runs the official one: say (and do) what really happens."""
    if getattr(mod, "_fcos_d2_patched", False):
        return
    from .evaluation import COCOeval_opt

    mod.COCOeval_opt = COCOeval_opt
    original_init = mod.COCOEvaluator.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._use_fast_impl = False  # the C++ evaluator is absent

    __init__.__wrapped__ = original_init
    __init__.__doc__ = original_init.__doc__
    mod.COCOEvaluator.__init__ = __init__
    mod._fcos_d2_patched = True
    _applied.append("detectron2.evaluation.COCOEvaluator: official pycocotools evaluation")


def _patch_engine_defaults_module(mod) -> None:
    """``create_ddp_model`` passes ``device_ids=[local_rank]``, which DistributedDataParallel
    rejects for a CPU model: multi-process CPU (gloo) training needs ``device_ids=None``."""
    if getattr(mod, "_fcos_d2_patched", False):
        return
    import functools

    original = mod.create_ddp_model

    @functools.wraps(original)
    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if "device_ids" not in kwargs:
            devices = {p.device.type for p in model.parameters()}
            if devices == {"cpu"}:
                kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    mod.create_ddp_model = create_ddp_model
    mod._fcos_d2_patched = True
    engine = sys.modules.get("detectron2.engine")
    if engine is not None and getattr(engine, "create_ddp_model", None) is original:
        engine.create_ddp_model = create_ddp_model
    _applied.append("detectron2.engine.defaults.create_ddp_model: device_ids=None for CPU models")


_MODULE_PATCHES = {
    "detectron2.layers.deform_conv": _patch_deform_conv_module,
    "detectron2.layers.nms": _patch_nms_module,
    "detectron2.evaluation.fast_eval_api": _patch_fast_eval_module,
    "detectron2.evaluation.coco_evaluation": _patch_coco_evaluation_module,
    "detectron2.engine.defaults": _patch_engine_defaults_module,
}
_hooks_registered = False


def _register_module_patches() -> bool:
    global _hooks_registered
    if _hooks_registered:
        return False
    from ._import_hooks import register_post_import_hook

    for name, patch in _MODULE_PATCHES.items():
        register_post_import_hook(name, patch)
    _hooks_registered = True
    return True


def apply() -> bool:
    """Make a pure-Python Detectron2 v0.6 work on current libraries; see the module doc.

    Idempotent.  Returns True if this call applied any patch, False if none was needed
    (a full Detectron2 build, no Detectron2 at all, or an earlier call did everything).
    """
    with _lock:
        if compiled_ops_available() or not _detectron2_installed():
            return False
        changed = False
        changed |= _patch_numpy()
        changed |= _patch_pillow()
        changed |= _install_c_stub()
        changed |= _register_module_patches()
        return changed
