#!/usr/bin/env python
"""Latency of the end-to-end ONNX graph in ONNX Runtime next to eager fcos_d2 (CPU).

    python benchmarks/export_latency.py                       # R-50-FPN, 800x1216 and 512x640
    python benchmarks/export_latency.py --sizes 800x1216 --repeats 9 --output latency.md

ResNet-50-FPN FCOS (``configs/COCO-Detection/FCOS_R_50_1x.yaml``) with random weights
(nothing is downloaded), batch 1, one uint8 image of each ``--sizes`` (H x W). Timed,
each the median of ``--repeats`` runs after one warm-up, the variants taking turns run by
run so that a slow spell of a shared machine hits all of them alike:

* **eager**: what Detectron2's test-time path runs -- ``ResizeShortestEdge`` (Pillow),
  the model (the config's defaults: NHWC, BatchNorm folded) and rescaling to the image;
* **ORT end-to-end**: ``InferenceSession.run`` of ``FCOSEndToEnd`` (resize inside);
* **ORT no-resize**: the ``--no-resize`` graph on the already-resized image;
* **ORT raw**: the raw graph (backbone + head only) on the normalised padded tensor.

So "no-resize - raw" is what normalisation, padding and post-processing cost inside the
graph, and "end-to-end - no-resize" what the in-graph resize costs (both differences of
seconds-long runs, so within the machine's noise); **ORT post-processing alone** times the
graph's post-processing by itself (the model's ``detect_image`` exported on the raw head
outputs of the image). The random head
gives almost no detections (scores about 0.01 < the 0.05 threshold); ``worst case``
rows raise the class bias so that every score passes (1000 candidates per level, NMS over
5000) -- the most post-processing can cost. Every table names the CPU model and vector extensions,
threads, versions and the load average.

``--torch-export`` adds the ``torch.export`` paths (:mod:`fcos_d2.export.torch_export`), each
of the end-to-end graph without the in-graph resize, on the already-resized image, recorded
once per model with symbolic height and width (so one recording serves every size):

* **eager float32**: the eager model with ``TEST.AMP`` off (the exported graphs compute in
  float32; **eager** follows the config's ``TEST.AMP`` policy: bfloat16 autocast on CPUs
  with AMX);
* **ExportedProgram**: ``torch.export.load(...).module()``;
* **ORT dynamo**: ONNX from the ``torch.export``-based exporter, in ONNX Runtime;
* **AOTInductor**: the compiled package (``aoti_load_package``); compiling ResNet-50 takes
  minutes on few cores.

``--json PATH`` writes the rows as JSON (with the header facts) beside the markdown.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime
import torch

import fcos_d2
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from fcos_d2.export import FCOSRawOutputs, export_end_to_end, export_onnx, preprocess
from fcos_d2.export.torch_export import export_graph, load_runner, min_image_size
from fcos_d2.modeling.execution import cpu_description
from fcos_d2.modeling.pipeline import FCOSPredictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "COCO-Detection", "FCOS_R_50_1x.yaml")


def parse_size(text: str):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes HxW, e.g. 800x1216; got {text!r}")
    return height, width


def build(config_file: str, worst_case: bool):
    cfg = fcos_d2.setup_cfg(config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # random weights: nothing is loaded
    if worst_case:
        with torch.no_grad():
            model.head.cls_logits.bias.fill_(4.0)  # every score passes the threshold
    return cfg, model


def eager_runner(cfg, model):
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    def run(image):
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        with torch.no_grad():
            out = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
        return len(out[0]["instances"])

    return run


def session(path, threads):
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class PostProcessingOnly(torch.nn.Module):
    """The end-to-end graph's post-processing alone: the raw head outputs of one image
    and its (height, width) -> boxes, scores, classes (the model's detect_image)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_levels = len(model.head_in_features)

    def forward(self, image_size, *outputs):
        n = self.num_levels
        logits, dists, ctrness = list(outputs[:n]), list(outputs[n: 2 * n]), list(outputs[2 * n:])
        predictions = FCOSPredictions.from_head(
            logits, self.model.strides, (logits, dists, ctrness), self.model.location_offset
        )
        return self.model.postprocessor.detect_image(predictions, 0, (image_size[0], image_size[1]))


def ort_runners(cfg, model, image, folder, threads):
    """ORT end-to-end, no-resize and raw runners for inputs like ``image``."""
    resize = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = T.ResizeShortestEdge(*resize).get_transform(image).apply_image(image)
    paths = {k: os.path.join(folder, f"{k}.onnx") for k in ("e2e", "noresize", "raw")}
    export_end_to_end(model, torch.from_numpy(image), paths["e2e"], "onnx", resize)
    export_end_to_end(model, torch.from_numpy(resized), paths["noresize"], "onnx", None)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    padded = preprocess(model, [{"image": tensor}]).tensor.contiguous()
    export_onnx(model, padded, paths["raw"])
    with torch.no_grad():
        raw_outputs = FCOSRawOutputs(model).eval()(padded)
    image_size = torch.tensor(resized.shape[:2])
    post_path = os.path.join(folder, "post.onnx")
    names = [f"out{i}" for i in range(len(raw_outputs))]
    with torch.no_grad():
        torch.onnx.export(
            PostProcessingOnly(model).eval(), (image_size, *raw_outputs), post_path,
            dynamo=False, input_names=["image_size", *names], opset_version=17,
        )  # fmt: skip
    e2e, noresize, raw = (session(paths[k], threads) for k in ("e2e", "noresize", "raw"))
    post = session(post_path, threads)
    padded_np = padded.numpy()
    post_feed = {n: o.numpy() for n, o in zip(names, raw_outputs)}
    post_feed["image_size"] = image_size.numpy()
    return {
        "ORT end-to-end": lambda img: len(e2e.run(None, {"image": img})[0]),
        "ORT no-resize": lambda img: len(noresize.run(None, {"image": resized})[0]),
        "ORT raw graph": lambda img: len(raw.run(None, {"images": padded_np})),
        "ORT post-processing alone": lambda img: len(post.run(None, post_feed)[0]),
    }


TORCH_EXPORT_FILES = {"ExportedProgram": ("pt2", "model.pt2"),
                      "ORT dynamo": ("onnx-dynamo", "model.onnx"),
                      "AOTInductor": ("aoti", "model_aoti.pt2")}  # fmt: skip


def float32_eager(config_file: str, model):
    """The same weights with TEST.AMP off: eager inference in float32."""
    cfg = fcos_d2.setup_cfg(
        config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "TEST.AMP.ENABLED", "False"]
    )
    float_model = build_model(cfg).eval()
    float_model.load_state_dict(model.state_dict())
    return cfg, float_model


