"""Checkpoint utilities: FCOS weights of the reference implementations, converted by name.

:func:`convert_reference_checkpoint` renames a state dict of AdelaiDet, of the original FCOS
(maskrcnn-benchmark) or of torchvision's FCOS to fcos_d2's names (the formats are data in
:data:`SOURCE_FORMATS`); :class:`FCOSCheckpointer` does it while loading ``MODEL.WEIGHTS``.
"""
from .checkpointer import FCOSCheckpointer
from .convert import ConversionError, ConversionSummary, convert_reference_checkpoint
from .file_io import load_reference_checkpoint, save_converted_checkpoint
from .sources import (
    SOURCE_FORMATS,
    SourceFormat,
    coco_contiguous_category_ids,
    recognise_source,
    register_source,
)

# the names of the registered sources, in registration order
SOURCES = tuple(SOURCE_FORMATS)

__all__ = [
    "SOURCES",
    "SOURCE_FORMATS",
    "ConversionError",
    "ConversionSummary",
    "FCOSCheckpointer",
    "SourceFormat",
    "coco_contiguous_category_ids",
    "convert_reference_checkpoint",
    "load_reference_checkpoint",
    "recognise_source",
    "register_source",
    "save_converted_checkpoint",
]
