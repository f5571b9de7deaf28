"""A DetectionCheckpointer that loads reference FCOS checkpoints as they are published."""
import logging
from typing import Any, Dict, Optional

from detectron2.checkpoint import DetectionCheckpointer

from .convert import ConversionError, convert_reference_checkpoint
from .sources import recognise_source

__all__ = ["FCOSCheckpointer"]

logger = logging.getLogger(__name__)


class FCOSCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that also reads the checkpoints of AdelaiDet, of the
    original FCOS (maskrcnn-benchmark) and of torchvision's FCOS: a file in one of those
    formats (recognised by its keys, :func:`recognise_source`) is converted to fcos_d2's
    names while it loads, checked against the model (no missing, unexpected or misshapen
    weight), with the rename table and the implied config in the log. Everything else
    (fcos_d2 and Detectron2 checkpoints, resumed runs) loads as DetectionCheckpointer
    loads it. So ``MODEL.WEIGHTS`` can name the reference file itself.

    When the model has another number of classes than the file, every weight but the
    class logits is taken (fine-tuning); torchvision's 91 outputs become the 80 COCO
    classes for an 80-class model.
    """

    def _load_file(self, filename: str) -> Dict[str, Any]:
        # fvcore's Checkpointer reads files through this method (its documented hook for
        # other formats); DetectionCheckpointer's reads .pth / .pkl / .pyth first
        loaded = super()._load_file(filename)
        weights = loaded.get("model")
        source = recognise_source(weights) if isinstance(weights, dict) else None
        if source is None:
            return loaded
        model_state = self.model.state_dict()
        try:
            converted, summary = convert_reference_checkpoint(
                weights, source, model_state, num_classes=_num_classes(model_state)
            )
        except ConversionError as e:
            raise ConversionError(f"{filename} (a {source} checkpoint): {e}") from e
        logger.info(
            "%s is a %s checkpoint: converted to fcos_d2's names.\n%s\n%s",
            filename, source, summary.table(), summary.format(),
        )
        return {
            "model": converted,
            "__author__": f"{source} (converted by fcos_d2 at load)",
            "matching_heuristics": False,
        }


def _num_classes(model_state) -> Optional[int]:
    """The model's number of classes (its class logits' outputs), None without them."""
    logits = model_state.get("head.cls_logits.weight")
    return None if logits is None else int(logits.shape[0])
