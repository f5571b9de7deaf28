#!/usr/bin/env python
"""Speed of FCOS against torchvision's FCOS and Detectron2's own RetinaNet and Faster
R-CNN, in one run.

All detectors use a ResNet-50-FPN with random weights (stem and first stage frozen,
three trainable stages) and see the same inputs. FCOS runs twice: as configured by
default, and as the plain network (NCHW memory format, BatchNorm not folded at test) --
the same network, run the way Detectron2 runs its own models:

    python benchmarks/benchmark.py                      # CPU, fp32
    python benchmarks/benchmark.py --amp                # CPU, bfloat16 autocast
    python benchmarks/benchmark.py --device cuda --amp  # GPU, mixed precision
    python benchmarks/benchmark.py --skip-training --models FCOS "FCOS (NHWC, BN not folded)" \
        "FCOS (NCHW, BN folded)" "FCOS (NCHW, BN not folded)"   # each speed-up alone
    python benchmarks/benchmark.py --profile-training FCOS --repeats 3  # where a step goes

Measured per model: inference latency (batch 1, median after warm-up) at each
``--infer-sizes``; training step time (forward + backward + SGD step, batch
``--train-batch`` at ``--train-size``), its peak memory and its flops (forward +
backward); for FCOS the time inside target assignment + losses (training) and
post-processing (inference); fvcore FLOPs and the achieved rates, next to what a plain
large 3x3 convolution reaches on this device, forward and forward + backward. The models
take turns, one forward (or training step) each per round, so that a slow spell of a
shared machine hits all of them alike. The table's header names the machine: CPU model,
vector extensions (AVX2 / AVX-512 / AMX), threads, torch version, and the load average.
"""
import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS as TorchvisionFCOSModel
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import fcos_d2
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d as D2FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis

from fcos_d2.modeling.inference import FCOSPostProcessor
from fcos_d2.modeling.memory_format import cpu_description
from fcos_d2.modeling.pipeline import FCOSPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHVISION_FCOS = "FCOS (torchvision)"
BASELINES = (TORCHVISION_FCOS, "RetinaNet (D2)", "Faster R-CNN (D2)")
PLAIN_FCOS = "FCOS (NCHW, BN not folded)"
# not run by default: each speed-up alone, and NHWC in both modes (the default until "auto")
OPTIONAL_FCOS = (
    "FCOS (NHWC, BN not folded)", "FCOS (NCHW, BN folded)", "FCOS (NHWC, BN folded)"
)
D2_MODELS = ("FCOS", PLAIN_FCOS, *OPTIONAL_FCOS, "FCOS-RPN Faster R-CNN", *BASELINES[1:])
MODELS = (*D2_MODELS, TORCHVISION_FCOS)


def d2_model_zoo_file(name: str) -> str:
    import detectron2.model_zoo

    return os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs", name)


def model_configs(device: str) -> Dict[str, object]:
    """The benchmarked Detectron2 detectors' configs, ResNet-50-FPN, 80 classes, no weights."""

    def make(path: str):
        cfg = fcos_d2.setup_cfg(path, freeze=False)
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RESNETS.DEPTH = 50
        # FrozenBatchNorm everywhere in the ResNet, as when training from ImageNet or
        # COCO weights (Detectron2's default; torchvision's FCOS with weights); its
        # statistics come from calibrate_frozen_batchnorm.
        cfg.MODEL.RESNETS.NORM = "FrozenBN"
        return cfg

    def fcos(memory_format: str = "auto", fold_bn: bool = True):
        # The same network with or without fcos_d2's speed-ups; "auto" is the default:
        # per mode the faster format on this machine (fcos_d2/modeling/memory_format.py).
        cfg = make(os.path.join(ROOT, "configs/COCO-Detection/FCOS_R_50_1x.yaml"))
        cfg.MODEL.FCOS.MEMORY_FORMAT = memory_format
        cfg.MODEL.FCOS.FOLD_BN_AT_TEST = fold_bn
        cfg.MODEL.FCOS.FOLD_FROZEN_BN = fold_bn
        return cfg

    return {
        "FCOS": fcos(),
        PLAIN_FCOS: fcos("nchw", fold_bn=False),
        OPTIONAL_FCOS[0]: fcos("nhwc", fold_bn=False),
        OPTIONAL_FCOS[1]: fcos("nchw"),
        OPTIONAL_FCOS[2]: fcos("nhwc"),
        "FCOS-RPN Faster R-CNN": make(
            os.path.join(ROOT, "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml")
        ),
        "RetinaNet (D2)": make(d2_model_zoo_file("Base-RetinaNet.yaml")),
        "Faster R-CNN (D2)": make(d2_model_zoo_file("Base-RCNN-FPN.yaml")),
    }


