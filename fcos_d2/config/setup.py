"""One way to build a config, used by ``train_net.py``, the tools, the benchmarks and tests."""
import logging
from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from .defaults import add_fcos_config

__all__ = ["setup_cfg"]

logger = logging.getLogger(__name__)


def setup_cfg(
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    *,
    freeze: bool = True,
) -> CfgNode:
    """Detectron2's defaults + ``MODEL.FCOS``, then ``config_file``, then ``opts``.

    ``MODEL.DEVICE`` set to CUDA on a machine without CUDA falls back to ``"cpu"`` (with a
    log line), so a config written for a GPU still runs here.

    Args:
        config_file: a yaml config (``_BASE_`` chains are followed), or None for defaults.
        opts: ``KEY VALUE`` pairs as on the command line, e.g. ``["SOLVER.MAX_ITER", "10"]``.
        freeze: return the config frozen, as Detectron2's scripts do.
    """
    cfg = add_fcos_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"CUDA is not available: MODEL.DEVICE={cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
