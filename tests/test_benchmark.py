"""benchmarks/benchmark.py: the table it prints (ratios, FCOS shares) and its model list.

No timing is asserted here: speed is measured by running the benchmark itself.
"""
import argparse

import torch
from detectron2.modeling import build_model

from conftest import load_script, tiny_cfg
from fcos_d2.modeling.inference import FCOSPostProcessor

benchmark = load_script("benchmarks/benchmark.py")


def _args(skip_training: bool):
    return argparse.Namespace(infer_sizes=[(800, 1216)], skip_training=skip_training)


def _rows():
    fcos = {
        "infer_800x1216_ms": 700.0, "post_800x1216_ms": 7.0, "post_full_800x1216_ms": 35.0,
        "train_ms": 2000.0, "train_peak_mb": 1500.0, "targets_losses_ms": 50.0,
        "gflops": 190.0, "gflops_per_s": 271.4,
    }
    base = {
        "infer_800x1216_ms": 1000.0, "post_800x1216_ms": 0.0, "train_ms": 4000.0,
        "train_peak_mb": 3000.0, "targets_losses_ms": 0.0, "gflops": 178.0,
        "gflops_per_s": 178.0,
    }
    return {"FCOS": fcos, "Faster R-CNN (D2)": base}


def test_table_ratios_and_fcos_shares():
    text = benchmark.format_table(_rows(), _args(False), {"NCHW": 1.5e11, "NHWC": 2.0e11})
    lines = text.splitlines()
    # FCOS / baseline for inference, training step and peak memory: 700/1000, 2000/4000...
    assert "| FCOS / Faster R-CNN (D2) | 0.70 | 0.50 | 0.50 |" in lines
    # no baseline / baseline row
    assert not any(line.startswith("| Faster R-CNN (D2) / ") for line in lines)
    fcos_row = next(line for line in lines if line.startswith("| FCOS | "))
    assert "targets+losses 50.0 ms (2.5% of step)" in fcos_row
    assert "post-proc 800x1216 7.0 ms (1.0%), every score passing 35.0 ms (5.0%)" in fcos_row
    assert "150.0 GFLOP/s in NCHW, 200.0 GFLOP/s in NHWC" in text


def test_table_without_training_columns():
    rows = _rows()
    for row in rows.values():  # what an inference-only run measures
        for key in ("train_ms", "train_peak_mb", "targets_losses_ms"):
            del row[key]
    text = benchmark.format_table(rows, _args(True), {"NCHW": 1e11, "NHWC": 1e11})
    assert "train_ms" not in text
    assert "| FCOS / Faster R-CNN (D2) | 0.70 |" in text.splitlines()
    assert "targets+losses" not in text


def test_saturated_postprocessing_fills_every_level(monkeypatch):
    """The worst-case post-processing timing really runs with pre-NMS top-k full."""
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.PRE_NMS_TOPK_TEST = 7
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    kept = []
    select = FCOSPostProcessor.select_level

    def counting(post, *call_args):
        out = select(post, *call_args)
        kept.append(len(out[1]))
        return out

    monkeypatch.setattr(FCOSPostProcessor, "select_level", counting)
    args = argparse.Namespace(repeats=1, warmup=0, device="cpu")
    seconds = benchmark.saturated_postprocess_time(model, inputs, args)
    assert seconds > 0
    # the model's own forward, then the timed call: 5 levels each. Saturated, a level
    # keeps min(PRE_NMS_TOPK_TEST, locations x 3 classes): on 64x96, P3-P7 have 8x12,
    # 4x6, 2x3, 1x2 and 1x1 locations
    assert len(kept) == 10 and kept[5:] == [7, 7, 7, 6, 3]


def test_model_list_and_fcos_variants():
    configs = benchmark.model_configs("cpu")
    assert set(configs) == set(benchmark.MODELS)  # every config can be picked by --models
    speedups = {
        name: (cfg.MODEL.FCOS.CHANNELS_LAST, cfg.MODEL.FCOS.FOLD_BN_AT_TEST)
        for name, cfg in configs.items()
        if name.startswith("FCOS") and cfg.MODEL.META_ARCHITECTURE == "FCOS"
    }
    assert speedups == {
        "FCOS": (True, True),
        "FCOS (NCHW, BN not folded)": (False, False),
        "FCOS (NHWC, BN not folded)": (True, False),
        "FCOS (NCHW, BN folded)": (False, True),
    }
    for cfg in configs.values():  # same backbone for every detector
        assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.WEIGHTS == ""
