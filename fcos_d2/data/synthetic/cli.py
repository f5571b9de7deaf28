"""Command line: ``python -m fcos_d2.data.synthetic --root DIR`` generates the dataset
and prints its statistics."""
import argparse
import json
import time
from typing import Optional, Sequence

from .cache import ensure_demo_dataset, resolve_root
from .config import DEFAULT_SPLIT_SIZES
from .stats import dataset_statistics, format_statistics


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Generate the dataset and print its statistics."""
    parser = argparse.ArgumentParser(description="Generate the fcos_demo synthetic dataset.")
    parser.add_argument("--root", default=None, help="dataset folder (default: see resolve_root)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLIT_SIZES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLIT_SIZES["val"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    files = ensure_demo_dataset(args.root, sizes={"train": args.num_train, "val": args.num_val})
    print(f"dataset ready in {resolve_root(args.root)} ({time.perf_counter() - start:.1f} s)")
    for split, paths in files.items():
        with open(paths.json_file) as f:
            print(format_statistics(split, dataset_statistics(json.load(f))))
