#!/usr/bin/env python
"""Markdown tables from the results that ``python -m benchmarks.benchmark`` writes (JSON).

    python -m benchmarks.report results.json                  # tables to stdout
    python -m benchmarks.report results.json --output tables.md
    python -m benchmarks.report results.json --update docs/benchmarks.md --section cpu

``--update`` replaces what stands between the lines ``<!-- benchmark tables: cpu -->`` and
``<!-- end of benchmark tables -->`` in that file (the page's tables, regenerated).

The results hold the machine (CPU model and vector extensions, threads, versions, load
average), the settings, one row per model and precision, and the plain-convolution rates.
The tables: every row's timings; each model against the baselines at the same precision;
each model under autocast against itself in float32, and fcos_d2's FCOS under autocast
against torchvision's FCOS in float32 and under the same autocast.
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch
import torchvision

from fcos_d2.modeling.execution import cpu_description

from .models import BASELINES, TORCHVISION_FCOS

OURS = "FCOS"


def machine_info(device: str) -> Dict[str, Any]:
    """What the timings are measured on: CPU model and vector extensions (or the GPU),
    PyTorch's CPU capability, threads and versions."""
    info = {
        "device": device,
        "cpu": cpu_description(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: Dict[str, Any]) -> str:
    """One line naming the machine of a results file."""
    where = f"GPU {info['gpu']}; " if info.get("gpu") else ""
    return (
        f"{where}CPU {info['cpu']}; PyTorch CPU capability {info['cpu_capability']}; "
        f"{info['threads']} threads; torch {info['torch']}, torchvision {info['torchvision']}"
    )


def _label(row: Dict[str, Any]) -> str:
    return f"{row['model']} [{row['precision']}]"


def _find(rows: List[Dict], model: str, precision: str) -> Optional[Dict]:
    return next((r for r in rows if r["model"] == model and r["precision"] == precision), None)


def _sizes(settings: Dict[str, Any]) -> List[str]:
    return list(settings["infer_sizes"])


def timing_columns(settings: Dict[str, Any]) -> List[str]:
    """The columns compared in ratios: inference per size, training step, its memory."""
    cols = [f"infer_{s}_ms" for s in _sizes(settings)]
    return cols + (["train_ms", "train_peak_mb"] if settings["training"] else [])


def fcos_parts(row: Dict[str, Any], settings: Dict[str, Any]) -> str:
    """FCOS's targets + losses and post-processing, in ms and as shares."""
    if "post_full_" + _sizes(settings)[0] + "_ms" not in row:
        return ""
    parts = []
    if settings["training"]:
        parts.append(f"targets+losses {row['targets_losses_ms']:.1f} ms "
                     f"({100 * row['targets_losses_ms'] / row['train_ms']:.1f}% of step)")
    for s in _sizes(settings):
        infer = row[f"infer_{s}_ms"]
        parts.append(
            f"post-proc {s} {row[f'post_{s}_ms']:.1f} ms "
            f"({100 * row[f'post_{s}_ms'] / infer:.1f}%), every score passing "
            f"{row[f'post_full_{s}_ms']:.1f} ms ({100 * row[f'post_full_{s}_ms'] / infer:.1f}%)"
        )
    return "; ".join(parts)


def timings_table(results: Dict[str, Any]) -> List[str]:
    settings, rows = results["settings"], results["rows"]
    cols = timing_columns(settings) + ["gflops", "gflops_per_s"]
    if settings["training"]:
        cols += ["train_gflops", "train_gflops_per_s"]
    lines = ["| model | precision | " + " | ".join(cols) + " | FCOS parts |",
             "|" + "---|" * (len(cols) + 3)]
    for row in rows:
        values = " | ".join(f"{row[c]:.1f}" for c in cols)
        lines.append(f"| {row['model']} | {row['autocast']} | {values} | "
                     f"{fcos_parts(row, settings)} |")
    return lines


def _ratio_rows(pairs, cols) -> List[str]:
    lines = ["| ratio | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for row, base in pairs:
        values = " | ".join(f"{row[c] / base[c]:.2f}" for c in cols)
        lines.append(f"| {_label(row)} / {_label(base)} | {values} |")
    return lines


def baseline_ratios(results: Dict[str, Any]) -> List[str]:
    """Every model against every baseline at the same precision."""
    rows = results["rows"]
    pairs = [
        (row, base) for row in rows if row["model"] not in BASELINES
        for name in BASELINES for base in [_find(rows, name, row["precision"])] if base
    ]
    return _ratio_rows(pairs, timing_columns(results["settings"]))


def amp_ratios(results: Dict[str, Any]) -> List[str]:
    """Each model under autocast against itself in float32; fcos_d2's FCOS under autocast
    against torchvision's FCOS in float32 and under the same autocast."""
    rows = results["rows"]
    pairs = [(row, _find(rows, row["model"], "fp32")) for row in rows
             if row["precision"] == "amp"]
    ours = _find(rows, OURS, "amp")
    if ours is not None:
        pairs += [(ours, _find(rows, TORCHVISION_FCOS, p)) for p in ("fp32", "amp")]
    pairs = [(row, base) for row, base in pairs if base is not None]
    if not pairs:
        return []
    return _ratio_rows(pairs, timing_columns(results["settings"]))


def notes(results: Dict[str, Any]) -> List[str]:
    settings = results["settings"]
    lines = []
    for precision, rates in results["conv_rates"].items():
        lines.append(
            f"Plain 3x3 conv (256->256, 128x128), {precision}: "
            + ", ".join(f"{rate / 1e9:.1f} GFLOP/s in {fmt}" for fmt, rate in rates.items())
            + " (fvcore convention: one multiply-add = one flop)."
        )
    first = _sizes(settings)[0]
    note = f"gflops: inference at {first} (fvcore); gflops_per_s: gflops / infer_{first}_ms"
    if settings["training"]:
        note += (
            f"; train_gflops: one training step, batch {settings['train_batch']} at "
            f"{settings['train_size']}, forward + backward (torch.utils.flop_counter, "
            "halved to the same convention)"
        )
    lines.append(note + ".")
    lines.append(
        f"Medians of {settings['repeats']} rounds after {settings['warmup']} warm-up; the "
        "models take turns within each round. FCOS parts: the profiler ranges "
        "FCOSPipeline.losses_of and FCOSPostProcessor.__call__, in separate profiled rounds."
    )
    return lines


def format_tables(results: Dict[str, Any]) -> str:
    """All tables of one results file, as markdown."""
    load = results["load_average"]
    lines = [
        f"Machine: {machine_line(results['machine'])}. Autocast: "
        f"{results['settings']['amp_dtype']}. 1-minute load average at start / end: "
        f"{load[0]:.2f} / {load[1]:.2f}.",
        "",
        *timings_table(results),
        "",
        *notes(results),
        "",
        "Against the baselines, same precision:",
        "",
        *baseline_ratios(results),
    ]
    amp = amp_ratios(results)
    if amp:
        lines += ["", "Under autocast against float32:", "", *amp]
    return "\n".join(lines)


BEGIN_MARK = "<!-- benchmark tables: {} -->"
END_MARK = "<!-- end of benchmark tables -->"


def replace_section(text: str, section: str, tables: str, path: str = "the page") -> str:
    """``text`` with the lines between the section's begin mark and the next end mark
    replaced by ``tables``."""
    begin = BEGIN_MARK.format(section)
    start = text.find(begin)
    end = text.find(END_MARK, start + len(begin)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{path} has no lines {begin!r} ... {END_MARK!r} to replace")
    return text[:start] + begin + "\n\n" + tables + "\n\n" + text[end:]


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="JSON written by python -m benchmarks.benchmark")
    parser.add_argument("--output", default="", help="write the markdown here (default: stdout)")
    parser.add_argument("--update", default="", help="a markdown page whose section to replace")
    parser.add_argument("--section", default="cpu", help="the section's name in its marks")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)
        text = format_tables(results)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot render {args.results}: {e!r}", file=sys.stderr)
        return 1
    if args.update:
        try:
            with open(args.update) as f:
                page = replace_section(f.read(), args.section, text, args.update)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        with open(args.update, "w") as f:
            f.write(page)
    elif args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
