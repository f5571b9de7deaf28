#!/usr/bin/env python
"""Speed of FCOS against Detectron2's own RetinaNet and Faster R-CNN, in one run.

All detectors use a ResNet-50-FPN with random weights and see the same inputs. FCOS runs
twice: as configured by default, and without its two inference speed-ups (NHWC memory
format, BatchNorm folded at test) -- the same network, run the way Detectron2 runs its
own models:

    python benchmarks/benchmark.py                      # CPU, fp32
    python benchmarks/benchmark.py --amp                # CPU, bfloat16 autocast
    python benchmarks/benchmark.py --device cuda --amp  # GPU, mixed precision
    python benchmarks/benchmark.py --skip-training --models FCOS "FCOS (NHWC, BN not folded)" \
        "FCOS (NCHW, BN folded)" "FCOS (NCHW, BN not folded)"   # each speed-up alone

Measured per model: inference latency (batch 1, median after warm-up; the models take
turns, one forward each per round, so a noisy spell hits all alike) at each
``--infer-sizes``; training step time (forward + backward + SGD step, batch
``--train-batch`` at ``--train-size``) and its peak memory; for FCOS the time inside
target assignment + losses (training) and post-processing (inference); fvcore FLOPs and
the achieved rate, next to what a plain large 3x3 convolution reaches on this device.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fcos_d2  # noqa: E402,F401
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from fvcore.nn import FlopCountAnalysis  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from fcos_d2 import add_fcos_config  # noqa: E402
from fcos_d2.modeling import outputs as fcos_outputs  # noqa: E402
from fcos_d2.modeling.inference import FCOSPostProcessor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = ("RetinaNet (D2)", "Faster R-CNN (D2)")
PLAIN_FCOS = "FCOS (NCHW, BN not folded)"
ONE_SPEEDUP_FCOS = ("FCOS (NHWC, BN not folded)", "FCOS (NCHW, BN folded)")  # not by default
MODELS = ("FCOS", PLAIN_FCOS, *ONE_SPEEDUP_FCOS, "FCOS-RPN Faster R-CNN", *BASELINES)


def d2_model_zoo_file(name: str) -> str:
    import detectron2.model_zoo

    return os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs", name)


def model_configs(device: str) -> Dict[str, object]:
    """The benchmarked detectors' configs, ResNet-50-FPN, 80 classes, no weights."""

    def make(path: str):
        cfg = get_cfg()
        add_fcos_config(cfg)
        cfg.merge_from_file(path)
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RESNETS.DEPTH = 50
        # Random weights: frozen BatchNorm with identity statistics lets 50 random layers
        # blow the activations up (Faster R-CNN's proposals then overflow), so all
        # models use trainable BatchNorm -- the same cost for each.
        cfg.MODEL.RESNETS.NORM = "BN"
        return cfg

    def fcos(channels_last: bool = True, fold_bn: bool = True):
        # The same network with or without fcos_d2's two inference speed-ups.
        cfg = make(os.path.join(ROOT, "configs/COCO-Detection/FCOS_R_50_1x.yaml"))
        cfg.MODEL.FCOS.CHANNELS_LAST = channels_last
        cfg.MODEL.FCOS.FOLD_BN_AT_TEST = fold_bn
        return cfg

    return {
        "FCOS": fcos(),
        PLAIN_FCOS: fcos(channels_last=False, fold_bn=False),
        ONE_SPEEDUP_FCOS[0]: fcos(fold_bn=False),
        ONE_SPEEDUP_FCOS[1]: fcos(channels_last=False),
        "FCOS-RPN Faster R-CNN": make(
            os.path.join(ROOT, "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml")
        ),
        "RetinaNet (D2)": make(d2_model_zoo_file("Base-RetinaNet.yaml")),
        "Faster R-CNN (D2)": make(d2_model_zoo_file("Base-RCNN-FPN.yaml")),
    }


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
    import fcos_d2.modeling.meta_arch as meta_arch

    saved_losses = meta_arch.fcos_losses
    saved_call = FCOSPostProcessor.__call__
    meta_arch.fcos_losses = timer.wrap(fcos_outputs.fcos_losses)
    FCOSPostProcessor.__call__ = timer.wrap(saved_call)
    try:
        yield
    finally:
        meta_arch.fcos_losses = saved_losses
        FCOSPostProcessor.__call__ = saved_call


