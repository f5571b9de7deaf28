"""Which Detectron2 is installed; nothing here changes it.

fcos_d2 runs on two kinds of Detectron2:

* a **compiled** build (``detectron2._C`` is a C++/CUDA extension module): v0.6 or newer,
  e.g. built from source or from a conda package.  fcos_d2 uses its public API only.
* the **pure-Python** Detectron2 v0.6 that ``tools/install_detectron2.py`` installs (what
  ``make setup`` does): its sources are fixed at install time, by the reviewed patch in
  ``tools/detectron2_pure_python/`` (numpy >= 1.24, Pillow >= 10, deformable convolution on
  torchvision, clear errors for rotated-box ops), and its ``detectron2/_C.py`` is a
  pure-Python module.  It works whatever is imported first.

Importing fcos_d2 patches no library.  :func:`check_detectron2` turns a Detectron2 that can
work neither way (the unpatched sources, no ``_C`` at all) into a clear error.
"""
import importlib.machinery
import importlib.util

__all__ = ["check_detectron2", "compiled_ops_available", "pure_python_detectron2"]

_REINSTALL = (
    "Reinstall it with `python tools/install_detectron2.py --force` from the fcos_d2 "
    "repository (or `make setup`), or install a compiled Detectron2."
)


def _c_origin():
    """Where ``detectron2._C`` would be loaded from; None if absent (or no Detectron2)."""
    try:
        spec = importlib.util.find_spec("detectron2._C")
    except (ImportError, ValueError):  # Detectron2 itself is not installed
        return None
    return None if spec is None else spec.origin


def compiled_ops_available() -> bool:
    """Whether ``detectron2._C`` is a compiled extension module (False without Detectron2)."""
    origin = _c_origin()
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def pure_python_detectron2() -> bool:
    """Whether the installed Detectron2 is the pure-Python one that
    ``tools/install_detectron2.py`` installs."""
    origin = _c_origin()
    return origin is not None and origin.endswith(".py")


def check_detectron2() -> None:
    """Raise ImportError, saying what to do, if Detectron2 is missing or has no ``_C`` module."""
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "fcos_d2 needs Detectron2, which is not installed (it has no PyPI name): run "
            "`make setup` in the fcos_d2 repository, or install Detectron2 from source."
        )
    if _c_origin() is None:
        raise ImportError(
            "The installed Detectron2 has no detectron2._C module: it is a pure-Python copy "
            "without fcos_d2's install-time fixes. " + _REINSTALL
        )
