#!/usr/bin/env python
"""Speed of fcos_d2's FCOS against torchvision's FCOS and Detectron2's own RetinaNet and
Faster R-CNN, in float32 and under autocast, in one run.

    python -m benchmarks.benchmark --output results.json      # CPU: fp32 and bfloat16
    python -m benchmarks.benchmark --precisions fp32           # float32 only
    python -m benchmarks.benchmark --device cuda               # GPU: fp32 and float16
    python -m benchmarks.benchmark --device cuda --amp-dtype bfloat16
    python -m benchmarks.benchmark --skip-training --models FCOS "FCOS (NHWC, BN not folded)" \\
        "FCOS (NCHW, BN folded)" "FCOS (NCHW, BN not folded)"   # each speed-up alone
    python -m benchmarks.benchmark --profile-training FCOS --repeats 3  # where a step goes
    python -m benchmarks.report results.json                   # the tables again, from JSON

All detectors use a ResNet-50-FPN with random weights and see the same inputs
(``benchmarks/models.py``). FCOS runs as configured by default and as the plain network
(NCHW memory format, BatchNorm not folded): the same network, run the way Detectron2 runs
its own models. Every model runs at each ``--precisions``: "fp32", and "amp" under autocast
to ``--amp-dtype`` (default bfloat16 on CPUs, float16 on CUDA) -- fcos_d2's FCOS through
its own ``TEST.AMP`` / ``SOLVER.AMP`` keys, the others inside ``torch.autocast``.

Measured per model and precision: inference latency (batch 1) at each ``--infer-sizes``;
training step time (forward + backward + SGD step, batch ``--train-batch`` at
``--train-size``), its peak memory and flops; for FCOS the time inside target assignment +
losses and post-processing (``benchmarks/timing.py``); fvcore FLOPs and achieved rates,
next to what a plain 3x3 convolution reaches on this device. The results (machine, load
average, settings, one row per model and precision) go to ``--output`` as JSON, the
markdown tables (``benchmarks/report.py``) to stdout, progress to stderr.
"""
import argparse
import json
import os
from typing import Any, Dict, List

import torch

from .models import (
    DEFAULT_MODELS,
    MODELS,
    PRECISIONS,
    Variant,
    amp_by_config,
    build_models,
    default_amp_dtype,
    variants,
)
from .profiling import profile_training
from .report import format_tables, machine_info, machine_line
from .timing import bench_inference, bench_training, conv_peak_flops, log


def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument(
        "--amp-dtype", choices=("bfloat16", "float16"), default=None,
        help="the autocast dtype of 'amp' (default: bfloat16 on CPU, float16 on CUDA)",
    )
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
    parser.add_argument("--output", default="", help="write the results here (JSON)")
    parser.add_argument(
        "--profile-training", metavar="MODEL", choices=MODELS,
        help="only profile this model's training step (torch.profiler, by op), at the "
             "first of --precisions",
    )
    args = parser.parse_args(argv)
    dtype = args.amp_dtype or str(default_amp_dtype(args.device)).replace("torch.", "")
    args.amp_dtype = getattr(torch, dtype)
    return args


def result_row(variant: Variant, row: Dict[str, float]) -> Dict[str, Any]:
    """One JSON row: the model, its precision, how autocast reached it, the timings."""
    amp_by = None
    if variant.dtype is not None:
        amp_by = "config" if amp_by_config(variant.model) else "torch.autocast"
    autocast = "float32" if variant.dtype is None else str(variant.dtype).replace("torch.", "")
    return {"model": variant.model, "precision": variant.precision, "autocast": autocast,
            "amp_by": amp_by, **row}


def run(args) -> Dict[str, Any]:
    """Every chosen model at every precision: inference, then training steps."""
    chosen = variants(args.models or list(DEFAULT_MODELS), args.precisions, args.amp_dtype)
    load_start = os.getloadavg()[0]
    log(f"[1/3] inference, {len(chosen)} models x precisions in turn")
    rows = bench_inference(build_models(chosen, args.device), args)
    if not args.skip_training:  # one model at a time in memory for the peak memory first
        log(f"[2/3] training steps, {len(chosen)} models x precisions in turn")
        for variant, row in bench_training(chosen, args).items():
            rows[variant].update(row)
            measured = ", ".join(f"{k}={v:.1f}" for k, v in rows[variant].items())
            log(f"  [{variant.label}] {measured}")
    log("[3/3] plain convolution rate")
    conv_rates = {
        p: conv_peak_flops(args.device, args.amp_dtype if p == "amp" else None)
        for p in args.precisions
    }
    return {
        "machine": machine_info(args.device),
        "load_average": [load_start, os.getloadavg()[0]],
        "settings": {
            "infer_sizes": [f"{h}x{w}" for h, w in args.infer_sizes],
            "train_size": "{}x{}".format(*args.train_size),
            "train_batch": args.train_batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "amp_dtype": str(args.amp_dtype).replace("torch.", ""),
            "training": not args.skip_training,
        },
        "rows": [result_row(variant, row) for variant, row in rows.items()],
        "conv_rates": conv_rates,
    }


def main(argv: List[str] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.profile_training:
        precision = args.precisions[0]
        variant = Variant(args.profile_training, precision,
                          args.amp_dtype if precision == "amp" else None)
        log(f"profiling {variant.label}")
        text = profile_training(variant, args)
        print(machine_line(machine_info(args.device)))
        print(f"1-minute load average: {os.getloadavg()[0]:.2f}")
        print(text)
        return {}
    results = run(args)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
        log(f"results: {args.output} (tables again: python -m benchmarks.report {args.output})")
    print(format_tables(results))
    return results


if __name__ == "__main__":
    main()
