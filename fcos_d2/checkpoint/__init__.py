"""Checkpoint utilities: converting FCOS weights of the reference implementations."""
from .convert import (
    SOURCES,
    ConversionError,
    ConversionSummary,
    coco_contiguous_category_ids,
    convert_reference_checkpoint,
    load_reference_checkpoint,
    save_converted_checkpoint,
)

__all__ = [
    "SOURCES",
    "ConversionError",
    "ConversionSummary",
    "coco_contiguous_category_ids",
    "convert_reference_checkpoint",
    "load_reference_checkpoint",
    "save_converted_checkpoint",
]
