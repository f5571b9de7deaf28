"""Run a callback right after a given module has been executed ("post-import hooks").

Used to patch individual Detectron2 modules lazily: the patch happens when (and only if) the
module is imported, before any other module can bind names from it with ``from ... import``.
"""
import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Callable, Dict, List

__all__ = ["register_post_import_hook", "installed_finder"]

_lock = threading.RLock()
_hooks: Dict[str, List[Callable]] = {}
_finder = None


def _run_hooks(module) -> None:
    for hook in _hooks.get(module.__name__, []):
        hook(module)


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader; calls the hooks once the module body has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Point the module back at its real loader (pickle, inspect and linecache look at it).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _run_hooks(module)

    def __getattr__(self, name):  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # namespace package or legacy loader: leave it alone
        spec.loader = _PatchingLoader(spec.loader)
        return spec


def installed_finder():
    """The meta-path finder, or None when no hook was ever registered."""
    return _finder


def register_post_import_hook(module_name: str, hook: Callable) -> None:
    """Call ``hook(module)`` once ``module_name`` has been imported.

    If the module is already imported, the hook runs immediately.
    """
    global _finder
    with _lock:
        _hooks.setdefault(module_name, []).append(hook)
        if _finder is None:
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)
    module = sys.modules.get(module_name)
    if module is not None:
        hook(module)
