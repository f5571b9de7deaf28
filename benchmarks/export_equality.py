#!/usr/bin/env python
"""Exported graphs vs eager inference: detections of every export mode, config and size.

    python benchmarks/export_equality.py [--output export_equality.json]

Raw graph (TorchScript, ONNX) + Python post-processing and end-to-end graph (TorchScript,
ONNX), with the default options and the torchvision config's, on the image sizes of
tests/export/test_export_options.py (tiny ResNet-18 FCOS, random weights with a lively head):
per case the eager and exported detection counts, whether the classes are equal, and the
largest box (px) and score differences. Prints a markdown table; writes JSON.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
sys.path[:0] = [os.path.join(TESTS, "export"), TESTS]  # the test module and tests/helpers.py
import test_export_options as cases  # noqa: E402  (the tests' models, sizes and runners)


def compare(reference, outputs):
    count, same = len(reference[0]), len(outputs[0]) == len(reference[0])
    same = same and torch.equal(outputs[2], reference[2])
    return {
        "eager": count,
        "exported": len(outputs[0]),
        "classes_equal": bool(same),
        "max_box_px": float((outputs[0] - reference[0]).abs().max()) if same and count else None,
        "max_score": float((outputs[1] - reference[1]).abs().max()) if same and count else None,
    }


def run_case(model, mode, fmt, folder, seed, raw_size, e2e_size):
    if mode == "raw":
        run = cases.raw_runner(model, fmt, os.path.join(folder, f"raw.{fmt}"))
        batch = cases.raw_inputs(raw_size, seed=seed + 1)
        with torch.no_grad():
            reference = cases.detection_tensors(model(batch)[0]["instances"])
        outputs = cases.detection_tensors(cases.run_exported(run, model, batch)[0]["instances"])
        return raw_size, compare(reference, outputs)
    run = cases.e2e_runner(model, fmt, os.path.join(folder, f"e2e.{fmt}"))
    image = cases.random_image(*e2e_size, seed=seed + 10)
    outputs = [torch.as_tensor(np.asarray(o)) for o in run(image)]
    return e2e_size, compare(cases.eager_end_to_end(model, image), outputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="export_equality.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for config in ("default", "torchvision"):
            model = cases.lively_model(config)
            for mode in ("raw", "end-to-end"):
                for fmt in ("torchscript", "onnx"):
                    for seed, sizes in enumerate(zip(cases.RAW_SIZES, cases.E2E_SIZES)):
                        size, result = run_case(model, mode.split("-")[0], fmt, folder, seed,
                                                *sizes)  # fmt: skip
                        rows.append({"config": config, "mode": mode, "format": fmt,
                                     "input": list(size), **result})  # fmt: skip
                        print(f"| {config} | {mode} | {fmt} | {size[0]}x{size[1]} | "
                              f"{result['exported']}/{result['eager']} | "
                              f"{result['classes_equal']} | {result['max_box_px']} | "
                              f"{result['max_score']} |", flush=True)
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"-> {args.output}")
    return 0 if all(r["classes_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