def build_torchvision_fcos(device: str) -> nn.Module:
    """torchvision's FCOS with the backbone of the Detectron2 models here: ResNet-50-FPN
    (P3-P5 + P6/P7 from P5), random weights, FrozenBatchNorm throughout the ResNet, stem
    and first stage frozen, three trainable stages, 80 classes -- what
    ``fcos_resnet50_fpn`` builds when given weights.

    ``fcos_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=3)``
    is not this: without weights it makes every BatchNorm trainable and, with a warning,
    every stage trainable (5), so it is assembled from the same public parts here.
    """
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
        trainable_layers=3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256),
    )
    return TorchvisionDetector(TorchvisionFCOSModel(backbone, num_classes=80)).to(device)


class TorchvisionDetector(nn.Module):
    """Detectron2-format inputs in, for a torchvision detector.

    Images go in as the same pixels (0-255 -> 0-1 for torchvision's normalisation), and
    its transform's resize target is set to each batch's own size, so it resizes nothing
    (its interpolation at scale 1 copies the pixels). Returns torchvision's outputs: the
    loss dict in training, per image ``{"boxes", "scores", "labels"}`` at inference.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def torchvision_inputs(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Images (0-1) and, in training, targets; the transform set to keep the size."""
        images = [x["image"] / 255.0 for x in batched_inputs]
        height = max(im.shape[-2] for im in images)
        width = max(im.shape[-1] for im in images)
        self.model.transform.min_size = (min(height, width),)
        self.model.transform.max_size = max(height, width)
        if not self.training:
            return images, None
        targets = [
            {"boxes": x["instances"].gt_boxes.tensor, "labels": x["instances"].gt_classes}
            for x in batched_inputs
        ]
        return images, targets

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images, targets = self.torchvision_inputs(batched_inputs)
        return self.model(images, targets)


def build_models(names: List[str], device: str) -> Dict[str, nn.Module]:
    """``names`` -> the models in inference mode, each from torch seed 0."""
    configs = model_configs(device)
    calibration = random_images(2, 256, 320, device, with_boxes=False, seed=1)
    models = {}
    for name in names:
        torch.manual_seed(0)
        if name == TORCHVISION_FCOS:
            model = build_torchvision_fcos(device).eval()
            images = model.model.transform(model.torchvision_inputs(calibration)[0])[0]
            calibrate_frozen_batchnorm(model.model.backbone, images.tensors)
        else:
            model = build_model(configs[name]).eval()
            calibrate_frozen_batchnorm(model.backbone, model.preprocess_image(calibration).tensor)
        models[name] = model
    return models


