#!/usr/bin/env python
"""Plot a training run's metrics.json (Detectron2's JSONWriter) as one PNG.

    python tools/plot_metrics.py output/fcos_R_18_demo/metrics.json --output curves.png

Panels: the losses (``total_loss`` and every ``loss_*``) against the iteration; the
positive locations per image (``num_pos_anchors``) when logged; the box AP
(``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``) of each evaluation when there was one. A
resumed run appends to metrics.json: the last record of an iteration counts.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
POS_KEY = "num_pos_anchors"


def read_metrics(path: str) -> Dict[int, Dict[str, float]]:
    """iteration -> its scalars, from a metrics.json of one JSON object a line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist (train_net.py writes OUTPUT_DIR/metrics.json)"
        )
    records: Dict[int, Dict[str, float]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
            if "iteration" not in record:
                continue
            records.setdefault(int(record["iteration"]), {}).update(
                {k: v for k, v in record.items() if isinstance(v, (int, float))}
            )
    if not records:
        raise ValueError(f"{path} has no record with an 'iteration'")
    return records


def series(records: Dict[int, Dict[str, float]], key: str):
    """(iterations, values) of ``key``, in iteration order."""
    points = [(it, r[key]) for it, r in sorted(records.items()) if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def loss_keys(records: Dict[int, Dict[str, float]]) -> List[str]:
    keys = {k for r in records.values() for k in r if k.startswith("loss") or k == "total_loss"}
    return sorted(keys, key=lambda k: (k != "total_loss", k))


def plot(
    records: Dict[int, Dict[str, float]], output: str, title: Optional[str] = None
) -> List[str]:
    """Write the PNG; returns the panel names drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = ["losses"]
    if series(records, POS_KEY)[0]:
        panels.append("positives")
    if series(records, AP_KEYS[0])[0]:
        panels.append("AP")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "losses":
            for key in loss_keys(records):
                width = 1.8 if key == "total_loss" else 1.0
                ax.plot(*series(records, key), label=key, linewidth=width)
            ax.set_ylabel("loss")
            ax.legend(fontsize=7)
        elif panel == "positives":
            ax.plot(*series(records, POS_KEY), color="tab:purple")
            ax.set_ylabel("positive locations per image")
        else:
            for key in AP_KEYS:
                its, values = series(records, key)
                ax.plot(its, values, marker="o", label=key)
                ax.annotate(f"{values[-1]:.1f}", (its[-1], values[-1]), fontsize=7,
                            textcoords="offset points", xytext=(4, 0))
            ax.set_ylabel("box AP (%)")
            ax.legend(fontsize=7)
        ax.set_xlim(0, max(records) * 1.1)  # every panel over the whole run
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return panels


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="metrics.json of a run (OUTPUT_DIR/metrics.json)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default=None, help="title above the panels")
    args = parser.parse_args(argv)
    records = read_metrics(args.metrics)
    panels = plot(records, args.output, args.title)
    print(f"{args.output}: {', '.join(panels)} over {len(records)} logged iterations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
