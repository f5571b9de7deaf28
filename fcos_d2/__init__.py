"""fcos_d2: FCOS for Detectron2.

Importing the package registers, in Detectron2's registries:

* ``META_ARCH_REGISTRY["FCOS"]`` -- the one-stage detector;
* ``BACKBONE_REGISTRY["build_fcos_resnet_fpn_backbone"]`` -- ResNet + FPN with P3-P7;
* the embedded demo datasets ``fcos_demo_train`` / ``fcos_demo_val``.

On a pure-Python Detectron2 (no compiled ``detectron2._C``) a small compatibility layer
is applied first; on a full Detectron2 build it does nothing.
"""
from . import compat

compat.apply()

from .config import add_fcos_config, setup_cfg  # noqa: E402
from . import modeling  # noqa: E402,F401  (registers the modules)
from .data import register_demo_datasets  # noqa: E402

register_demo_datasets()

__version__ = "0.1.0"
__all__ = ["add_fcos_config", "register_demo_datasets", "setup_cfg"]