@torch.no_grad()
def calibrate_frozen_batchnorm(backbone: nn.Module, images: torch.Tensor) -> int:
    """Give each FrozenBatchNorm of a randomly initialised ``backbone`` the mean and
    variance of its input on ``images``, layer after layer in one forward, as pretrained
    statistics would: every normalised map then has zero mean and unit variance, where
    identity statistics would let 50 random layers blow the activations up (and
    detectors' boxes overflow). Returns the number of norms calibrated."""

    def calibrate(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        scale = torch.rsqrt(var + norm.eps) * norm.weight
        return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    handles = []
    for module in backbone.modules():
        if isinstance(module, FrozenBatchNorm2d):  # torchvision's: called as a module
            handles.append(module.register_forward_hook(
                lambda norm, args, out: calibrate(norm, args[0])))
        elif isinstance(module, D2Conv2d) and isinstance(module.norm, D2FrozenBatchNorm2d):
            # Detectron2's: maybe never called (folded into the kernel), but fresh ones
            # are the identity, so the convolution's output is the norm's input
            assert module.activation is None, "calibration needs the norm's raw output"
            handles.append(module.register_forward_hook(
                lambda conv, args, out: calibrate(conv.norm, out)))
    backbone(images)
    for handle in handles:
        handle.remove()
    return len(handles)


class Timer:
    """Accumulates the wall time spent inside wrapped callables."""

    def __init__(self, device: str):
        self.device = device
        self.total = 0.0

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.total += time.perf_counter() - start
            return out

        return timed


@contextlib.contextmanager
def timing_fcos_parts(timer: Timer):
    """Route FCOS's loss computation and post-processing through ``timer``."""
    saved_losses = FCOSPipeline.losses_of
    saved_call = FCOSPostProcessor.__call__
    FCOSPipeline.losses_of = timer.wrap(saved_losses)
    FCOSPostProcessor.__call__ = timer.wrap(saved_call)
    try:
        yield
    finally:
        FCOSPipeline.losses_of = saved_losses
        FCOSPostProcessor.__call__ = saved_call


class TensorOutputs(torch.nn.Module):
    """Image tensor in, detection tensors out: what fvcore's tracer can follow."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([{"image": image}])[0]
        if "instances" not in out:  # torchvision
            return out["boxes"], out["scores"], out["labels"]
        inst = out["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def saturated_postprocess_time(model: torch.nn.Module, inputs, args) -> float:
    """Median seconds of FCOS's post-processing of ``inputs`` when every (location, class)
    score passes the test threshold, so that every level fills its pre-NMS top-k: the
    worst case, where a random-weight model (scores near the 0.01 prior) leaves nothing
    to post-process."""
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.inference_backbone()(images.tensor)
        predictions = model.predict(features, tuple(images.tensor.shape[-2:]))
    sizes = images.image_sizes
    gen = torch.Generator(device=predictions.logits[0].device).manual_seed(0)
    # probabilities 0.98-0.9997, above any usual threshold; distinct, so top-k has no ties
    logits = [4 + 4 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
              for x in predictions.logits]
    saturated = dataclasses.replace(predictions, logits=logits)
    seconds, _ = median_time(
        lambda: model.detect(saturated, sizes), args.repeats, args.warmup, args.device
    )
    return seconds


def random_images(n: int, height: int, width: int, device: str, with_boxes: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(n):
        item = {"image": (torch.rand(3, height, width, generator=gen) * 255).to(device)}
        if with_boxes:
            xy = torch.rand(8, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
            wh = torch.rand(8, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3]) + 16
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
            inst.gt_classes = torch.randint(0, 80, (8,), generator=gen)
            item["instances"] = inst
        inputs.append(item)
    return inputs


def median_time(step: Callable, repeats: int, warmup: int, device: str, timer: Timer = None):
    """Median seconds of ``step`` (and of the timer's share of it) after warm-up."""
    totals, parts = [], []
    for i in range(warmup + repeats):
        if timer is not None:
            timer.total = 0.0
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            totals.append(time.perf_counter() - start)
            parts.append(timer.total if timer is not None else 0.0)
    return statistics.median(totals), statistics.median(parts)


def reset_peak_memory(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (Linux)
            f.write("5")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def conv_peak_flops(device: str, amp: bool) -> Dict[str, float]:
    """fvcore-counted FLOP/s of a plain 256->256 3x3 convolution on a 1x256x128x128 map,
    in each memory format: forward ("NCHW", "NHWC") and forward + backward (input and
    weight gradients, 3x the forward's flops; "NCHW forward+backward", ...). The
    machine's reachable rate is the faster format."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(1, 256, 128, 128, device=device)
    flops = 256 * 256 * 9 * 128 * 128  # fvcore counts one multiply-add as one flop
    rates = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        conv_f, x_f = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=amp):
            seconds, _ = median_time(lambda: conv_f(x_f), repeats=5, warmup=2, device=device)
        rates[name] = flops / seconds
    for name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        conv_f = conv.to(memory_format=fmt)
        x_f = x.contiguous(memory_format=fmt).requires_grad_()

        def forward_backward():
            with torch.autocast(device.split(":")[0], enabled=amp):
                out = conv_f(x_f)
            out.backward(torch.ones_like(out))

        seconds, _ = median_time(forward_backward, repeats=5, warmup=2, device=device)
        rates[f"{name} forward+backward"] = 3 * flops / seconds
    return rates


def training_step_flops(run) -> float:
    """fvcore-convention flops (multiply-add = 1) of one training step, forward and
    backward, as counted by ``torch.utils.flop_counter`` (which counts 2 per
    multiply-add; convolutions, matmuls and their gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, EventStorage():
        run.step()
    return counter.get_total_flops() / 2


def machine_description(device: str, amp: bool) -> str:
    """One line naming what the timings were measured on."""
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()}"
    else:
        where = (
            f"CPU {cpu_description()}; PyTorch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; {torch.get_num_threads()} threads"
        )
    return f"device: {where}; amp: {amp}; {versions}"


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def bench_inference(models: Dict[str, torch.nn.Module], args) -> Dict[str, Dict[str, float]]:
    """Batch-1 inference latency of every model at every size, and FLOPs.

    The models take turns, one forward each per round, so that a slow spell of a noisy
    machine hits all of them alike instead of the one that happened to run then.
    """
    device = args.device
    rows = {name: {} for name in models}
    timer = Timer(device)
    for h, w in args.infer_sizes:
        inputs = random_images(1, h, w, device, with_boxes=False)
        times = {name: [] for name in models}
        posts = {name: [] for name in models}
        with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=args.amp):
            with timing_fcos_parts(timer):
                for name, model in models.items():
                    log(f"  inference {h}x{w}: warm-up of {name}")
                    for _ in range(args.warmup):
                        model(inputs)
                for r in range(args.repeats):
                    log(f"  inference {h}x{w}: round {r + 1}/{args.repeats}")
                    for name, model in models.items():
                        total, post = median_time(lambda: model(inputs), 1, 0, device, timer)
                        times[name].append(total)
                        posts[name].append(post)
        for name in models:
            rows[name][f"infer_{h}x{w}_ms"] = statistics.median(times[name]) * 1000
            rows[name][f"post_{h}x{w}_ms"] = statistics.median(posts[name]) * 1000
        if "FCOS" in models:
            log(f"  FCOS post-processing at {h}x{w}, every score passing")
            seconds = saturated_postprocess_time(models["FCOS"], inputs, args)
            rows["FCOS"][f"post_full_{h}x{w}_ms"] = seconds * 1000

    h, w = args.infer_sizes[0]
    image = random_images(1, h, w, device, False)[0]["image"]
    for name, model in models.items():
        log(f"  FLOPs of {name} at {h}x{w}")
        with torch.no_grad():
            flops = FlopCountAnalysis(TensorOutputs(model), (image,))
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            rows[name]["gflops"] = flops.total() / 1e9
        rows[name]["gflops_per_s"] = rows[name]["gflops"] / (rows[name][f"infer_{h}x{w}_ms"] / 1000)
    return rows


class TrainingRun:
    """One model set up for training steps: SGD, fixed random inputs with boxes."""

    def __init__(self, model: nn.Module, args):
        self.model = model.train()
        self.amp, self.device = args.amp, args.device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        th, tw = args.train_size
        self.inputs = random_images(args.train_batch, th, tw, args.device, with_boxes=True)

    def step(self):
        """Forward + backward + SGD step."""
        with torch.autocast(self.device.split(":")[0], enabled=self.amp):
            losses = self.model(self.inputs)
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        self.optimizer.step()


def training_memory_and_flops(name: str, args) -> Dict[str, float]:
    """Peak memory (MB) of a training step of ``name``, the only model in memory, after
    a first step has allocated the optimizer state; and the step's GFLOPs."""
    run = TrainingRun(build_models([name], args.device)[name], args)
    with EventStorage():
        run.step()
        reset_peak_memory(args.device)
        run.step()
    peak = peak_memory_mb(args.device)
    return {"train_peak_mb": peak, "train_gflops": training_step_flops(run) / 1e9}


def bench_training(names: List[str], args) -> Dict[str, Dict[str, float]]:
    """Training step time (forward + backward + SGD) of every model, FCOS's loss part,
    and each step's peak memory.

    The models take turns, one step each per round, as for inference; peak memory is
    measured before, one model in memory at a time.
    """
    rows = {}
    for name in names:
        log(f"  training peak memory and flops: {name}")
        rows[name] = training_memory_and_flops(name, args)
    models = build_models(names, args.device)
    runs = {name: TrainingRun(model, args) for name, model in models.items()}
    timer = Timer(args.device)
    times = {name: [] for name in names}
    losses_times = {name: [] for name in names}
    th, tw = args.train_size
    rounds = args.warmup + args.repeats
    with EventStorage(), timing_fcos_parts(timer):
        for r in range(rounds):
            warm_up = " (warm-up)" if r < args.warmup else ""
            log(f"  training step {args.train_batch}x{th}x{tw}: round {r + 1}/{rounds}{warm_up}")
            for name, run in runs.items():
                total, losses_time = median_time(run.step, 1, 0, args.device, timer)
                if r >= args.warmup:
                    times[name].append(total)
                    losses_times[name].append(losses_time)
    for name in names:
        seconds = statistics.median(times[name])
        rows[name]["train_ms"] = seconds * 1000
        rows[name]["targets_losses_ms"] = statistics.median(losses_times[name]) * 1000
        rows[name]["train_gflops_per_s"] = rows[name]["train_gflops"] / seconds
    return rows


OP_GROUPS = (  # (group, substrings of profiler op names), first match wins
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d")),
    ("GroupNorm forward + backward (head towers)", ("group_norm",)),
    ("BatchNorm forward + backward (backbone)", ("batch_norm",)),
    ("ReLU forward + backward", ("relu", "threshold_backward")),
    ("FPN top-down upsampling", ("upsample",)),
    ("max-pool (stem)", ("max_pool",)),
    ("SGD step", ("_foreach", "sgd")),
    ("memory-format / layout copies", ("copy_", "contiguous", "clone", "to_dense", "reorder")),
)


def profile_training(name: str, args) -> str:
    """torch.profiler of ``--repeats`` training steps of ``name`` after ``--warmup``: self
    time per op group and the top ops, forward and backward together."""
    from torch.profiler import ProfilerActivity, profile

    run = TrainingRun(build_models([name], args.device)[name], args)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
    )
    with EventStorage():
        for _ in range(max(args.warmup, 1)):
            run.step()
        with profile(activities=activities) as prof:
            for _ in range(args.repeats):
                run.step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: Dict[str, float] = {}
    for event in events:
        key = event.key.lower()
        group = next((g for g, subs in OP_GROUPS if any(s in key for s in subs)), "other")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total
    lines = [f"profile of {name}, {args.repeats} training steps: self CPU time by op group",
             "| op group | ms per step | share |", "|---|---|---|"]
    for group, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {us / 1000 / args.repeats:.1f} | {100 * us / total:.1f}% |")
    lines += ["", "| op | calls per step | ms per step | share |", "|---|---|---|---|"]
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]:
        lines.append(
            f"| {event.key} | {event.count / args.repeats:.0f} | "
            f"{event.self_cpu_time_total / 1000 / args.repeats:.1f} | "
            f"{100 * event.self_cpu_time_total / total:.1f}% |"
        )
    return "\n".join(lines)


