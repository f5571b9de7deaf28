"""benchmarks/: the tables rendered from the JSON results (ratios, FCOS shares), the model
list and precisions, the FCOS parts read from the package's profiler ranges, the peers.

No timing is asserted here: speed is measured by running the benchmark itself.
"""
import contextlib
import json

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from benchmarks import benchmark, models, report, timing
from helpers import make_inputs, tiny_cfg
from fcos_d2.modeling import execution
from fcos_d2.modeling.inference import FCOSPostProcessor

SETTINGS = {
    "infer_sizes": ["800x1216"], "train_size": "512x640", "train_batch": 2, "repeats": 5,
    "warmup": 2, "amp_dtype": "bfloat16", "training": True,
}  # fmt: skip


def _row(model, precision, infer, train, memory, **extra):
    return {
        "model": model, "precision": precision,
        "autocast": "bfloat16" if precision == "amp" else "float32",
        "infer_800x1216_ms": infer, "post_800x1216_ms": 0.0, "train_ms": train,
        "train_peak_mb": memory, "targets_losses_ms": 0.0, "gflops": 178.0,
        "gflops_per_s": 178.0, "train_gflops": 280.0, "train_gflops_per_s": 70.0, **extra,
    }  # fmt: skip


def _results(training: bool = True):
    fcos_parts = {"post_800x1216_ms": 7.0, "post_full_800x1216_ms": 35.0,
                  "targets_losses_ms": 50.0}
    rows = [
        _row("FCOS", "fp32", 700.0, 2000.0, 1500.0, **fcos_parts),
        _row("FCOS", "amp", 280.0, 800.0, 1200.0, **fcos_parts),
        _row(models.TORCHVISION_FCOS, "fp32", 1400.0, 3200.0, 1600.0),
        _row(models.TORCHVISION_FCOS, "amp", 1120.0, 2400.0, 1400.0),
        _row("Faster R-CNN (D2)", "fp32", 1000.0, 4000.0, 3000.0),
    ]
    rows[0].update(gflops=190.0, gflops_per_s=271.4, train_gflops=300.0,
                   train_gflops_per_s=150.0)
    machine = {"device": "cpu", "cpu": "Some CPU; AVX2, AVX-512, AMX", "cpu_capability":
               "AVX512", "threads": 2, "torch": "2.x", "torchvision": "0.y"}
    return {
        "machine": machine, "load_average": [1.5, 2.25],
        "settings": {**SETTINGS, "training": training}, "rows": rows,
        "conv_rates": {"fp32": {"NCHW": 1.5e11, "NHWC": 2.0e11}, "amp": {"NHWC": 6.0e11}},
    }  # fmt: skip


def test_tables_ratios_and_fcos_shares():
    text = report.format_tables(_results())
    lines = text.splitlines()
    # against a baseline at the same precision: inference, training step, peak memory
    assert "| FCOS [fp32] / Faster R-CNN (D2) [fp32] | 0.70 | 0.50 | 0.50 |" in lines
    assert "| FCOS [amp] / FCOS (torchvision) [amp] | 0.25 | 0.33 | 0.86 |" in lines
    assert not any(line.startswith("| FCOS [amp] / Faster R-CNN") for line in lines)
    assert not any(line.startswith("| Faster R-CNN (D2) [fp32] / ") for line in lines)
    # under autocast against float32: itself, and ours against torchvision in both
    assert "| FCOS [amp] / FCOS [fp32] | 0.40 | 0.40 | 0.80 |" in lines
    assert "| FCOS [amp] / FCOS (torchvision) [fp32] | 0.20 | 0.25 | 0.75 |" in lines
    peer = "| FCOS (torchvision) [amp] / FCOS (torchvision) [fp32] | 0.80 | 0.75 | 0.88 |"
    assert peer in lines
    fcos_row = next(line for line in lines if line.startswith("| FCOS | float32 | "))
    assert "targets+losses 50.0 ms (2.5% of step)" in fcos_row
    assert "post-proc 800x1216 7.0 ms (1.0%), every score passing 35.0 ms (5.0%)" in fcos_row
    assert "| 700.0 | 2000.0 | 1500.0 | 190.0 | 271.4 | 300.0 | 150.0 |" in fcos_row
    assert "fp32: 150.0 GFLOP/s in NCHW, 200.0 GFLOP/s in NHWC" in text
    assert "amp: 600.0 GFLOP/s in NHWC" in text
    assert "train_gflops: one training step, batch 2 at 512x640, forward + backward" in text
    assert lines[0].startswith("Machine: CPU Some CPU; AVX2, AVX-512, AMX; PyTorch CPU "
                               "capability AVX512; 2 threads")
    assert "Autocast: bfloat16. 1-minute load average at start / end: 1.50 / 2.25." in lines[0]


