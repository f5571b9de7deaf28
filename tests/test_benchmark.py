"""benchmarks/benchmark.py: the table it prints (ratios, FCOS shares) and its model list.

No timing is asserted here: speed is measured by running the benchmark itself.
"""
import argparse

import torch
from detectron2.modeling import build_model

from conftest import load_script, tiny_cfg
from fcos_d2.modeling import memory_format
from fcos_d2.modeling.inference import FCOSPostProcessor

benchmark = load_script("benchmarks/benchmark.py")


def _args(skip_training: bool):
    return argparse.Namespace(
        infer_sizes=[(800, 1216)], skip_training=skip_training, train_size=(512, 640),
        train_batch=2,
    )


def _rows():
    fcos = {
        "infer_800x1216_ms": 700.0, "post_800x1216_ms": 7.0, "post_full_800x1216_ms": 35.0,
        "train_ms": 2000.0, "train_peak_mb": 1500.0, "targets_losses_ms": 50.0,
        "gflops": 190.0, "gflops_per_s": 271.4, "train_gflops": 300.0,
        "train_gflops_per_s": 150.0,
    }
    base = {
        "infer_800x1216_ms": 1000.0, "post_800x1216_ms": 0.0, "train_ms": 4000.0,
        "train_peak_mb": 3000.0, "targets_losses_ms": 0.0, "gflops": 178.0,
        "gflops_per_s": 178.0, "train_gflops": 280.0, "train_gflops_per_s": 70.0,
    }
    return {"FCOS": fcos, "Faster R-CNN (D2)": base}


def test_table_ratios_and_fcos_shares():
    rates = {"NCHW": 1.5e11, "NHWC": 2.0e11, "NCHW forward+backward": 1.2e11}
    text = benchmark.format_table(_rows(), _args(False), rates)
    lines = text.splitlines()
    # FCOS / baseline for inference, training step and peak memory: 700/1000, 2000/4000...
    assert "| FCOS / Faster R-CNN (D2) | 0.70 | 0.50 | 0.50 |" in lines
    # no baseline / baseline row
    assert not any(line.startswith("| Faster R-CNN (D2) / ") for line in lines)
    fcos_row = next(line for line in lines if line.startswith("| FCOS | "))
    assert "targets+losses 50.0 ms (2.5% of step)" in fcos_row
    assert "post-proc 800x1216 7.0 ms (1.0%), every score passing 35.0 ms (5.0%)" in fcos_row
    assert (
        "150.0 GFLOP/s in NCHW, 200.0 GFLOP/s in NHWC, 120.0 GFLOP/s in NCHW forward+backward"
        in text
    )
    assert "| 2000.0 | 1500.0 | 190.0 | 271.4 | 300.0 | 150.0 |" in fcos_row
    assert "train_gflops: one training step, batch 2 at 512x640, forward + backward" in text


def test_table_without_training_columns():
    rows = _rows()
    for row in rows.values():  # what an inference-only run measures
        for key in ("train_ms", "train_peak_mb", "targets_losses_ms", "train_gflops",
                    "train_gflops_per_s"):
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
    # only the timed call, 5 levels. Saturated, a level keeps min(PRE_NMS_TOPK_TEST,
    # locations x 3 classes): on 64x96, P3-P7 have 8x12, 4x6, 2x3, 1x2 and 1x1 locations
    assert kept == [7, 7, 7, 6, 3]


def test_model_list_and_fcos_variants():
    configs = benchmark.model_configs("cpu")
    # every model can be picked by --models: the Detectron2 configs and torchvision's FCOS
    assert set(configs) | {benchmark.TORCHVISION_FCOS} == set(benchmark.MODELS)
    speedups = {
        name: (cfg.MODEL.FCOS.MEMORY_FORMAT, cfg.MODEL.FCOS.FOLD_BN_AT_TEST)
        for name, cfg in configs.items()
        if name.startswith("FCOS") and cfg.MODEL.META_ARCHITECTURE == "FCOS"
    }
    assert speedups == {
        "FCOS": ("auto", True),  # the default
        "FCOS (NCHW, BN not folded)": ("nchw", False),
        "FCOS (NHWC, BN not folded)": ("nhwc", False),
        "FCOS (NCHW, BN folded)": ("nchw", True),
        "FCOS (NHWC, BN folded)": ("nhwc", True),
    }
    for cfg in configs.values():  # same backbone for every detector
        assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.WEIGHTS == ""