def torch_export_runners(cfg, model, float_model, folder):
    """Runners of the torch.export paths (each recorded once, for every size) on the
    resized image, and eager float32 on it."""
    smallest = min_image_size(model)
    side = -(-smallest // 32) * 32
    sample = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (side, side, 3), np.uint8))
    loaded = {}
    for name, (fmt, file) in TORCH_EXPORT_FILES.items():
        start = time.perf_counter()
        print(f"recording and writing {name} ({fmt})...", flush=True)
        path = os.path.join(folder, file)
        export_graph(model, sample, path, fmt, "end_to_end")
        loaded[name] = load_runner(path, fmt)
        print(f"  {name} ready in {time.perf_counter() - start:.0f} s", flush=True)

    def eager_float32(resized):
        chw = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        with torch.no_grad():
            return len(float_model([{"image": chw}])[0]["instances"])

    def timed(run):
        def call(resized):
            with torch.no_grad():
                return len(run(torch.from_numpy(resized))[0])

        return call

    return {"eager float32": eager_float32, **{n: timed(r) for n, r in loaded.items()}}


def measure(runners, image, repeats):
    """Median seconds per runner, the runners taking turns; and their detection counts."""
    times = {name: [] for name in runners}
    counts = {name: run(image) for name, run in runners.items()}  # warm-up
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(image)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=CONFIG, help="default: R-50-FPN FCOS 1x")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(800, 1216), (512, 640)])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch and ORT threads (0: default)")
    parser.add_argument("--no-worst-case", action="store_true")
    parser.add_argument("--output", default="", help="also write the table (markdown) here")
    parser.add_argument("--json", default="", help="also write the rows (JSON) here")
    parser.add_argument("--torch-export", action="store_true",
                        help="add ExportedProgram, ORT dynamo and AOTInductor (slow to compile)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    header = (
        f"{os.path.relpath(args.config_file, ROOT)}; "
        f"CPU: {cpu_description()}, {torch.get_num_threads()} torch threads, ORT "
        f"{onnxruntime.__version__} ({args.threads or 'default'} threads), torch "
        f"{torch.__version__}, load average before: {os.getloadavg()[0]:.2f}"
    )
    print(header, flush=True)
    rows = []
    cases = [False] if args.no_worst_case else [False, True]
    with tempfile.TemporaryDirectory() as folder:
        for worst_case in cases:
            cfg, model = build(args.config_file, worst_case)
            head = "every score passes" if worst_case else "random"
            recorded = {}
            if args.torch_export:
                _, float_model = float32_eager(args.config_file, model)
                recorded = torch_export_runners(cfg, model, float_model, folder)
            for height, width in args.sizes:
                print(f"timing {height}x{width}, head: {head}...", flush=True)
                image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
                runners = {"eager": eager_runner(cfg, model)}
                runners.update(ort_runners(cfg, model, image, folder, args.threads))
                resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
                resized = resize.get_transform(image).apply_image(image)
                runners.update({name: (lambda _, run=run: run(resized))
                                for name, run in recorded.items()})  # fmt: skip
                medians, counts = measure(runners, image, args.repeats)
                row = {"size": f"{height}x{width}", "worst_case": worst_case,
                       "eager_precision": str(model.autocast_dtype or torch.float32),
                       "detections": counts["eager"], "ort_detections": counts["ORT end-to-end"],
                       **{k: round(v * 1000, 1) for k, v in medians.items()}}  # fmt: skip
                if recorded:
                    row["torch_export_detections"] = {n: counts[n] for n in recorded}
                row["ratio"] = round(medians["ORT end-to-end"] / medians["eager"], 3)
                post = medians["ORT no-resize"] - medians["ORT raw graph"]
                row["post_ms"] = round(post * 1000, 1)
                resize = medians["ORT end-to-end"] - medians["ORT no-resize"]
                row["resize_ms"] = round(resize * 1000, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = [
        header + f", load average after: {os.getloadavg()[0]:.2f}, median of {args.repeats}",
        "",
        "| input | head | detections | eager (ms) | ORT end-to-end (ms) | ratio | "
        "ORT no-resize (ms) | ORT raw graph (ms) | in-graph resize (ms) | "
        "in-graph normalise + pad + post-processing (ms) | ORT post-processing alone (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {'every score passes' if r['worst_case'] else 'random'} | "
            f"{r['detections']} | {r['eager']} | {r['ORT end-to-end']} | {r['ratio']} | "
            f"{r['ORT no-resize']} | {r['ORT raw graph']} | {r['resize_ms']} | {r['post_ms']} | "
            f"{r['ORT post-processing alone']} |"
        )
    if args.torch_export:
        lines += ["", torch_export_table(rows)]
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": lines[0], "repeats": args.repeats, "rows": rows}, f, indent=1)
    return 0


def torch_export_table(rows) -> str:
    """The torch.export paths next to eager and the TorchScript-based ONNX no-resize graph:
    milliseconds, and in brackets the ratio to eager float32."""
    names = ["ORT no-resize", *TORCH_EXPORT_FILES]
    lines = [
        "torch.export paths, end-to-end graph without the in-graph resize, on the resized "
        "image; ms (ratio to eager float32)",
        "",
        "| input | head | eager, TEST.AMP policy (ms) | eager float32 (ms) | "
        + " | ".join(f"{n} (ms)" for n in names) + " |",
        "|---" * (4 + len(names)) + "|",
    ]
    for r in rows:
        base = r["eager float32"]
        cells = [f"{r[n]} ({r[n] / base:.2f})" for n in names]
        lines.append(
            f"| {r['size']} | {'every score passes' if r['worst_case'] else 'random'} | "
            f"{r['eager']} ({r['eager_precision'].replace('torch.', '')}) | {base} | "
            + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
