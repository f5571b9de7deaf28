"""A DetectionCheckpointer that loads reference FCOS checkpoints as they are published."""
import logging
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import (
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)
from torch import Tensor

from .convert import ConversionError, convert_reference_checkpoint
from .sources import recognise_source

__all__ = ["FCOSCheckpointer", "read_reference_weights"]

logger = logging.getLogger(__name__)


class FCOSCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that also reads the checkpoints of AdelaiDet, of the
    original FCOS (maskrcnn-benchmark) and of torchvision's FCOS: a file in one of those
    formats (recognised by its keys, :func:`recognise_source`) is converted to fcos_d2's
    names while it loads, checked against the model (no missing, unexpected or misshapen
    weight), with the rename table and the implied config in the log. Everything else
    (fcos_d2 and Detectron2 checkpoints, resumed runs, URLs) loads as DetectionCheckpointer
    loads it. So ``MODEL.WEIGHTS`` can name the reference file itself.

    When the model has another number of classes than the file, every weight but the
    class logits is taken (fine-tuning); torchvision's 91 outputs become the 80 COCO
    classes for an 80-class model.
    """

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load ``path`` into the model; a reference checkpoint is converted first (it has
        no trainer state, so ``checkpointables`` are left as they are and ``{}`` is
        returned). Other files: :meth:`DetectionCheckpointer.load`."""
        found = read_reference_weights(path) if path else None
        if found is None:
            return super().load(path, checkpointables)
        source, weights = found
        logger.info(f"[FCOSCheckpointer] Loading {path}, a {source} checkpoint ...")
        model_state = self.model.state_dict()
        try:
            converted, summary = convert_reference_checkpoint(
                weights, source, model_state, num_classes=_num_classes(model_state)
            )
        except ConversionError as e:
            raise ConversionError(f"{path} (a {source} checkpoint): {e}") from e
        logger.info(
            "%s converted to fcos_d2's names.\n%s\n%s", path, summary.table(), summary.format()
        )
        incompatible = self.model.load_state_dict(converted, strict=False)
        # the converter checked names and shapes against the model: what is missing is the
        # class logits of a model with another number of classes (fine-tuning)
        if incompatible.missing_keys:
            logger.warning(get_missing_parameters_message(incompatible.missing_keys))
        if incompatible.unexpected_keys:  # never, after the converter's checks
            logger.warning(get_unexpected_parameters_message(incompatible.unexpected_keys))
        return {}


def read_reference_weights(path: str) -> Optional[Tuple[str, Dict[str, Tensor]]]:
    """(source name, weights) when ``path`` is a local ``.pth`` / ``.pt`` file holding a
    reference checkpoint (AdelaiDet, FCOS, torchvision: :func:`recognise_source`); None for
    anything else, including files ``torch.load(weights_only=True)`` cannot read — those
    are left to Detectron2's loader and its messages. A zip-format file is memory-mapped,
    so looking at a large fcos_d2 checkpoint reads its key names, not its tensors."""
    if not os.path.isfile(path) or path.endswith(".pkl"):
        return None
    try:  # files written before torch 1.6 are not zip archives and cannot be mapped
        data = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception:  # not a tensors-only torch file: Detectron2 reports on it
        return None
    if not isinstance(data, dict):
        return None
    for key in ("model", "state_dict"):  # the references' wrappers
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    weights = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    source = recognise_source(weights)
    return None if source is None else (source, weights)


def _num_classes(model_state) -> Optional[int]:
    """The model's number of classes (its class logits' outputs), None without them."""
    logits = model_state.get("head.cls_logits.weight")
    return None if logits is None else int(logits.shape[0])
