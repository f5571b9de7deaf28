"""MODEL.FCOS.MEMORY_FORMAT: the per-mode, per-machine rule of "auto", the fixed formats,
the deprecated CHANNELS_LAST, and the model switching format with train() / eval()."""
import logging

import pytest
import torch
from detectron2.modeling import build_model

from helpers import tiny_cfg
from fcos_d2.modeling import memory_format

# /proc/cpuinfo flags of the machine kinds measured (abridged)
EPYC_AVX2 = frozenset({"fpu", "sse4_2", "avx", "fma", "avx2"})
EPYC_AVX512 = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
XEON_AMX = EPYC_AVX512 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to run on a CPU with the given flags."""

    def set_flags(flags):
        monkeypatch.setattr(memory_format, "cpu_flags", lambda: flags)

    return set_flags


def _cfg(device="cpu", **fcos_keys):
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = device
    for key, value in fcos_keys.items():
        cfg.MODEL.FCOS[key] = value
    return cfg


@pytest.mark.parametrize(
    "flags, expected",
    [
        (EPYC_AVX2, (False, True)),  # NHWC training was 1.19x slower there
        (EPYC_AVX512, (True, True)),  # NHWC faster in both modes
        (XEON_AMX, (True, True)),  # NHWC faster in both modes
        (frozenset(), (False, True)),  # flags unknown: as without AVX-512
    ],
)
def test_auto_picks_per_mode_and_cpu_kind(cpu_kind, flags, expected):
    cpu_kind(flags)
    assert memory_format.channels_last_modes(_cfg()) == expected  # MEMORY_FORMAT "auto"
    assert memory_format.auto_channels_last_modes("cpu") == expected


def test_auto_on_other_devices(cpu_kind):
    cpu_kind(EPYC_AVX2)
    assert memory_format.channels_last_modes(_cfg("cuda")) == (True, True)
    assert memory_format.channels_last_modes(_cfg("cuda:1")) == (True, True)
    assert memory_format.channels_last_modes(_cfg("mps")) == (False, False)


def test_fixed_formats_override_the_rule(cpu_kind):
    cpu_kind(XEON_AMX)
    assert memory_format.channels_last_modes(_cfg(MEMORY_FORMAT="nchw")) == (False, False)
    cpu_kind(EPYC_AVX2)
    assert memory_format.channels_last_modes(_cfg(MEMORY_FORMAT="NHWC")) == (True, True)


def test_deprecated_channels_last_still_works(cpu_kind, caplog):
    cpu_kind(XEON_AMX)
    with caplog.at_level(logging.WARNING):
        assert memory_format.channels_last_modes(_cfg(CHANNELS_LAST=False)) == (False, False)
    assert "CHANNELS_LAST is deprecated" in caplog.text
    cpu_kind(EPYC_AVX2)
    assert memory_format.channels_last_modes(_cfg(CHANNELS_LAST=True)) == (True, True)
    # agreeing with an explicit MEMORY_FORMAT is fine
    cfg = _cfg(CHANNELS_LAST=True, MEMORY_FORMAT="nhwc")
    assert memory_format.channels_last_modes(cfg) == (True, True)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="MODEL.FCOS.MEMORY_FORMAT must be one of"):
        memory_format.channels_last_modes(_cfg(MEMORY_FORMAT="fast"))
    with pytest.raises(ValueError, match="CHANNELS_LAST=True .* contradicts .*'nchw'"):
        memory_format.channels_last_modes(_cfg(CHANNELS_LAST=True, MEMORY_FORMAT="nchw"))
    with pytest.raises(ValueError, match="CHANNELS_LAST .* must be True, False or None"):
        memory_format.channels_last_modes(_cfg(CHANNELS_LAST="yes"))


def test_yaml_keys_merge():
    """The keys take their values from the command line / yaml (yacs type checks)."""
    cfg = _cfg()
    cfg.merge_from_list(["MODEL.FCOS.MEMORY_FORMAT", "nchw", "MODEL.FCOS.CHANNELS_LAST", "False"])
    assert cfg.MODEL.FCOS.MEMORY_FORMAT == "nchw" and cfg.MODEL.FCOS.CHANNELS_LAST is False


def _conv_weights_nhwc(model) -> bool:
    weight = model.head.cls_tower.convs[0].weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_model_switches_format_between_modes(cpu_kind):
    """On an AVX2-only CPU the default model trains in NCHW and infers in NHWC."""
    cpu_kind(EPYC_AVX2)
    model = build_model(_cfg())
    model.train()
    assert not _conv_weights_nhwc(model)
    model.eval()
    assert _conv_weights_nhwc(model)
    cpu_kind(EPYC_AVX512)
    model = build_model(_cfg()).train()
    assert _conv_weights_nhwc(model)


def test_vector_extensions_of_the_kinds():
    assert memory_format.vector_extensions(EPYC_AVX2) == "AVX2, no AMX"
    assert memory_format.vector_extensions(EPYC_AVX512) == "AVX2, AVX-512 (bf16), no AMX"
    assert memory_format.vector_extensions(XEON_AMX) == "AVX2, AVX-512 (bf16), AMX"
    assert memory_format.vector_extensions(frozenset()) == "no AMX"
