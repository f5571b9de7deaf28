#!/usr/bin/env python
"""Seconds per training iteration of the demo recipe, float32 against mixed precision.

    python -m benchmarks.demo_recipe --output demo_speed.json
    python -m benchmarks.demo_recipe --iters 60 --chunk 10 --amp-dtype bfloat16

Two trainers of ``--config-file`` (default: the demo recipe), one as configured in float32
(``SOLVER.AMP.ENABLED False``), one with ``SOLVER.AMP.ENABLED True`` and
``SOLVER.AMP.PRECISION`` = ``--amp-dtype`` (default "auto": bfloat16 on CPUs, float16 on
CUDA), take turns in chunks of ``--chunk`` iterations (data loading, forward, backward,
optimizer step: what Detectron2 logs as ``time``), after ``--warmup`` iterations each.
Prints the median seconds per iteration of each and their ratio (markdown), writes them with
the machine and load average to ``--output`` (JSON), progress to stderr.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import fcos_d2
from detectron2.utils.events import EventStorage

from fcos_d2.engine import Trainer

from .report import machine_info, machine_line

DEMO = "configs/FCOS-Demo/fcos_R_18_demo.yaml"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_trainer(config_file: str, amp: bool, precision: str, opts: List[str]) -> Trainer:
    overrides = ["SOLVER.AMP.ENABLED", str(amp), "SOLVER.AMP.PRECISION", precision,
                 "OUTPUT_DIR", os.path.join("output", "demo_recipe_speed")]
    cfg = fcos_d2.setup_cfg(config_file, list(opts) + overrides)
    return Trainer(cfg)


def iteration_seconds(trainer: Trainer, storage: EventStorage, n: int) -> List[float]:
    """Wall seconds of each of ``n`` training iterations (no hooks: no checkpoint, no
    evaluation, no LR schedule step)."""
    times = []
    for _ in range(n):
        storage.iter = trainer.iter
        start = time.perf_counter()
        trainer.run_step()
        times.append(time.perf_counter() - start)
        trainer.iter += 1
    return times


def measure(args) -> Dict[str, object]:
    trainers = {
        "fp32": build_trainer(args.config_file, False, "auto", args.opts),
        "amp": build_trainer(args.config_file, True, args.amp_dtype, args.opts),
    }
    times = {name: [] for name in trainers}
    storages = {name: EventStorage(0) for name in trainers}
    load_start = os.getloadavg()[0]
    for name, trainer in trainers.items():
        trainer.iter = 0
        log(f"warm-up {name}: {args.warmup} iterations")
        with storages[name] as storage:
            iteration_seconds(trainer, storage, args.warmup)
    for start in range(0, args.iters, args.chunk):
        n = min(args.chunk, args.iters - start)
        for name, trainer in trainers.items():
            log(f"{name}: iterations {start + 1}-{start + n} of {args.iters}")
            with storages[name] as storage:
                times[name] += iteration_seconds(trainer, storage, n)
    s_per_it = {name: statistics.median(t) for name, t in times.items()}
    amp_dtype = str(trainers["amp"].model.precision[0]).replace("torch.", "")
    return {
        "machine": machine_info(trainers["fp32"].cfg.MODEL.DEVICE),
        "load_average": [load_start, os.getloadavg()[0]],
        "config_file": args.config_file,
        "iterations": args.iters,
        "amp_dtype": amp_dtype,
        "s_per_it": s_per_it,
        "ratio_amp_fp32": s_per_it["amp"] / s_per_it["fp32"],
    }


def format_result(result: Dict[str, object]) -> str:
    s = result["s_per_it"]
    load = result["load_average"]
    return "\n".join([
        f"Machine: {machine_line(result['machine'])}. 1-minute load average at start / end: "
        f"{load[0]:.2f} / {load[1]:.2f}.",
        "",
        f"| {result['config_file']} | s/it (median of {result['iterations']}) |",
        "|---|---|",
        f"| float32 | {s['fp32']:.3f} |",
        f"| {result['amp_dtype']} autocast (SOLVER.AMP) | {s['amp']:.3f} |",
        f"| ratio | {result['ratio_amp_fp32']:.2f} |",
    ])


def main(argv: List[str] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=DEMO)
    parser.add_argument("--iters", type=int, default=40, help="timed iterations per precision")
    parser.add_argument("--chunk", type=int, default=10, help="iterations per turn")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"))
    parser.add_argument("--output", default="", help="write the result here (JSON)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    result = measure(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    print(format_result(result))
    return result


if __name__ == "__main__":
    main()