def test_tables_without_training_columns():
    results = _results(training=False)
    for row in results["rows"]:  # what an inference-only run measures
        for key in ("train_ms", "train_peak_mb", "targets_losses_ms", "train_gflops",
                    "train_gflops_per_s"):
            del row[key]
    text = report.format_tables(results)
    assert "train_ms" not in text and "targets+losses" not in text
    assert "| FCOS [fp32] / Faster R-CNN (D2) [fp32] | 0.70 |" in text.splitlines()


def test_report_command_renders_the_json_file(tmp_path, capsys):
    path, out = tmp_path / "results.json", tmp_path / "docs" / "tables.md"
    path.write_text(json.dumps(_results()))
    assert report.main([str(path), "--output", str(out)]) == 0
    assert out.read_text() == report.format_tables(_results()) + "\n"
    assert report.main([str(path)]) == 0
    assert capsys.readouterr().out == report.format_tables(_results()) + "\n"
    page = tmp_path / "benchmarks.md"
    page.write_text("# Speed\n\n<!-- benchmark tables: cpu -->\nold\n"
                    "<!-- end of benchmark tables -->\n\nAfter.\n")
    assert report.main([str(path), "--update", str(page), "--section", "cpu"]) == 0
    assert page.read_text() == (
        "# Speed\n\n<!-- benchmark tables: cpu -->\n\n" + report.format_tables(_results())
        + "\n\n<!-- end of benchmark tables -->\n\nAfter.\n"
    )
    assert report.main([str(path), "--update", str(page), "--section", "cuda"]) == 1
    assert "benchmark tables: cuda" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert report.main([str(tmp_path / "bad.json")]) == 1
    assert "bad.json" in capsys.readouterr().err


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
    args = benchmark.parse_args(["--repeats", "1", "--warmup", "0"])
    seconds = timing.saturated_postprocess_time(model, inputs, args)
    assert seconds > 0
    # only the timed call, 5 levels. Saturated, a level keeps min(PRE_NMS_TOPK_TEST,
    # locations x 3 classes): on 64x96, P3-P7 have 8x12, 4x6, 2x3, 1x2 and 1x1 locations
    assert kept == [7, 7, 7, 6, 3]


def test_fcos_parts_are_the_package_profiler_ranges():
    """Target assignment + losses and post-processing are timed from the ranges fcos_d2
    opens around them: nonzero, and a part of the step."""
    model = build_model(tiny_cfg())
    inputs = make_inputs([[[8, 8, 40, 40]], [[20, 10, 90, 60]]])

    def train_step():
        with EventStorage():
            sum(model(inputs).values()).backward()

    losses = timing.range_seconds(train_step, timing.PART_RANGES["targets_losses"], "cpu", 2)
    assert len(losses) == 2
    assert 0 < max(losses) < timing.median_time(train_step, 1, 0, "cpu")
    model.eval()

    def inference():
        with torch.no_grad():
            model([{"image": inputs[0]["image"]}])

    (post,) = timing.range_seconds(inference, timing.PART_RANGES["post"], "cpu")
    assert 0 < post < timing.median_time(inference, 1, 0, "cpu")
    assert timing.range_seconds(inference, timing.PART_RANGES["targets_losses"], "cpu") == [0]


def test_model_list_and_fcos_variants():
    configs = models.model_configs("cpu")
    # every model can be picked by --models: the Detectron2 configs and torchvision's FCOS
    assert set(configs) | {models.TORCHVISION_FCOS} == set(models.MODELS)
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


def test_every_model_at_both_precisions_with_the_same_autocast():
    """fp32 rows run without autocast (also where TEST.AMP would pick bfloat16 by
    default); amp rows: fcos_d2's FCOS through its TEST.AMP / SOLVER.AMP keys, the
    others inside torch.autocast, all to the same dtype."""
    chosen = models.variants(list(models.DEFAULT_MODELS), ["fp32", "amp"], torch.bfloat16)
    assert len(chosen) == 2 * len(models.DEFAULT_MODELS)
    fp32, amp = models.model_configs("cpu"), models.model_configs("cpu", torch.bfloat16)
    for name in (n for n in fp32 if models.amp_by_config(n)):
        assert execution.ExecutionPolicy.from_config(fp32[name]).precision == (None, None)
        policy = execution.ExecutionPolicy.from_config(amp[name])
        assert policy.precision == (torch.bfloat16, torch.bfloat16), name
    for variant in chosen:
        context = models.precision_context(variant, "cpu")
        wrapped = variant.dtype is not None and not models.amp_by_config(variant.model)
        assert isinstance(context, torch.autocast) == wrapped, variant
        assert not isinstance(context, torch.autocast) or context.fast_dtype == torch.bfloat16
        assert wrapped or isinstance(context, contextlib.nullcontext)
    assert models.amp_by_config("FCOS") and not models.amp_by_config(models.TORCHVISION_FCOS)
    assert benchmark.parse_args([]).amp_dtype == torch.bfloat16  # on CPU
    assert benchmark.parse_args(["--device", "cuda"]).amp_dtype == torch.float16
    row = benchmark.result_row(chosen[1], {"infer_800x1216_ms": 1.0})
    assert (row["precision"], row["autocast"], row["amp_by"]) == ("amp", "bfloat16", "config")


