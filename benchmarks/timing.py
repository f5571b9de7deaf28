"""Timing the benchmarked models: inference latency, training steps, FCOS's parts, FLOPs and
peak memory.

The models take turns, one forward (or training step) each per round, so that a slow spell
of a shared machine hits all of them alike. FCOS's parts -- target assignment + losses in
training, post-processing at inference -- are the ``torch.profiler.record_function``
ranges that fcos_d2 opens around them (:data:`PART_RANGES`), read from the profiler in
separate rounds after the timed ones, so the timed rounds run without a profiler.
"""
import contextlib
import dataclasses
import functools
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from .models import TensorOutputs, Variant, build_models, precision_context, random_images

# part -> the record_function range fcos_d2 opens around it
PART_RANGES = {
    "targets_losses": "FCOSPipeline.losses_of",
    "post": "FCOSPostProcessor.__call__",
}
_STEP_RANGE = "benchmark step"  # one timed call, to attribute the parts to it


def log(msg: str) -> None:
    """A progress line (stderr, so that stdout is the table)."""
    print(msg, file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(step: Callable, repeats: int, warmup: int, device: str) -> float:
    """Median seconds of ``step`` after ``warmup`` calls."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def range_seconds(step: Callable, name: str, device: str, repeats: int = 1) -> List[float]:
    """Seconds spent inside the profiler range ``name`` during each of ``repeats`` calls of
    ``step`` (summed over its openings in that call; 0 when the step never opens it), in
    one profiling run. On CUDA this is the host time of the range, which waits for the
    GPU where the computation needs its results."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            with record_function(_STEP_RANGE):
                step()
                sync(device)
    events = prof.events()
    steps = [e.time_range for e in events if e.name == _STEP_RANGE]
    parts = [e for e in events if e.name == name]
    return [
        sum(p.cpu_time_total for p in parts if s.start <= p.time_range.start <= s.end) / 1e6
        for s in steps
    ]


def interleaved(steps: Dict[str, Callable], rounds: int, what: str) -> Dict[str, List[float]]:
    """Seconds of every step per round, the steps taking turns within each round."""
    times = {key: [] for key in steps}
    for r in range(rounds):
        log(f"  {what}: round {r + 1}/{rounds}")
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return times


def _forward(model: nn.Module, variant: Variant, inputs, device: str) -> Callable:
    def step():
        with torch.no_grad(), precision_context(variant, device):
            model(inputs)
        sync(device)

    return step


def bench_inference(models: Dict[Variant, nn.Module], args) -> Dict[Variant, Dict[str, float]]:
    """Batch-1 inference latency of every variant at every size (median of the rounds),
    FCOS's post-processing (profiled rounds), its worst case, and FLOPs."""
    rows = {variant: {} for variant in models}
    for h, w in args.infer_sizes:
        inputs = random_images(1, h, w, args.device, with_boxes=False)
        steps = {v: _forward(m, v, inputs, args.device) for v, m in models.items()}
        for variant, step in steps.items():
            log(f"  inference {h}x{w}: warm-up of {variant.label}")
            for _ in range(args.warmup):
                step()
        times = interleaved(steps, args.repeats, f"inference {h}x{w}")
        for variant in models:
            rows[variant][f"infer_{h}x{w}_ms"] = statistics.median(times[variant]) * 1000
        log(f"  inference {h}x{w}: post-processing, profiled")
        for variant, step in steps.items():
            post = range_seconds(step, PART_RANGES["post"], args.device, args.repeats)
            rows[variant][f"post_{h}x{w}_ms"] = statistics.median(post) * 1000
        for variant, model in models.items():
            if variant.model == "FCOS":
                log(f"  {variant.label} post-processing at {h}x{w}, every score passing")
                seconds = saturated_postprocess_time(model, inputs, args)
                rows[variant][f"post_full_{h}x{w}_ms"] = seconds * 1000
    add_inference_flops(models, rows, args)
    return rows


def add_inference_flops(models, rows, args) -> None:
    """fvcore GFLOPs at the first size (one count per model: the precision does not change
    it) and the rate each variant achieved."""
    h, w = args.infer_sizes[0]
    image = random_images(1, h, w, args.device, False)[0]["image"]
    counted: Dict[str, float] = {}
    for variant, model in models.items():
        if variant.model not in counted:
            log(f"  FLOPs of {variant.model} at {h}x{w}")
            with torch.no_grad():
                flops = FlopCountAnalysis(TensorOutputs(model), (image,))
                flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                counted[variant.model] = flops.total() / 1e9
        row = rows[variant]
        row["gflops"] = counted[variant.model]
        row["gflops_per_s"] = row["gflops"] / (row[f"infer_{h}x{w}_ms"] / 1000)


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
    return median_time(lambda: model.detect(saturated, sizes), args.repeats, args.warmup,
                       args.device)


class TrainingRun:
    """One variant set up for training steps: SGD, fixed random inputs with boxes, the
    forward under autocast for "amp" (as fcos_d2's and Detectron2's AMPTrainer run it),
    with a gradient scaler for float16."""

    def __init__(self, model: nn.Module, variant: Variant, args):
        self.model = model.train()
        self.variant, self.device = variant, args.device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.scaler = torch.amp.GradScaler(
            args.device.split(":")[0], enabled=variant.dtype == torch.float16
        )
        th, tw = args.train_size
        self.inputs = random_images(args.train_batch, th, tw, args.device, with_boxes=True)

    def autocast(self):
        if self.variant.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.variant.dtype)

    def step(self) -> None:
        """Forward + backward + SGD step."""
        with self.autocast():
            losses = self.model(self.inputs)
        self.optimizer.zero_grad()
        self.scaler.scale(sum(losses.values())).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        sync(self.device)


