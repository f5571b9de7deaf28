"""Which memory format (NCHW or NHWC) the FCOS detector runs in, per mode.

``MODEL.FCOS.MEMORY_FORMAT`` picks it:

* ``"auto"`` (default): in each mode (training, inference) the format of the rule table in
  :mod:`fcos_d2.modeling.execution` (the faster one on this kind of machine, measured by
  ``benchmarks/benchmark.py``; figures in ``docs/benchmarks.md``);
* ``"nchw"`` / ``"nhwc"``: that format in both modes.

``MODEL.FCOS.CHANNELS_LAST`` is deprecated: unset (``None``) by default; ``True`` / ``False``
still mean ``"nhwc"`` / ``"nchw"`` (with a warning), and contradicting an explicit
``MEMORY_FORMAT`` is an error.

Both formats compute the same function up to float rounding; only the speed differs.
"""
import logging
from typing import FrozenSet, Optional, Tuple

from .execution import (
    MEMORY_FORMATS,
    cpu_description,
    cpu_flags,
    rule_for,
    usable_cpu_flags,
    vector_extensions,
)

__all__ = [
    "MEMORY_FORMATS",
    "auto_channels_last_modes",
    "channels_last_modes",
    "cpu_description",
    "cpu_flags",
    "memory_format_of",
    "nhwc_is_faster",
    "vector_extensions",
]

logger = logging.getLogger(__name__)


def nhwc_is_faster(device: str, training: bool, flags: Optional[FrozenSet[str]] = None) -> bool:
    """Whether the memory-format rule of :data:`fcos_d2.modeling.execution.RULES` picks
    NHWC in this mode on ``device`` (e.g. "cpu", "cuda:1"; ``flags``: the CPU's, default
    :func:`cpu_flags`, less what the environment caps: :func:`usable_cpu_flags`)."""
    flags = usable_cpu_flags(cpu_flags()) if flags is None else flags
    rule = rule_for("memory_format", device, flags)
    return (rule.training if training else rule.inference) == "nhwc"


def auto_channels_last_modes(device: str) -> Tuple[bool, bool]:
    """(NHWC in training, NHWC at inference) that ``"auto"`` picks on ``device``, e.g.
    for a LazyConfig's ``channels_last=``."""
    return nhwc_is_faster(device, training=True), nhwc_is_faster(device, training=False)


def memory_format_of(cfg) -> str:
    """``MODEL.FCOS.MEMORY_FORMAT`` checked, with the deprecated ``CHANNELS_LAST`` applied:
    "auto", "nchw" or "nhwc"."""
    fcos = cfg.MODEL.FCOS
    fmt = fcos.MEMORY_FORMAT
    if not isinstance(fmt, str) or fmt.lower() not in MEMORY_FORMATS:
        raise ValueError(f"MODEL.FCOS.MEMORY_FORMAT must be one of {MEMORY_FORMATS}, got {fmt!r}")
    fmt = fmt.lower()
    legacy = fcos.get("CHANNELS_LAST", None)
    if legacy is None:
        return fmt
    if not isinstance(legacy, bool):
        raise ValueError(
            f"MODEL.FCOS.CHANNELS_LAST (deprecated) must be True, False or None, got {legacy!r}"
        )
    implied = "nhwc" if legacy else "nchw"
    if fmt not in ("auto", implied):
        raise ValueError(
            f"MODEL.FCOS.CHANNELS_LAST={legacy} (deprecated) contradicts "
            f"MODEL.FCOS.MEMORY_FORMAT={fmt!r}: set MEMORY_FORMAT only"
        )
    logger.warning(
        f"MODEL.FCOS.CHANNELS_LAST is deprecated: use MODEL.FCOS.MEMORY_FORMAT {implied!r} "
        "(or 'auto': the faster format per mode on this machine)"
    )
    return implied


def channels_last_modes(cfg) -> Tuple[bool, bool]:
    """(NHWC in training, NHWC at inference) for the config ``cfg``."""
    fmt = memory_format_of(cfg)
    if fmt == "auto":
        return auto_channels_last_modes(cfg.MODEL.DEVICE)
    return fmt == "nhwc", fmt == "nhwc"
