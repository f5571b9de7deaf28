#!/usr/bin/env python
"""Export a trained one-stage FCOS to TorchScript or ONNX.

End to end (image -> boxes; ``tools/deploy_onnx.py`` runs the ONNX file with ONNX
Runtime alone)::

    python tools/export_model.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --format onnx --end-to-end --output export/ \\
        MODEL.WEIGHTS output/fcos_R_18_demo/model_final.pth
    python tools/export_model.py --config-file CFG --format torchscript --end-to-end \\
        [--no-resize] --output export/ MODEL.WEIGHTS W

The end-to-end graph (``fcos_d2.export.FCOSEndToEnd``) takes one (H, W, 3) uint8 image
in ``INPUT.FORMAT`` and returns ``boxes`` (D, 4), ``scores`` (D,), ``classes`` (D,) in
the image's pixels; ``--no-resize`` leaves the test-time resize out (the input is then
the already-resized image). Without ``--end-to-end`` the graph is the raw one
(``FCOSRawOutputs``): normalised, padded batch in, per-level head outputs out, and
post-processing runs in Python with ``fcos_d2.export.postprocess``.

Writes ``model.onnx`` or ``model.ts`` and ``export_info.json`` (input, outputs, class
names, normalisation, and every setting after the network that changes the detections:
location rule, post-processing, rescaling -- read from the model's modules), then checks
the exported graph against the eager model on the sample image (ONNX with onnxruntime).
Exported graphs compute in float32: the eager model is built with TEST.AMP off for the
check.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

import fcos_d2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog, detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from fcos_d2.export import (
    OUTPUT_NAMES,
    FCOSRawOutputs,
    export_end_to_end,
    export_onnx,
    export_torchscript,
    output_names,
    output_options,
    preprocess,
)
from fcos_d2.export.torch_export import (  # torch.export formats
    FORMATS as TORCH_EXPORT_FORMATS,
    ONNX_OPSET,
    export_graph,
    load_runner,
    min_image_size,
)

TORCH_EXPORT_FILES = {"pt2": "model.pt2", "onnx-dynamo": "model.onnx", "aoti": "model_aoti.pt2"}


def read_sample(cfg, image_path: str) -> np.ndarray:
    """(H, W, 3) uint8 in INPUT.FORMAT: the given image, or a random one of 3:4 shape."""
    if image_path:
        return detection_utils.read_image(image_path, format=cfg.INPUT.FORMAT)
    size = max(cfg.INPUT.MIN_SIZE_TEST, 64)
    return np.random.default_rng(0).integers(0, 256, (size, size * 4 // 3, 3), np.uint8)


def resize_setting(cfg):
    """The config's test-time resize as (shortest edge, longest limit), or None."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        return None
    return (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


def resize_like_eager(cfg, image: np.ndarray) -> np.ndarray:
    resize = resize_setting(cfg)
    if resize is None:
        return image
    return T.ResizeShortestEdge(*resize).get_transform(image).apply_image(image)


def class_names(cfg, num_classes: int):
    """DATASETS.TEST[0]'s thing_classes when the metadata has them for every class."""
    if not cfg.DATASETS.TEST:
        return None
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
    return list(names) if names and len(names) == num_classes else None


def export_info(cfg, model, args, path: str) -> dict:
    if args.end_to_end:
        resize = None if args.no_resize else resize_setting(cfg)
        inputs = {
            "name": "image",
            "layout": "HWC uint8, one image",
            "channel_order": cfg.INPUT.FORMAT,
            "resize_in_graph": resize is not None,
            "resize_test": list(resize) if resize else None,
        }
        outputs = list(OUTPUT_NAMES)
    else:
        inputs = {
            "name": "images",
            "layout": "NCHW float32, (image - pixel_mean) / pixel_std, zero-padded",
            "channel_order": cfg.INPUT.FORMAT,
            "size_divisibility": model.backbone.size_divisibility,
            "resize_test": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
        }
        outputs = output_names(model)
    inputs["pixel_mean"] = model.pixel_mean.flatten().tolist()
    inputs["pixel_std"] = model.pixel_std.flatten().tolist()
    return {
        "format": args.format,
        "file": os.path.basename(path),
        "end_to_end": bool(args.end_to_end),
        "opset": args.opset if args.format == "onnx" else None,
        "input": inputs,
        "outputs": outputs,
        "levels": list(model.head_in_features),
        "strides": list(model.strides),
        "num_classes": model.head.num_classes,
        "class_names": class_names(cfg, model.head.num_classes),
        "precision": "float32",
        **output_options(model),
    }


def max_difference(outputs, reference) -> float:
    return max(
        (float((torch.as_tensor(o) - r).abs().max()) for o, r in zip(outputs, reference)
         if r.numel()),  # fmt: skip
        default=0.0,
    )


def export_raw(model, cfg, args, image: np.ndarray) -> str:
    resized = resize_like_eager(cfg, image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    sample = preprocess(model, [{"image": tensor}]).tensor
    with torch.no_grad():
        reference = FCOSRawOutputs(model).eval()(sample)
    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        traced = export_torchscript(model, sample, path)
        with torch.no_grad():
            outputs = traced(sample)
    else:
        path = os.path.join(args.output, "model.onnx")
        export_onnx(model, sample, path, opset=args.opset)
        outputs = run_onnx(path, {"images": sample.contiguous().numpy()})
    if outputs is not None:
        print(f"{args.format} vs eager, max |difference|: {max_difference(outputs, reference):.3g}")
    return path


def export_e2e(model, cfg, args, image: np.ndarray) -> str:
    resize = None if args.no_resize else resize_setting(cfg)
    graph_input = resize_like_eager(cfg, image) if args.no_resize else image
    resized = resize_like_eager(cfg, image)
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        inputs = {"image": tensor}
        if not args.no_resize:
            inputs.update(height=image.shape[0], width=image.shape[1])
        eager = model([inputs])[0]["instances"]
    reference = (eager.pred_boxes.tensor, eager.scores, eager.pred_classes)
    name = "model.ts" if args.format == "torchscript" else "model.onnx"
    path = os.path.join(args.output, name)
    sample = torch.from_numpy(np.ascontiguousarray(graph_input))
    wrapper = export_end_to_end(model, sample, path, args.format, resize, opset=args.opset)
    if args.format == "torchscript":
        with torch.no_grad():
            outputs = torch.jit.load(path)(sample)
    else:
        outputs = run_onnx(path, {"image": sample.numpy()})
    del wrapper
    if outputs is not None:
        counts = f"{len(outputs[0])} detections (eager: {len(reference[0])})"
        if len(outputs[0]) == len(reference[0]):
            print(f"{args.format} vs eager, {counts}, max |difference|: "
                  f"{max_difference(outputs[:2], reference[:2]):.3g}")
        else:
            print(f"{args.format} vs eager: {counts}")
    return path


def run_onnx(path: str, feed):
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: the ONNX file is not checked")
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


# ----------------------------------------------------------------------------------------
# torch.export formats (fcos_d2.export.torch_export): --format pt2 | onnx-dynamo | aoti
#
#   python tools/export_model.py --config-file CFG --format aoti --end-to-end --no-resize \
#       --output export_aoti/ MODEL.WEIGHTS W
#
# pt2: ExportedProgram (torch.export.save); onnx-dynamo: ONNX through the torch.export-based
# exporter (opset 18); aoti: an AOTInductor package (compiled with the C++ compiler). The
# end-to-end graph needs --no-resize (its input: the image after Detectron2's test-time
# resize); the raw graph takes the padded batch as the TorchScript one does.


def check_torch_export_args(parser, args) -> None:
    if args.format in TORCH_EXPORT_FORMATS and args.end_to_end and not args.no_resize:
        parser.error(
            f"--format {args.format} --end-to-end records the graph without the in-graph "
            "resize (torch.export cannot record a resize whose output size depends on the "
            "image): add --no-resize and resize images as Detectron2 does before the graph"
        )


def torch_export_sample(model, cfg, args, image: np.ndarray) -> torch.Tensor:
    """The recording sample: the resized image (end-to-end) or its padded batch (raw), a
    random larger one when the test-time size is below the graphs' smallest size."""
    smallest = min_image_size(model)
    resized = resize_like_eager(cfg, image)
    if min(resized.shape[:2]) < smallest:
        side = -(-smallest // 32) * 32
        print(f"the test-time size {resized.shape[:2]} is below the smallest the torch.export "
              f"graphs take ({smallest}): recording on a random {side}x{side * 4 // 3} image")
        resized = np.random.default_rng(0).integers(0, 256, (side, side * 4 // 3, 3), np.uint8)
    if args.end_to_end:
        return torch.from_numpy(np.ascontiguousarray(resized))
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    return preprocess(model, [{"image": tensor}]).tensor.contiguous()


def export_torch_export(model, cfg, args, image: np.ndarray) -> str:
    """Record, write and check (against eager on the sample) a torch.export format."""
    graph = "end_to_end" if args.end_to_end else "raw"
    sample = torch_export_sample(model, cfg, args, image)
    path = os.path.join(args.output, TORCH_EXPORT_FILES[args.format])
    print(f"recording the {graph} graph with torch.export and writing {args.format} "
          "(aoti compiles C++: minutes)", flush=True)
    export_graph(model, sample, path, args.format, graph)
    with torch.no_grad():
        if args.end_to_end:
            chw = sample.permute(2, 0, 1).float()
            eager = model([{"image": chw}])[0]["instances"]
            reference = (eager.pred_boxes.tensor, eager.scores, eager.pred_classes)
        else:
            reference = FCOSRawOutputs(model).eval()(sample)
        outputs = load_runner(path, args.format)(sample)
    counts = f"{len(outputs[0])} detections (eager: {len(reference[0])})" if args.end_to_end else ""
    if not args.end_to_end or len(outputs[0]) == len(reference[0]):
        difference = max_difference(outputs[:2] if args.end_to_end else outputs,
                                    reference[:2] if args.end_to_end else reference)  # fmt: skip
        print(f"{args.format} vs eager, {counts}{', ' if counts else ''}max |difference|: "
              f"{difference:.3g}")
    else:
        print(f"{args.format} vs eager: {counts}")
    return path


def torch_export_info(model, args) -> dict:
    """What export_info.json adds for a torch.export format."""
    return {
        "opset": ONNX_OPSET if args.format == "onnx-dynamo" else None,
        "torch_export": {
            "torch": torch.__version__.split("+")[0],
            "min_image_size": min_image_size(model),
            "dynamic": ["height", "width"] + ([] if args.end_to_end else ["batch"]),
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export a one-stage FCOS to TorchScript or ONNX.")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", required=True,
                        choices=["torchscript", "onnx", *TORCH_EXPORT_FORMATS])
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--end-to-end", action="store_true",
                        help="uint8 image in, detections in its pixels out")
    parser.add_argument("--no-resize", action="store_true",
                        help="with --end-to-end: leave the test-time resize out of the graph")
    parser.add_argument("--sample-image", default="", help="image to trace on (default: random)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.no_resize and not args.end_to_end:
        parser.error("--no-resize applies to --end-to-end graphs only")
    check_torch_export_args(parser, args)

    # the graphs are traced in float32: the eager reference runs in float32 too
    cfg = fcos_d2.setup_cfg(
        args.config_file, args.opts + ["MODEL.DEVICE", "cpu", "TEST.AMP.ENABLED", "False"]
    )
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    os.makedirs(args.output, exist_ok=True)
    image = read_sample(cfg, args.sample_image)
    export = export_e2e if args.end_to_end else export_raw
    if args.format in TORCH_EXPORT_FORMATS:
        export = export_torch_export
    path = export(model, cfg, args, image)
    info_path = os.path.join(args.output, "export_info.json")
    with open(info_path, "w") as f:
        info = export_info(cfg, model, args, path)
        if args.format in TORCH_EXPORT_FORMATS:
            info.update(torch_export_info(model, args))
        json.dump(info, f, indent=2)
    print(f"Wrote {path} and {info_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
