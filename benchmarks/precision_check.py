#!/usr/bin/env python
"""Mixed precision on this machine, every figure of docs/precision.md's goals in one run:

    python -m benchmarks.precision_check --output output/precision_check        # CPU
    python -m benchmarks.precision_check --device cuda --budget 480 --output DIR  # a GPU

Stages, each a separate process of the project's own commands (the first ones are what a
short GPU lease must not miss):

* ``tests`` (CUDA only): ``pytest -m cuda``, the tests that run on the GPU;
* ``demo``: the demo recipe trained in float32 (``train_net.py``, evaluated in float32),
  then the same weights evaluated under ``TEST.AMP`` in the device's reduced precision
  (bfloat16 on CPUs, float16 on CUDA);
* ``amp-demo``: the demo recipe trained under ``SOLVER.AMP`` (``--seeds``, two by default:
  reduced-precision runs differ), evaluated as configured;
* ``speed``: ``benchmarks.benchmark`` -- R-50 FCOS and torchvision's FCOS, float32 and
  under autocast (inference at 800x1216 and 512x640, training step at 512x640);
* ``recipe``: ``benchmarks.demo_recipe`` -- the demo recipe's seconds per iteration in
  float32 against SOLVER.AMP;
* ``suite`` (CUDA only): ``pytest -m "not slow"``, the test suite on the GPU machine.

A stage that would not end within ``--budget`` seconds (its own typical length is
``STAGE_SECONDS``) is skipped and named. Writes ``precision_check.json`` (figures),
``precision_check.md`` (the table against the goals, also printed),
``precision_check.log`` (every command's output), ``benchmark.json`` and
``demo_recipe.json`` into ``--output``, the training runs into ``--work-dir``; progress
to stderr.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "configs/FCOS-Demo/fcos_R_18_demo.yaml"
DEMO_AMP = "configs/FCOS-Demo/fcos_R_18_demo_amp.yaml"
REDUCED = {"cpu": "bfloat16", "cuda": "float16"}
PROGRESS = re.compile(r"eta: |copypaste: \d|round \d+/|passed|failed|Error")

#: A stage's length on the slower of the machines measured (2-core CPU), seconds: what
#: ``--budget`` is checked against before a stage starts (a GPU takes less).
STAGE_SECONDS = {"tests": 120, "demo": 300, "amp-demo": 240, "speed": 420, "recipe": 120,
                 "suite": 300}

#: (figure, goal, test, where it is a goal): the goals of docs/precision.md -- the speed
#: ratios on CPUs with AMX ("amx"), the cost of float16 training on CUDA ("cuda"), the
#: rest everywhere (None). Elsewhere a figure is measured and shown, not judged.
GOALS = (
    ("R-50 inference 800x1216, AMP / float32", "<= 0.40", lambda v: v <= 0.40, "amx"),
    ("R-50 train step 512x640, AMP / float32", "<= 0.45", lambda v: v <= 0.45, "amx"),
    ("demo recipe s/it, AMP / float32", "<= 0.75", lambda v: v <= 0.75, "amx"),
    ("demo AP, AMP evaluation - float32 evaluation", "|d| <= 0.3", lambda v: abs(v) <= 0.3,
     None),
    ("AMP-trained demo AP, lowest seed", ">= 50", lambda v: v >= 50, None),
    ("AMP-trained demo AP, lowest seed - float32-trained", ">= -1.0", lambda v: v >= -1,
     "cuda"),
)
WHERE = {"amx": "CPUs with AMX", "cuda": "CUDA"}


def log(msg: str) -> None:
    print(f"[precision_check] {msg}", file=sys.stderr, flush=True)


def bbox_ap(text: str) -> Optional[float]:
    """The last bbox AP that Detectron2's ``print_csv_format`` wrote into ``text`` (its
    "copypaste:" lines: the task, the metric names, the values); None without one."""
    found = None
    lines = [line.split("copypaste: ", 1)[1] for line in text.splitlines() if "copypaste: " in line]
    for task, names, values in zip(lines, lines[1:], lines[2:]):
        if task.strip() == "Task: bbox":
            found = float(values.split(",")[names.split(",").index("AP")])
    return found


def seconds_per_iteration(output_dir: str) -> Optional[float]:
    """The median "time" (seconds per iteration) in a training run's metrics.json."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        times = [row["time"] for row in map(json.loads, f) if "time" in row]
    return statistics.median(times) if times else None