def test_machine_line_names_cpu_and_threads():
    line = benchmark.machine_description("cpu", amp=False)
    assert f"{torch.get_num_threads()} threads" in line and torch.__version__ in line
    assert f"CPU {memory_format.cpu_description()}; PyTorch CPU capability" in line


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_torchvision_peer_trains_what_fcos_d2_trains():
    """torchvision's FCOS as fcos_d2's default ResNet-50-FPN: FrozenBatchNorm throughout
    the ResNet, stem and first stage frozen (FREEZE_AT=2), three trainable stages."""
    from torchvision.ops import FrozenBatchNorm2d

    peer = benchmark.build_torchvision_fcos("cpu").model
    body = peer.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer4[2].bn3, FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    cfg = benchmark.model_configs("cpu")["FCOS"]
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    ours = build_model(cfg)
    # same trainable network: ResNet-50 res3-res5 convs, FPN, P6/P7, head; fcos_d2 has
    # one learnable scale per level (5) that torchvision's head does not
    assert _trainable(ours) - _trainable(peer) == 5
    # by hand: ResNet-50's 25,557,032 less fc (2,049,000), stem (9,408 + 128), layer1
    # (215,808) and the BatchNorms of layer2-4 (2 x (3,584 + 10,240 + 11,264) = 50,176)
    # = 23,232,512; FPN laterals 918,272 + outputs 1,770,240 + P6/P7 1,180,160; head: two
    # towers of 4 x (589,824 + 256 + 512 GN) + 184,400 + 9,220 + 2,305
    assert _trainable(peer) == 23_232_512 + 3_868_672 + 4_920_661


def test_calibrated_frozen_batchnorm_normalises_each_layer():
    """Random weights with identity FrozenBatchNorm statistics blow activations up; the
    benchmark gives every norm the statistics of its input, in both implementations."""
    models = benchmark.build_models(["FCOS", benchmark.TORCHVISION_FCOS], "cpu")
    inputs = benchmark.random_images(1, 128, 160, "cpu", with_boxes=False, seed=3)
    ours, peer = models["FCOS"], models[benchmark.TORCHVISION_FCOS].model
    stem_norm = ours.backbone.bottom_up.stem.conv1.norm
    assert stem_norm.running_var.min() > 0 and (stem_norm.running_var - 1).abs().max() > 0.1
    with torch.no_grad():
        p5 = ours.backbone(ours.preprocess_image(inputs).tensor)["p5"]
        images = peer.transform(models[benchmark.TORCHVISION_FCOS].torchvision_inputs(inputs)[0])
        p5_peer = peer.backbone(images[0].tensors)["2"]
    # unnormalised, 50 random layers grow the maps by orders of magnitude
    assert 0.05 < p5.std().item() < 20 and 0.05 < p5_peer.std().item() < 20


def test_torchvision_peer_sees_the_same_pixels():
    """Its transform resizes nothing: the normalised batch is the input, unscaled."""
    peer = benchmark.build_torchvision_fcos("cpu").eval()
    inputs = benchmark.random_images(1, 96, 160, "cpu", with_boxes=False)
    images, targets = peer.torchvision_inputs(inputs)
    assert targets is None
    batch, _ = peer.model.transform(images)
    assert batch.image_sizes == [(96, 160)] and batch.tensors.shape == (1, 3, 96, 160)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (inputs[0]["image"] / 255 - mean) / std
    torch.testing.assert_close(batch.tensors[0], expected, atol=1e-5, rtol=0)
