#!/usr/bin/env python
"""Per-backbone table of the FCOS demo models: box AP, parameters and CPU latency.

    python benchmarks/backbones.py --train     # train the missing demo models, then measure
    python benchmarks/backbones.py             # measure the models already trained

Every ``configs/FCOS-Demo/fcos_*_demo.yaml`` (or ``--configs``) is trained with
``train_net.py`` into ``--output-root/<config name>`` when ``--train`` is given and its
``model_final.pth`` is missing; one model at a time, so the timings do not compete.
Then, per model: box AP / AP50 on ``fcos_demo_val``, parameter count, and inference
latency (batch 1, the first validation image at the test size, median of ``--repeats``
after ``--warmup``). The table goes to stdout, progress to stderr.
"""
import argparse
import glob
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch

import fcos_d2  # registers modules and the demo datasets
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import inference_on_dataset

from fcos_d2.engine import Trainer
from fcos_d2.modeling.memory_format import cpu_description

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEMO_ORDER = ("R_18", "R_34", "R_50", "R_101", "RegNetX_400MF", "DarkNet19", "MobileNetV2")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def demo_configs() -> List[str]:
    """The demo configs, ResNets by depth first."""
    paths = glob.glob(os.path.join(ROOT, "configs", "FCOS-Demo", "fcos_*_demo.yaml"))

    def rank(path):
        name = os.path.basename(path)[len("fcos_") : -len("_demo.yaml")]
        return DEMO_ORDER.index(name) if name in DEMO_ORDER else len(DEMO_ORDER)

    return sorted(paths, key=lambda p: (rank(p), p))


def config_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def load_cfg(path: str, output_dir: str):
    cfg = fcos_d2.setup_cfg(path, freeze=False)
    cfg.OUTPUT_DIR = output_dir
    cfg.MODEL.WEIGHTS = os.path.join(output_dir, "model_final.pth")
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def train(path: str, output_dir: str, opts: List[str] = ()) -> None:
    """Train one demo model with train_net.py, config ``opts`` last (its log goes to the
    output folder)."""
    log_path = os.path.join(output_dir, "train_stdout.log")
    os.makedirs(output_dir, exist_ok=True)
    command = [
        sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", path,
        "OUTPUT_DIR", output_dir, "TEST.EVAL_PERIOD", "0", *opts,
    ]
    log(f"  training: {' '.join(command)}  (log: {log_path})")
    with open(log_path, "w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=ROOT)


def latency_ms(model: torch.nn.Module, cfg, repeats: int, warmup: int) -> float:
    """Median batch-1 inference time on the first validation image, test-size resized."""
    inputs = [Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0]).dataset[0]]
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(inputs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(path: str, output_dir: str, args) -> Dict[str, float]:
    cfg = load_cfg(path, output_dir)
    if not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(
            f"{cfg.MODEL.WEIGHTS} not found: train it first (add --train)"
        )
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    row = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    log(f"  latency ({args.repeats} repeats after {args.warmup} warm-up)")
    row["latency_ms"] = latency_ms(model, cfg, args.repeats, args.warmup)
    log(f"  evaluating on {cfg.DATASETS.TEST[0]}")
    dataset = cfg.DATASETS.TEST[0]
    evaluator = Trainer.build_evaluator(cfg, dataset, os.path.join(output_dir, "inference"))
    bbox = inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)["bbox"]
    row["ap"], row["ap50"] = bbox["AP"], bbox["AP50"]
    return row


def format_table(rows: Dict[str, Dict[str, float]]) -> str:
    lines = [
        "| demo config | box AP | AP50 | params (M) | CPU latency (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| `{name}.yaml` | {r['ap']:.1f} | {r['ap50']:.1f} | {r['params_m']:.2f} "
            f"| {r['latency_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: List[str] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, help="default: every demo config")
    parser.add_argument("--output-root", default=os.path.join(ROOT, "output", "backbones"))
    parser.add_argument("--train", action="store_true", help="train models not trained yet")
    parser.add_argument(
        "--train-opts", nargs="+", default=[], metavar="KEY VALUE",
        help="config overrides for the trainings, e.g. the earlier 400-iteration 256-px "
        "schedule: INPUT.MIN_SIZE_TRAIN '(256,)' INPUT.MAX_SIZE_TRAIN 256 "
        "SOLVER.MAX_ITER 400 SOLVER.STEPS '(300,370)'",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    paths = args.configs or demo_configs()
    rows = {}
    for i, path in enumerate(paths, 1):
        name = config_name(path)
        output_dir = os.path.join(args.output_root, name)
        log(f"[{i}/{len(paths)}] {name}")
        if args.train and not os.path.isfile(os.path.join(output_dir, "model_final.pth")):
            train(path, output_dir, args.train_opts)
        rows[name] = measure(path, output_dir, args)
        log(f"  {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in rows[name].items()))
    print(
        f"CPU {cpu_description()}; {torch.get_num_threads()} threads; torch {torch.__version__}"
    )
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
