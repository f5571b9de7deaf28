#!/usr/bin/env python
"""Quantise an end-to-end FCOS ONNX graph to int8 (static, QDQ), calibrated on a dataset.

    python tools/export_model.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --format onnx --end-to-end --output export/ \\
        MODEL.WEIGHTS output/fcos_R_18_demo/model_final.pth
    python tools/quantize_onnx.py --model export/model.onnx \\
        --calibration-dataset fcos_demo_train --num-images 64 --output export_int8/
    python tools/deploy_onnx.py --model export_int8/model.onnx --input photos/ --output r.json

Reads ``export_info.json`` next to ``--model`` (channel order, whether the graph resizes),
feeds ``--num-images`` images of the registered ``--calibration-dataset`` (spread over it)
to the float graph to measure activation ranges, and writes ``--output``/model.onnx
(every convolution int8, the rest float; same input and outputs) with a copy of
``export_info.json`` that records the quantisation. ``tools/deploy_onnx.py`` runs it as it
runs the float graph.

``--evaluate DATASET`` then measures both graphs on that dataset with ONNX Runtime: box AP
(Detectron2's COCOEvaluator) and the median latency per image (the two graphs taking
turns image by image), written to ``--output``/int8_report.json and .md with the CPU named.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

import fcos_d2  # noqa: F401  (registers the demo datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from fcos_d2.export.quantize import (
    CALIBRATION_METHODS,
    DatasetCalibrationReader,
    dataset_dicts,
    quantize_end_to_end,
)
from fcos_d2.modeling.execution import cpu_description, cpu_flags


def read_info(model_path: str) -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "export_info.json")
    if not os.path.isfile(path):
        raise SystemExit(
            f"{path}: not found; --model must be a graph written by tools/export_model.py "
            "--end-to-end, with its export_info.json beside it"
        )
    with open(path) as f:
        info = json.load(f)
    if not info.get("end_to_end") or info.get("format") not in ("onnx", "onnx-dynamo"):
        raise SystemExit(f"{path}: describes a {info.get('format')} graph with end_to_end="
                         f"{info.get('end_to_end')}; quantisation takes end-to-end ONNX graphs")
    return info


def session(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def cpu_int8_description() -> str:
    """The CPU's model, vector extensions and int8 dot-product units (VNNI, AMX-INT8)."""
    flags = cpu_flags()
    int8 = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                                    ("amx_int8", "AMX-INT8")) if flag in flags]  # fmt: skip
    return f"{cpu_description()}; int8: {', '.join(int8) or 'no VNNI/AMX'}"


def graph_input(info: dict, dataset_dict: dict) -> np.ndarray:
    """The graph's uint8 (H, W, 3) input for one dataset image (resized first for a
    ``--no-resize`` graph)."""
    image_format = info["input"]["channel_order"]
    image = detection_utils.read_image(dataset_dict["file_name"], format=image_format)
    resize = info["input"].get("resize_test")
    if not info["input"].get("resize_in_graph", True) and resize:
        from detectron2.data import transforms as T

        image = T.ResizeShortestEdge(*resize).get_transform(image).apply_image(image)
    return np.ascontiguousarray(image)


def to_instances(outputs, dataset_dict: dict, image: np.ndarray) -> Instances:
    """Graph outputs as Detectron2 Instances in the dataset image's pixels."""
    boxes, scores, classes = (torch.as_tensor(np.asarray(o)) for o in outputs)
    height = dataset_dict.get("height", image.shape[0])
    width = dataset_dict.get("width", image.shape[1])
    if image.shape[:2] != (height, width):  # a --no-resize graph: boxes in the resized image
        boxes = boxes * torch.tensor([width / image.shape[1], height / image.shape[0]] * 2)
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(boxes.float())
    instances.scores = scores
    instances.pred_classes = classes
    return instances