def format_table(
    rows: Dict[str, Dict[str, float]], args, conv_rates: Dict[str, float]
) -> str:
    sizes = [f"{h}x{w}" for h, w in args.infer_sizes]
    train_cols = [] if args.skip_training else ["train_ms", "train_peak_mb"]
    train_flop_cols = [] if args.skip_training else ["train_gflops", "train_gflops_per_s"]
    cols = [f"infer_{s}_ms" for s in sizes] + train_cols + ["gflops", "gflops_per_s"]
    cols += train_flop_cols
    head = "| model | " + " | ".join(cols) + " | FCOS parts |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, row in rows.items():
        parts = []
        if name == "FCOS":
            if train_cols:
                parts.append(
                    f"targets+losses {row['targets_losses_ms']:.1f} ms "
                    f"({100 * row['targets_losses_ms'] / row['train_ms']:.1f}% of step)"
                )
            parts += [
                f"post-proc {s} {row[f'post_{s}_ms']:.1f} ms "
                f"({100 * row[f'post_{s}_ms'] / row[f'infer_{s}_ms']:.1f}%), "
                f"every score passing {row[f'post_full_{s}_ms']:.1f} ms "
                f"({100 * row[f'post_full_{s}_ms'] / row[f'infer_{s}_ms']:.1f}%)"
                for s in sizes
            ]
        values = " | ".join(f"{row[c]:.1f}" for c in cols)
        lines.append(f"| {name} | {values} | {'; '.join(parts)} |")
    lines.append("")
    lines.append(
        "Plain 3x3 conv (256->256, 128x128) reaches "
        + ", ".join(f"{rate / 1e9:.1f} GFLOP/s in {fmt}" for fmt, rate in conv_rates.items())
        + " (fvcore convention: one multiply-add = one flop)."
    )
    h, w = args.infer_sizes[0]
    note = f"gflops: inference at {h}x{w} (fvcore); gflops_per_s: gflops / infer_{h}x{w}_ms"
    if train_flop_cols:
        th, tw = args.train_size
        note += (
            f"; train_gflops: one training step, batch {args.train_batch} at {th}x{tw}, "
            "forward + backward (torch.utils.flop_counter, halved to the same convention)"
        )
    lines.append(note + ".")
    lines.append("")
    ratio_cols = [f"infer_{s}_ms" for s in sizes] + train_cols
    lines.append("| ratio | " + " | ".join(ratio_cols) + " |")
    lines.append("|" + "---|" * (len(ratio_cols) + 1))
    for name in rows:
        for base in BASELINES:
            if name in BASELINES or base not in rows:
                continue
            vals = " | ".join(f"{rows[name][c] / rows[base][c]:.2f}" for c in ratio_cols)
            lines.append(f"| {name} / {base} | {vals} |")
    return "\n".join(lines)