def reset_peak_memory(device: str) -> None:
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


def training_step_flops(run: TrainingRun) -> float:
    """fvcore-convention flops (multiply-add = 1) of one training step, forward and
    backward, as counted by ``torch.utils.flop_counter`` (which counts 2 per
    multiply-add; convolutions, matmuls and their gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, EventStorage():
        run.step()
    return counter.get_total_flops() / 2


def training_memory_and_flops(variant: Variant, args) -> Dict[str, float]:
    """Peak memory (MB) of a training step of ``variant``, the only model in memory,
    after a first step has allocated the optimizer state; and the step's GFLOPs."""
    run = TrainingRun(build_models([variant], args.device)[variant], variant, args)
    with EventStorage():
        run.step()
        reset_peak_memory(args.device)
        run.step()
    peak = peak_memory_mb(args.device)
    return {"train_peak_mb": peak, "train_gflops": training_step_flops(run) / 1e9}


def bench_training(chosen: List[Variant], args) -> Dict[Variant, Dict[str, float]]:
    """Training step time (forward + backward + SGD) of every variant, FCOS's targets and
    losses (profiled rounds), and each step's peak memory (measured first, one model in
    memory at a time)."""
    rows = {}
    for i, variant in enumerate(chosen, 1):
        log(f"  training peak memory and flops [{i}/{len(chosen)}]: {variant.label}")
        rows[variant] = training_memory_and_flops(variant, args)
    models = build_models(chosen, args.device)
    runs = {v: TrainingRun(model, v, args) for v, model in models.items()}
    th, tw = args.train_size
    what = f"training step {args.train_batch}x{th}x{tw}"
    with EventStorage():
        interleaved({v: run.step for v, run in runs.items()}, args.warmup, what + " warm-up")
        times = interleaved({v: run.step for v, run in runs.items()}, args.repeats, what)
        log(f"  {what}: targets and losses, profiled")
        for variant, run in runs.items():
            parts = range_seconds(
                run.step, PART_RANGES["targets_losses"], args.device, args.repeats
            )
            rows[variant]["targets_losses_ms"] = statistics.median(parts) * 1000
    for variant in chosen:
        seconds = statistics.median(times[variant])
        rows[variant]["train_ms"] = seconds * 1000
        rows[variant]["train_gflops_per_s"] = rows[variant]["train_gflops"] / seconds
    return rows


def conv_peak_flops(device: str, dtype=None) -> Dict[str, float]:
    """fvcore-counted FLOP/s of a plain 256->256 3x3 convolution on a 1x256x128x128 map
    (under autocast to ``dtype``, None: float32), in each memory format: forward ("NCHW",
    "NHWC") and forward + backward (input and weight gradients, 3x the forward's flops;
    "NCHW forward+backward", ...). The machine's reachable rate is the faster format."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(1, 256, 128, 128, device=device)
    flops = 256 * 256 * 9 * 128 * 128  # fvcore counts one multiply-add as one flop
    rates = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        step = functools.partial(_conv_step, conv.to(memory_format=fmt),
                                 x.contiguous(memory_format=fmt), dtype, backward=False)
        rates[name] = flops / median_time(step, repeats=5, warmup=2, device=device)
    for name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        step = functools.partial(_conv_step, conv.to(memory_format=fmt),
                                 x.contiguous(memory_format=fmt).requires_grad_(), dtype,
                                 backward=True)
        rates[f"{name} forward+backward"] = 3 * flops / median_time(step, 5, 2, device)
    return rates


def _conv_step(conv: nn.Module, x: torch.Tensor, dtype, backward: bool) -> None:
    """One forward (without autograd) or forward + backward of ``conv`` under autocast."""
    kind = x.device.type
    with torch.set_grad_enabled(backward), torch.autocast(
        kind, dtype=dtype, enabled=dtype is not None
    ):
        out = conv(x)
    if backward:
        out.backward(torch.ones_like(out))