class TensorOutputs(torch.nn.Module):
    """Image tensor in, detection tensors out: what fvcore's tracer can follow."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        inst = self.model([{"image": image}])[0]["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def saturated_postprocess_time(model: torch.nn.Module, inputs, args) -> float:
    """Median seconds of FCOS's post-processing of ``inputs`` when every (location, class)
    score passes the test threshold, so that every level fills its pre-NMS top-k: the
    worst case, where a random-weight model (scores near the 0.01 prior) leaves nothing
    to post-process."""
    captured = []
    original = FCOSPostProcessor.__call__

    def capture(post, *call_args):
        captured.append((post, call_args))
        return original(post, *call_args)

    FCOSPostProcessor.__call__ = capture
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        FCOSPostProcessor.__call__ = original
    post, (locations, strides, logits, box_dists, ctrness, sizes) = captured[0]
    gen = torch.Generator(device=logits[0].device).manual_seed(0)
    # probabilities 0.98-0.9997, above any usual threshold; distinct, so top-k has no ties
    logits = [4 + 4 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
              for x in logits]
    seconds, _ = median_time(
        lambda: post(locations, strides, logits, box_dists, ctrness, sizes),
        args.repeats, args.warmup, args.device,
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
    in each memory format ("NCHW", "NHWC"): the machine's reachable rate is the faster."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(1, 256, 128, 128, device=device)
    flops = 256 * 256 * 9 * 128 * 128  # fvcore counts one multiply-add as one flop
    rates = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        conv_f, x_f = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=amp):
            seconds, _ = median_time(lambda: conv_f(x_f), repeats=5, warmup=2, device=device)
        rates[name] = flops / seconds
    return rates


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


def bench_training(name: str, model: torch.nn.Module, args) -> Dict[str, float]:
    """Training step time (forward + backward + SGD), its peak memory, FCOS's loss part."""
    device = args.device
    timer = Timer(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    th, tw = args.train_size
    inputs = random_images(args.train_batch, th, tw, device, with_boxes=True)

    def train_step():
        with torch.autocast(device.split(":")[0], enabled=args.amp):
            losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    log(f"  [{name}] training step {args.train_batch}x{th}x{tw}")
    with EventStorage(), timing_fcos_parts(timer):
        train_step()  # allocate optimizer state before the peak-memory window
        reset_peak_memory(device)
        total, loss_time = median_time(train_step, args.repeats, args.warmup, device, timer)
    return {
        "train_ms": total * 1000,
        "train_peak_mb": peak_memory_mb(device),
        "targets_losses_ms": loss_time * 1000,
    }


def format_table(
    rows: Dict[str, Dict[str, float]], args, conv_rates: Dict[str, float]
) -> str:
    sizes = [f"{h}x{w}" for h, w in args.infer_sizes]
    train_cols = [] if args.skip_training else ["train_ms", "train_peak_mb"]
    cols = [f"infer_{s}_ms" for s in sizes] + train_cols + ["gflops", "gflops_per_s"]
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
    parser.add_argument("--infer-sizes", type=parse_size, nargs="+", default=[(800, 1216), (512, 640)])
    parser.add_argument("--train-size", type=parse_size, default=(512, 640))
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--models", nargs="+", default=None, choices=MODELS,
        help="which models (default: all but the two one-speed-up FCOS variants)",
    )
    parser.add_argument("--skip-training", action="store_true", help="inference only")
    args = parser.parse_args(argv)

    configs = model_configs(args.device)
    names = args.models or [name for name in configs if name not in ONE_SPEEDUP_FCOS]
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(configs[name]).eval()
    log(f"[1/2] inference, {len(names)} models in turn")
    rows = bench_inference(models, args)
    del models  # one model at a time in memory for the training steps' peak memory
    for i, name in enumerate([] if args.skip_training else names, 1):
        log(f"[2/2] training step {i}/{len(names)}: {name}")
        torch.manual_seed(0)
        rows[name].update(bench_training(name, build_model(configs[name]), args))
        log(f"  [{name}] " + ", ".join(f"{k}={v:.1f}" for k, v in rows[name].items()))
    log("plain convolution rate")
    conv_rates = conv_peak_flops(args.device, args.amp)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {device_name}; amp: {args.amp}; torch {torch.__version__}")
    print(format_table(rows, args, conv_rates))


if __name__ == "__main__":
    main()