def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: List[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    parser.add_argument(
        "--infer-sizes", type=parse_size, nargs="+", default=[(800, 1216), (512, 640)]
    )
    parser.add_argument("--train-size", type=parse_size, default=(512, 640))
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--models", nargs="+", default=None, choices=MODELS,
        help="which models (default: all but the FCOS variants with one speed-up or NHWC forced)",
    )
    parser.add_argument("--skip-training", action="store_true", help="inference only")
    parser.add_argument(
        "--profile-training", metavar="MODEL", choices=MODELS,
        help="only profile this model's training step (torch.profiler, by op)",
    )
    args = parser.parse_args(argv)
    if args.profile_training:
        log(f"profiling {args.profile_training}")
        text = profile_training(args.profile_training, args)
        print(machine_description(args.device, args.amp))
        print(f"1-minute load average: {os.getloadavg()[0]:.2f}")
        print(text)
        return

    names = args.models or [name for name in MODELS if name not in OPTIONAL_FCOS]
    load_before = os.getloadavg()
    models = build_models(names, args.device)
    log(f"[1/2] inference, {len(names)} models in turn")
    rows = bench_inference(models, args)
    del models  # one model at a time in memory for the training steps' peak memory
    if not args.skip_training:
        log(f"[2/2] training steps, {len(names)} models in turn")
        for name, row in bench_training(names, args).items():
            rows[name].update(row)
            log(f"  [{name}] " + ", ".join(f"{k}={v:.1f}" for k, v in rows[name].items()))
    log("plain convolution rate")
    conv_rates = conv_peak_flops(args.device, args.amp)
    print(machine_description(args.device, args.amp))
    print(
        "1-minute load average at start / end: "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (other processes share the CPUs)"
    )
    print(format_table(rows, args, conv_rates))


if __name__ == "__main__":
    main()
