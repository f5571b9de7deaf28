"""fcos_d2: FCOS for Detectron2.

Importing the package registers, in Detectron2's registries:

* ``META_ARCH_REGISTRY["FCOS"]`` -- the one-stage detector;
* ``PROPOSAL_GENERATOR_REGISTRY["FCOS"]`` -- FCOS proposals for a two-stage detector;
* its backbones in ``BACKBONE_REGISTRY`` (``build_fcos_resnet_fpn_backbone``, ...);
* the demo datasets ``fcos_demo_*`` in ``DatasetCatalog``.

It changes nothing else: no library is patched at import time, so ``detectron2`` may be
imported before or after ``fcos_d2`` (see :mod:`fcos_d2.compat`).
"""
from .compat import check_detectron2

check_detectron2()

from .config import add_fcos_config, setup_cfg  # noqa: E402
from . import modeling  # noqa: E402,F401  (registers the modules)
from .data import register_demo_datasets  # noqa: E402

register_demo_datasets()

__version__ = "0.1.0"
__all__ = ["add_fcos_config", "register_demo_datasets", "setup_cfg"]