def evaluate(paths: dict, info: dict, dataset: str, threads: int, folder: str) -> dict:
    """Box AP and median latency per image of each graph on ``dataset``."""
    dicts = dataset_dicts(dataset)
    if "thing_classes" not in MetadataCatalog.get(dataset).as_dict():
        DatasetCatalog.get(dataset)  # loading a COCO-format set fills its metadata
    sessions = {name: session(path, threads) for name, path in paths.items()}
    evaluators = {name: COCOEvaluator(dataset, tasks=("bbox",), distributed=False,
                                      output_dir=os.path.join(folder, f"eval_{name}"))
                  for name in paths}  # fmt: skip
    for evaluator in evaluators.values():
        evaluator.reset()
    times = {name: [] for name in paths}
    start = time.perf_counter()
    for index, d in enumerate(dicts):
        image = graph_input(info, d)
        for name, sess in sessions.items():  # the two graphs take turns on every image
            begin = time.perf_counter()
            outputs = sess.run(None, {sess.get_inputs()[0].name: image})
            times[name].append(time.perf_counter() - begin)
            evaluators[name].process([d], [{"instances": to_instances(outputs, d, image)}])
        if (index + 1) % 50 == 0 or index + 1 == len(dicts):
            print(f"evaluation: {index + 1}/{len(dicts)} images "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    results = {}
    for name, evaluator in evaluators.items():
        box = evaluator.evaluate()["bbox"]
        results[name] = {"AP": round(box["AP"], 3), "AP50": round(box["AP50"], 3),
                         "median_ms": round(statistics.median(times[name]) * 1000, 2)}  # fmt: skip
    return results


def write_report(results: dict, args, folder: str) -> None:
    fp32, int8 = results["fp32"], results["int8"]
    report = {
        "cpu": cpu_int8_description(),
        "threads": args.threads or "default",
        "load_average_after": round(os.getloadavg()[0], 2),
        "dataset": args.evaluate,
        "calibration": {"dataset": args.calibration_dataset, "images": args.num_images,
                        "method": args.method, "excluded": list(args.exclude)},  # fmt: skip
        "fp32": fp32,
        "int8": int8,
        "ap_drop": round(fp32["AP"] - int8["AP"], 3),
        "latency_ratio": round(int8["median_ms"] / fp32["median_ms"], 3),
    }
    with open(os.path.join(folder, "int8_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"{args.evaluate}, ONNX Runtime CPU, {report['cpu']}, threads: {report['threads']}, "
        f"load average after: {report['load_average_after']}; calibration: "
        f"{args.num_images} images of {args.calibration_dataset} ({args.method})",
        "",
        "| graph | box AP | AP50 | median latency per image (ms) |",
        "|---|---|---|---|",
        f"| fp32 | {fp32['AP']} | {fp32['AP50']} | {fp32['median_ms']} |",
        f"| int8 (QDQ) | {int8['AP']} | {int8['AP50']} | {int8['median_ms']} |",
        "",
        f"AP drop {report['ap_drop']}, latency ratio int8 / fp32 {report['latency_ratio']}",
    ]
    with open(os.path.join(folder, "int8_report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="float end-to-end model.onnx")
    parser.add_argument("--calibration-dataset", required=True,
                        help="a registered DATASETS name, e.g. fcos_demo_train")
    parser.add_argument("--num-images", type=int, default=64, help="calibration images")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--method", default="minmax", choices=CALIBRATION_METHODS,
                        help="how activation ranges are taken from the calibration outputs")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="NODE",
                        help="Conv node names to keep float")
    parser.add_argument("--evaluate", default="", metavar="DATASET",
                        help="then measure AP and latency of both graphs on this dataset")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.model):
        raise SystemExit(f"--model {args.model}: no such file")
    info = read_info(args.model)
    resize = info["input"].get("resize_test")
    if info["input"].get("resize_in_graph", True):
        resize = None  # the graph resizes
    try:
        reader = DatasetCalibrationReader(args.calibration_dataset, args.num_images,
                                          info["input"]["channel_order"], info["input"]["name"],
                                          resize)  # fmt: skip
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--calibration-dataset / --num-images: {e.args[0]}")
    os.makedirs(args.output, exist_ok=True)
    int8_path = os.path.join(args.output, "model.onnx")
    if os.path.abspath(int8_path) == os.path.abspath(args.model):
        raise SystemExit("--output must be another folder than the float model's")
    start = time.perf_counter()
    quantised = quantize_end_to_end(args.model, int8_path, reader, args.method, args.exclude)
    print(f"Quantised {len(quantised)} Conv nodes in {time.perf_counter() - start:.0f} s")
    info.update(file="model.onnx", quantization={
        "format": "QDQ", "ops": ["Conv"], "weights": "int8 per channel",
        "activations": "uint8 per tensor", "calibration_dataset": args.calibration_dataset,
        "calibration_images": args.num_images, "method": args.method,
        "excluded": list(args.exclude), "float_model": os.path.abspath(args.model),
    })  # fmt: skip
    with open(os.path.join(args.output, "export_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"Wrote {int8_path} and {os.path.join(args.output, 'export_info.json')}")
    if args.evaluate:
        paths = {"fp32": args.model, "int8": int8_path}
        results = evaluate(paths, info, args.evaluate, args.threads, args.output)
        write_report(results, args, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