class Check:
    """The stages' runner: commands as subprocesses into one log, figures into one dict,
    and the time budget."""

    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.work_dir = args.work_dir
        self.start = time.monotonic()
        self.figures: Dict[str, object] = {"device": args.device, "skipped": [], "failed": []}
        os.makedirs(args.output, exist_ok=True)
        self.log_path = os.path.join(args.output, "precision_check.log")
        open(self.log_path, "w").close()

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def fits(self, stage: str, run: str = "") -> bool:
        """Whether ``stage`` (its run ``run``, e.g. a seed) is to run: not skipped, and
        its typical length within the budget left; else it is named in "skipped"."""
        name = f"{stage} {run}".strip()
        if stage in self.args.skip:
            self.figures["skipped"].append(f"{name} (--skip)")
            return False
        if self.left() < STAGE_SECONDS[stage] * self.args.stage_scale:
            self.figures["skipped"].append(f"{name} ({self.left():.0f} s of the budget left)")
            log(f"skipping {name}: {self.left():.0f} s of the budget left")
            return False
        return True

    def run(self, what: str, cmd: List[str]) -> str:
        """Run ``cmd`` (in the repository root) within the budget left; its output. The
        output goes to the log as it comes, its progress lines (the trainer's ETA, the
        benchmarks' rounds) to stderr."""
        log(f"{what}: {' '.join(cmd)}  ({self.left():.0f} s of the budget left)")
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)  # fmt: skip
        lines: List[str] = []
        reader = threading.Thread(target=self._follow, args=(proc.stdout, lines, what))
        with open(self.log_path, "a") as f:
            f.write(f"\n===== {what}: {' '.join(cmd)}\n")
        reader.start()
        try:
            ok = proc.wait(timeout=max(self.left(), 1)) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            ok = False
            lines.append("[timed out: the budget is spent]\n")
        reader.join()
        log(f"{what}: {'done' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
        if not ok:
            self.figures["failed"].append(what)
        return "".join(lines)

    def _follow(self, stream, lines: List[str], what: str) -> None:
        with open(self.log_path, "a") as f:
            for line in stream:
                lines.append(line)
                f.write(line)
                f.flush()
                if PROGRESS.search(line):
                    log(f"  {what}: {line.strip()[-120:]}")

    def train(self, what: str, config: str, output_dir: str, opts: List[str]) -> Dict:
        """A demo training run (evaluated at its end) into a new ``output_dir``: AP, s/it,
        wall seconds."""
        shutil.rmtree(output_dir, ignore_errors=True)  # Detectron2 appends to metrics.json
        started = time.monotonic()
        text = self.run(what, [sys.executable, "train_net.py", "--config-file", config,
                               "MODEL.DEVICE", self.device, "OUTPUT_DIR", output_dir, *opts])
        return {"ap": bbox_ap(text), "s_per_it": seconds_per_iteration(output_dir),
                "wall_s": time.monotonic() - started}

    def evaluate(self, what: str, weights: str, output_dir: str, opts: List[str]) -> Dict:
        text = self.run(what, [sys.executable, "train_net.py", "--config-file", DEMO,
                               "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.DEVICE",
                               self.device, "OUTPUT_DIR", output_dir, *opts])
        return {"ap": bbox_ap(text)}


def run_stages(check: Check) -> Dict[str, object]:
    args, fig, out, runs = check.args, check.figures, check.args.output, check.work_dir
    reduced = REDUCED[check.device.split(":")[0]]
    if check.device.startswith("cuda") and check.fits("tests"):
        text = check.run("tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"])
        fig["tests"] = (text.strip().splitlines() or [""])[-1]
    workers = ["DATALOADER.NUM_WORKERS", str(args.workers)]
    if check.fits("demo"):
        fp32_dir = os.path.join(runs, "demo_fp32")
        fig["demo_fp32"] = check.train("demo, float32", DEMO, fp32_dir,
                                       [*workers, "TEST.AMP.ENABLED", "False"])
        weights = os.path.join(fp32_dir, "model_final.pth")
        fig["demo_fp32_amp_eval"] = check.evaluate(
            f"demo weights, {reduced} evaluation", weights, os.path.join(runs, "demo_amp_eval"),
            ["TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", reduced])
    for seed in args.seeds:
        if check.fits("amp-demo", f"seed {seed}"):
            fig[f"demo_amp_seed{seed}"] = check.train(
                f"demo under SOLVER.AMP, seed {seed}", DEMO_AMP,
                os.path.join(runs, f"demo_amp_seed{seed}"), [*workers, "SEED", str(seed)])
    if check.fits("speed"):
        path = os.path.join(out, "benchmark.json")
        check.run("speed", [sys.executable, "-m", "benchmarks.benchmark", "--device",
                            check.device, "--models", "FCOS", "FCOS (torchvision)",
                            "--output", path])  # fmt: skip
        if os.path.exists(path):
            with open(path) as f:
                fig["benchmark"] = json.load(f)
    if check.fits("recipe"):
        path = os.path.join(out, "demo_recipe.json")
        check.run("recipe", [sys.executable, "-m", "benchmarks.demo_recipe", "--output", path,
                             "MODEL.DEVICE", check.device, *workers])
        if os.path.exists(path):
            with open(path) as f:
                fig["recipe"] = json.load(f)
    if check.device.startswith("cuda") and check.fits("suite"):
        text = check.run("suite", [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "tests"])
        fig["suite"] = (text.strip().splitlines() or [""])[-1]
    return fig


