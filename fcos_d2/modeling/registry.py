"""An entry of a Detectron2 registry under a name of its own, apart from the builder's."""
from typing import Any, Callable

__all__ = ["RegistryEntry"]


class RegistryEntry:
    """Calls ``build`` and has ``name`` as its ``__name__``: Detectron2's registries (fvcore's
    ``Registry.register``) name an entry after the ``__name__`` of what is registered, so
    ``REGISTRY.register(RegistryEntry("FCOS", FCOSProposalGenerator))`` makes the config
    value ``"FCOS"`` build :class:`~fcos_d2.modeling.FCOSProposalGenerator` without a second
    Python object called ``FCOS``.
    """

    def __init__(self, name: str, build: Callable[..., Any]):
        self.__name__ = name
        self.build = build

    def __call__(self, *args, **kwargs):
        return self.build(*args, **kwargs)

    def __repr__(self) -> str:
        return f"RegistryEntry({self.__name__!r}, {self.build.__qualname__})"
