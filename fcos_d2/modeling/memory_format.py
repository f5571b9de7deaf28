"""Which memory format (NCHW or NHWC) the FCOS detector runs in, per mode.

``MODEL.FCOS.MEMORY_FORMAT`` picks it:

* ``"auto"`` (default): in each mode (training, inference) the format that was faster for
  FCOS on this kind of machine, by the rule of :func:`nhwc_is_faster`, which
  ``benchmarks/benchmark.py`` measured (figures in ``docs/benchmarks.md``);
* ``"nchw"`` / ``"nhwc"``: that format in both modes.

``MODEL.FCOS.CHANNELS_LAST`` is deprecated: unset (``None``) by default; ``True`` / ``False``
still mean ``"nhwc"`` / ``"nchw"`` (with a warning), and contradicting an explicit
``MEMORY_FORMAT`` is an error.

Both formats compute the same function up to float rounding; only the speed differs.
"""
import functools
import logging
import platform
from typing import FrozenSet, Optional, Tuple

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

MEMORY_FORMATS = ("auto", "nchw", "nhwc")


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> Tuple[str, FrozenSet[str]]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo``; ("", {}) without it."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features"):  # x86, ARM
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (e.g. "avx2", "avx512f",
    "amx_tile"); empty where there is no such file. Read once per process."""
    return _cpuinfo()[1]


def vector_extensions(flags: FrozenSet[str]) -> str:
    """The x86 vector extensions that decide PyTorch's CPU speed and the rule below, e.g.
    "AVX2, AVX-512 (bf16), no AMX"."""
    found = []
    if "avx2" in flags:
        found.append("AVX2")
    if "avx512f" in flags:
        found.append("AVX-512" + (" (bf16)" if "avx512_bf16" in flags else ""))
    found.append("AMX" if "amx_tile" in flags else "no AMX")
    return ", ".join(found)


def cpu_description() -> str:
    """The CPU's model and vector extensions, e.g. "AMD EPYC; AVX2, AVX-512 (bf16), no
    AMX", for tables of timings."""
    model = _cpuinfo()[0] or platform.processor() or platform.machine()
    return f"{model}; {vector_extensions(cpu_flags())}"


def nhwc_is_faster(device: str, training: bool, flags: Optional[FrozenSet[str]] = None) -> bool:
    """Whether FCOS runs faster in NHWC than in NCHW in this mode on ``device``.

    * CUDA: NHWC in both modes (tensor-core convolutions take NHWC; cuDNN otherwise
      transposes around each of them).
    * CPU, inference: NHWC, where oneDNN's convolutions were faster on every CPU kind
      measured (Intel Xeon with AMX; AMD EPYC with AVX-512, no AMX; and, together with
      BatchNorm folding, AMD EPYC with AVX2).
    * CPU, training: NHWC only with AVX-512 (``avx512f``). On an AVX2-only CPU the
      backward pass lost in NHWC: a ResNet-50 FCOS training step took 1.19x as long as in
      NCHW on an AVX2 AMD EPYC (issue 15); with AVX-512 NHWC won, 0.95x on an AVX-512
      AMD EPYC and 0.89x on an Intel Xeon (with AMX) (docs/benchmarks.md).
    * other devices: NCHW, PyTorch's default.

    Args:
        device: e.g. "cpu", "cuda", "cuda:1" (``cfg.MODEL.DEVICE``).
        training: the mode.
        flags: the CPU's flags (default: :func:`cpu_flags`).
    """
    if device.startswith("cuda"):
        return True
    if not device.startswith("cpu"):
        return False
    if not training:
        return True
    flags = cpu_flags() if flags is None else flags
    return "avx512f" in flags


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
