"""How the FCOS detector runs on this machine: memory format, BatchNorm folding and
numeric precision, chosen in one place by one rule table.

The rules (:data:`RULES`), first match wins per setting; "mode" is training or
inference:

============== ======== ===================== ============ ============
setting        device   CPU has               training     inference
============== ======== ===================== ============ ============
memory format  cuda     --                    NHWC         NHWC
memory format  cpu      AVX-512 (avx512f)     NHWC         NHWC
memory format  cpu      --                    NCHW         NHWC
precision      cuda     --                    float16      float32
precision      cpu      bf16 (avx512_bf16)    bfloat16     bfloat16
precision      cpu      --                    bfloat16     float32
============== ======== ===================== ============ ============

* Memory format (``MODEL.FCOS.MEMORY_FORMAT "auto"``): oneDNN's NHWC convolutions were
  faster at inference on every CPU kind measured; in training only with AVX-512 (on an
  AVX2-only CPU the NHWC backward pass was 1.19x slower); cuDNN's tensor cores take NHWC.
* Precision (``"auto"`` of ``SOLVER.AMP.PRECISION`` and ``TEST.AMP.PRECISION``): the
  reduced precision that autocast uses when AMP is enabled for that mode. Training with
  ``SOLVER.AMP.ENABLED`` uses Detectron2's float16 on CUDA and bfloat16 on CPUs. At
  inference ``TEST.AMP.ENABLED`` is on by default, and "auto" picks bfloat16 only where
  it was measured faster than float32 with the same detections: CPUs with bfloat16
  instructions (``avx512_bf16``; R-50 FCOS inference at 800x1216 0.38x the float32 time
  on an Intel Xeon with AMX, 0.53x on an AMD EPYC with AVX-512 and no AMX). Without them
  (AVX2 only) bfloat16 is emulated, 5.5x slower than float32, and "auto" keeps float32;
  on CUDA it keeps float32 until measured (set ``TEST.AMP.PRECISION "float16"`` to use
  tensor cores). Figures in docs/benchmarks.md.
* The CPU features are those PyTorch may use: the flags of ``/proc/cpuinfo`` less what
  ``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA`` rule out, so that a run which caps the
  instruction set (to emulate another CPU kind) gets that kind's choices.
* BatchNorm folding is not machine-dependent: ``MODEL.FCOS.FOLD_FROZEN_BN`` (every
  forward) and ``MODEL.FCOS.FOLD_BN_AT_TEST`` (inference mode) are on by default.

Whatever the precision, target assignment, losses, box decoding, centerness, clipping,
NMS and proposal scores run in float32: the head's outputs leave autocast as float32
(:meth:`fcos_d2.modeling.pipeline.FCOSPipeline.predict`).

The policy follows the module's mode (``model.train()`` / ``model.eval()``), never
global state such as ``torch.is_grad_enabled()``.
"""
import contextlib
import functools
import logging
import os
import platform
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

import torch

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "RULES",
    "ExecutionPolicy",
    "Rule",
    "amp_dtype",
    "auto_precision_modes",
    "autocast",
    "cpu_description",
    "cpu_flags",
    "device_type",
    "float32",
    "precision_modes",
    "rule_for",
    "usable_cpu_flags",
    "vector_extensions",
]

logger = logging.getLogger(__name__)

MEMORY_FORMATS = ("auto", "nchw", "nhwc")
PRECISIONS = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Rule:
    """One row of the table: on ``device`` (and a CPU with ``cpu_flag``, None: any), the
    ``setting`` is ``training`` in training mode and ``inference`` at inference."""

    setting: str  # "memory_format" or "precision"
    device: str  # "cuda", "cpu", or "any"
    cpu_flag: Optional[str]
    training: str
    inference: str