def goal_values(fig: Dict[str, object]) -> Dict[str, float]:
    """The figures that GOALS judge, from what the stages measured."""
    values = {}
    rows = {(r["model"], r["precision"]): r for r in fig.get("benchmark", {}).get("rows", [])}
    fp32, amp = rows.get(("FCOS", "fp32")), rows.get(("FCOS", "amp"))
    if fp32 and amp:
        for key, name in (("infer_800x1216_ms", GOALS[0][0]), ("train_ms", GOALS[1][0])):
            if key in fp32 and key in amp:
                values[name] = amp[key] / fp32[key]
    if "recipe" in fig:
        values[GOALS[2][0]] = fig["recipe"]["ratio_amp_fp32"]
    ap32 = fig.get("demo_fp32", {}).get("ap")
    ap_amp_eval = fig.get("demo_fp32_amp_eval", {}).get("ap")
    if ap32 is not None and ap_amp_eval is not None:
        values[GOALS[3][0]] = ap_amp_eval - ap32
    amp_aps = [v["ap"] for k, v in fig.items() if k.startswith("demo_amp_seed") and v["ap"]]
    if amp_aps:
        values[GOALS[4][0]] = min(amp_aps)
        if ap32 is not None:
            values[GOALS[5][0]] = min(amp_aps) - ap32
    return values


def machine_kind(device: str) -> str:
    """Which goals apply here: "cuda", "amx" (a CPU with AMX that PyTorch may use) or
    "cpu"."""
    from fcos_d2.modeling.execution import cpu_flags, device_type, usable_cpu_flags

    if device_type(device) == "cuda":
        return "cuda"
    return "amx" if "amx_bf16" in usable_cpu_flags(cpu_flags()) else "cpu"


def format_summary(fig: Dict[str, object]) -> str:
    lines = [f"Machine: {fig['machine']}.", "",
             "| figure | value | goal | met |", "|---|---|---|---|"]  # fmt: skip
    values = goal_values(fig)
    here = fig.get("kind")
    for name, goal, test, where in GOALS:
        if where is not None:
            goal = f"{goal} ({WHERE[where]})"
        if name not in values:
            lines.append(f"| {name} | not measured | {goal} | |")
            continue
        met = ("yes" if test(values[name]) else "NO") if where in (None, here) else "not here"
        lines.append(f"| {name} | {values[name]:.2f} | {goal} | {met} |")
    runs = [(k, v) for k, v in fig.items() if k.startswith("demo_") and isinstance(v, dict)]
    if runs:
        lines += ["", "| demo run | AP | s/it | wall s |", "|---|---|---|---|"]
        for key, v in runs:
            ap = f"{v['ap']:.2f}" if v.get("ap") is not None else "-"
            s_it = f"{v['s_per_it']:.3f}" if v.get("s_per_it") else "-"
            wall = f"{v['wall_s']:.0f}" if v.get("wall_s") else "-"
            lines.append(f"| {key} | {ap} | {s_it} | {wall} |")
    for key in ("tests", "suite", "skipped", "failed"):
        value = fig.get(key)
        if value:
            lines.append(f"\n{key}: {value if isinstance(value, str) else ', '.join(value)}")
    return "\n".join(lines)


def main(argv: List[str] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    parser.add_argument("--output", default="output/precision_check")
    parser.add_argument("--work-dir", default=None,
                        help="the training runs' OUTPUT_DIRs (default: OUTPUT/runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11],
                        help="seeds of the SOLVER.AMP demo runs")
    parser.add_argument("--budget", type=float, default=3600, help="seconds for all stages")
    parser.add_argument("--stage-scale", type=float, default=None,
                        help="STAGE_SECONDS times this is a stage's expected length "
                             "(default 1 on CPU, 0.5 on CUDA)")
    parser.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    parser.add_argument("--skip", nargs="+", default=[], choices=sorted(STAGE_SECONDS))
    args = parser.parse_args(argv)
    if args.stage_scale is None:
        args.stage_scale = 0.5 if args.device.startswith("cuda") else 1.0
    args.output = os.path.abspath(args.output)
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(args.output, "runs"))

    import torch  # after parsing: --help needs no PyTorch

    from .report import machine_info, machine_line

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("[precision_check] --device cuda: PyTorch sees no CUDA device")
    check = Check(args)
    check.figures["machine"] = machine_line(machine_info(args.device))
    check.figures["kind"] = machine_kind(args.device)
    figures = run_stages(check)
    figures["goal_values"] = goal_values(figures)
    with open(os.path.join(args.output, "precision_check.json"), "w") as f:
        json.dump(figures, f, indent=1)
    summary = format_summary(figures)
    with open(os.path.join(args.output, "precision_check.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)
    return figures


if __name__ == "__main__":
    main()