def test_machine_line_names_cpu_and_threads():
    line = report.machine_line(report.machine_info("cpu"))
    assert f"{torch.get_num_threads()} threads" in line and torch.__version__ in line
    assert f"CPU {execution.cpu_description()}; PyTorch CPU capability" in line


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_torchvision_peer_trains_what_fcos_d2_trains():
    """torchvision's FCOS as fcos_d2's default ResNet-50-FPN: FrozenBatchNorm throughout
    the ResNet, stem and first stage frozen (FREEZE_AT=2), three trainable stages."""
    from torchvision.ops import FrozenBatchNorm2d

    peer = models.build_torchvision_fcos("cpu").model
    body = peer.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer4[2].bn3, FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    cfg = models.model_configs("cpu")["FCOS"]
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
    ours_fp32 = models.Variant("FCOS", "fp32")
    peer_fp32 = models.Variant(models.TORCHVISION_FCOS, "fp32")
    built = models.build_models([ours_fp32, peer_fp32], "cpu")
    inputs = models.random_images(1, 128, 160, "cpu", with_boxes=False, seed=3)
    ours, peer = built[ours_fp32], built[peer_fp32].model
    stem_norm = ours.backbone.bottom_up.stem.conv1.norm
    assert stem_norm.running_var.min() > 0 and (stem_norm.running_var - 1).abs().max() > 0.1
    with torch.no_grad():
        p5 = ours.backbone(ours.preprocess_image(inputs).tensor)["p5"]
        images = peer.transform(built[peer_fp32].torchvision_inputs(inputs)[0])
        p5_peer = peer.backbone(images[0].tensors)["2"]
    # unnormalised, 50 random layers grow the maps by orders of magnitude
    assert 0.05 < p5.std().item() < 20 and 0.05 < p5_peer.std().item() < 20


def test_torchvision_peer_sees_the_same_pixels():
    """Its transform resizes nothing: the normalised batch is the input, unscaled."""
    peer = models.build_torchvision_fcos("cpu").eval()
    inputs = models.random_images(1, 96, 160, "cpu", with_boxes=False)
    images, targets = peer.torchvision_inputs(inputs)
    assert targets is None
    batch, _ = peer.model.transform(images)
    assert batch.image_sizes == [(96, 160)] and batch.tensors.shape == (1, 3, 96, 160)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (inputs[0]["image"] / 255 - mean) / std
    torch.testing.assert_close(batch.tensors[0], expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_benchmark_command_writes_results_that_render(tmp_path):
    """One tiny run end to end: FCOS at both precisions, inference and a training step."""
    out = tmp_path / "results.json"
    benchmark.main([
        "--models", "FCOS", "--infer-sizes", "64x96", "--train-size", "64x96",
        "--train-batch", "1", "--repeats", "1", "--warmup", "0", "--output", str(out),
    ])
    results = json.loads(out.read_text())
    rows = {(r["model"], r["precision"]): r for r in results["rows"]}
    assert set(rows) == {("FCOS", "fp32"), ("FCOS", "amp")}
    amp = rows["FCOS", "amp"]
    assert (amp["autocast"], amp["amp_by"]) == ("bfloat16", "config")
    for row in rows.values():
        assert row["infer_64x96_ms"] > row["post_64x96_ms"] > 0
        assert row["train_ms"] > row["targets_losses_ms"] > 0
    assert results["machine"]["cpu"] == execution.cpu_description()
    assert "| FCOS [amp] / FCOS [fp32] |" in report.format_tables(results)


def test_demo_recipe_table():
    from benchmarks import demo_recipe

    machine = _results()["machine"]
    text = demo_recipe.format_result({
        "machine": machine, "load_average": [1.0, 1.25], "config_file": demo_recipe.DEMO,
        "iterations": 40, "amp_dtype": "bfloat16", "s_per_it": {"fp32": 0.4, "amp": 0.25},
        "ratio_amp_fp32": 0.625,
    })
    lines = text.splitlines()
    assert lines[0].startswith("Machine: CPU Some CPU") and "1.00 / 1.25" in lines[0]
    assert "| float32 | 0.400 |" in lines and "| bfloat16 autocast (SOLVER.AMP) | 0.250 |" in lines
    assert "| ratio | 0.62 |" in lines