RULES: Tuple[Rule, ...] = (
    Rule("memory_format", "cuda", None, "nhwc", "nhwc"),
    Rule("memory_format", "cpu", "avx512f", "nhwc", "nhwc"),
    Rule("memory_format", "cpu", None, "nchw", "nhwc"),
    Rule("memory_format", "any", None, "nchw", "nchw"),
    Rule("precision", "cuda", None, "float16", "float32"),
    Rule("precision", "cpu", "avx512_bf16", "bfloat16", "bfloat16"),
    Rule("precision", "cpu", None, "bfloat16", "float32"),
    Rule("precision", "any", None, "float32", "float32"),
)


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
    "amx_bf16"); empty where there is no such file. Read once per process."""
    return _cpuinfo()[1]


# ONEDNN_MAX_CPU_ISA values (prefixes) -> the flag families they rule out; values not
# listed (ALL, DEFAULT, AVX10_*, AMX*) cap nothing that the rules look at
_ISA_CAPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("AVX512_CORE_BF16", ("amx",)),
    ("AVX512_CORE_FP16", ("amx",)),
    ("AVX512", ("amx", "avx512_bf16")),
    ("AVX2", ("amx", "avx512")),
    ("AVX", ("amx", "avx512", "avx2")),
    ("SSE", ("amx", "avx512", "avx2")),
)


def usable_cpu_flags(flags: FrozenSet[str]) -> FrozenSet[str]:
    """``flags`` less the instruction-set families that PyTorch is told not to use:
    ``ATEN_CPU_CAPABILITY`` below AVX-512 (e.g. "avx2") rules out AVX-512 and AMX;
    ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) what it caps, e.g. "AVX2" rules out
    AVX-512 and AMX, "AVX512_CORE_BF16" AMX."""
    banned = set()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if aten and not aten.startswith("avx512"):  # e.g. "avx2", "default"
        banned.update(("amx", "avx512"))
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA", ""))
    for prefix, families in _ISA_CAPS:
        if cap.upper().startswith(prefix):
            banned.update(families)
            break
    return frozenset(f for f in flags if not any(f.startswith(b) for b in banned))


def vector_extensions(flags: FrozenSet[str]) -> str:
    """The x86 vector extensions that decide PyTorch's CPU speed and the rules, e.g.
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
    AMX", for tables of timings; with "; emulating AVX2, no AMX" where the environment
    caps the instruction set (:func:`usable_cpu_flags`)."""
    model = _cpuinfo()[0] or platform.processor() or platform.machine()
    flags = cpu_flags()
    usable = usable_cpu_flags(flags)
    if usable == flags:
        return f"{model}; {vector_extensions(flags)}"
    return f"{model}; {vector_extensions(flags)}; emulating {vector_extensions(usable)}"


def device_type(device) -> str:
    """"cuda", "cpu", ... of a device or a device string such as "cuda:1"."""
    return torch.device(device).type


def rule_for(setting: str, device, flags: Optional[FrozenSet[str]] = None) -> Rule:
    """The first rule of :data:`RULES` for ``setting`` that matches ``device`` and the
    CPU's ``flags`` (default: :func:`usable_cpu_flags` of :func:`cpu_flags`)."""
    kind = device_type(device)
    flags = usable_cpu_flags(cpu_flags()) if flags is None else flags
    for rule in RULES:
        if rule.setting != setting or rule.device not in (kind, "any"):
            continue
        if rule.cpu_flag is None or rule.cpu_flag in flags:
            return rule
    raise LookupError(f"no execution rule for {setting!r} on {device}")  # "any" rows: never


def _check_choice(key: str, value, choices) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")
    return value.lower()


def amp_dtype(
    precision: str, device, training: bool, flags: Optional[FrozenSet[str]] = None,
    key: str = "precision",
) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` ("auto", "float16", "bfloat16", "float32") in
    that mode on ``device``; None means float32 (no autocast). ``key`` names the config
    key in errors."""
    precision = _check_choice(key, precision, PRECISIONS)
    if precision == "auto":
        rule = rule_for("precision", device, flags)
        precision = rule.training if training else rule.inference
    return None if precision == "float32" else getattr(torch, precision)


def autocast(device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=dtype)


def float32(device):
    """A context where autocast is off on ``device``'s type: what runs inside computes in
    the dtypes of its inputs (float32 for the FCOS numerics)."""
    return torch.autocast(device_type(device), enabled=False)


@dataclass(frozen=True)
class ExecutionPolicy:
    """What :data:`RULES` and the config chose for a model, per mode."""

    channels_last: Tuple[bool, bool] = (False, False)  # (training, inference)
    precision: Tuple[Optional[torch.dtype], Optional[torch.dtype]] = (None, None)

    @classmethod
    def from_config(cls, cfg) -> "ExecutionPolicy":
        """From ``MODEL.DEVICE``, ``MODEL.FCOS.MEMORY_FORMAT`` (and the deprecated
        ``CHANNELS_LAST``), ``SOLVER.AMP.*`` and ``TEST.AMP.*``."""
        from .memory_format import channels_last_modes  # the deprecated key's handling

        policy = cls(channels_last=channels_last_modes(cfg), precision=precision_modes(cfg))
        logger.info(f"Execution on {cfg.MODEL.DEVICE}: {policy.describe()}")
        return policy

    def describe(self) -> str:
        """E.g. "training NHWC float32, inference NHWC bfloat16", for the log."""
        def name(dtype):
            return "float32" if dtype is None else str(dtype).replace("torch.", "")

        fmt = ["NHWC" if x else "NCHW" for x in self.channels_last]
        return (
            f"training {fmt[0]} {name(self.precision[0])}, "
            f"inference {fmt[1]} {name(self.precision[1])}"
        )


def precision_modes(cfg) -> Tuple[Optional[torch.dtype], Optional[torch.dtype]]:
    """(training, inference) autocast dtypes of a config: ``SOLVER.AMP`` and ``TEST.AMP``
    (``ENABLED`` and ``PRECISION``) on ``MODEL.DEVICE``; None is float32."""
    device = cfg.MODEL.DEVICE
    modes = []
    for key, training in (("SOLVER", True), ("TEST", False)):
        node = cfg[key].AMP
        precision = node.get("PRECISION", "auto")
        dtype = amp_dtype(precision, device, training, key=f"{key}.AMP.PRECISION")
        modes.append(dtype if node.ENABLED else None)
    return tuple(modes)


def auto_precision_modes(
    device, train_amp: bool = False
) -> Tuple[Optional[torch.dtype], Optional[torch.dtype]]:
    """(training, inference) dtypes of the "auto" rule on ``device``, training in float32
    unless ``train_amp``, for a LazyConfig's ``precision=``."""
    train = amp_dtype("auto", device, training=True) if train_amp else None
    return train, amp_dtype("auto", device, training=False)
