#!/usr/bin/env python
"""Export a trained one-stage FCOS to TorchScript or ONNX.

    python tools/export_model.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --format onnx --output export/ MODEL.WEIGHTS output/fcos_R_18_demo/model_final.pth
    python tools/export_model.py --config-file CFG --format torchscript --output export/ \\
        --sample-image some.jpg MODEL.WEIGHTS model.pth

The graph takes the normalised, padded image batch and returns the raw per-level head
outputs (see ``fcos_d2/export.py``); thresholding, decoding and NMS run in Python with
``fcos_d2.export.postprocess``. Writes ``model.ts`` or ``model.onnx`` and
``export_info.json`` (input layout, output names, strides, normalisation and
post-processing settings), then checks the exported graph against the eager model on the
sample image (and on onnxruntime, when installed).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fcos_d2  # noqa: E402,F401  (Detectron2 compatibility layer, registries)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import detection_utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fcos_d2 import add_fcos_config  # noqa: E402
from fcos_d2.export import (  # noqa: E402
    FCOSRawOutputs,
    export_onnx,
    export_torchscript,
    output_names,
    preprocess,
)


def setup_cfg(args):
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def sample_input(cfg, image_path: str):
    """One Detectron2 input: the given image, or a random one of the test size, resized
    as at test time."""
    if image_path:
        image = detection_utils.read_image(image_path, format=cfg.INPUT.FORMAT)
    else:
        size = cfg.INPUT.MIN_SIZE_TEST
        image = np.random.default_rng(0).integers(0, 256, (size, size * 4 // 3, 3), np.uint8)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}


def export_info(cfg, model, fmt: str, path: str) -> dict:
    post = model.postprocessor
    return {
        "format": fmt,
        "file": os.path.basename(path),
        "input": {
            "name": "images",
            "layout": "NCHW float32, (image - pixel_mean) / pixel_std, zero-padded",
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "channel_order": cfg.INPUT.FORMAT,
            "size_divisibility": model.backbone.size_divisibility,
            "resize_test": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
        },
        "outputs": output_names(model),
        "levels": list(model.head_in_features),
        "strides": list(model.strides),
        "num_classes": model.head.num_classes,
        "postprocess": {
            "score_thresh": post.score_thresh,
            "pre_nms_topk": post.pre_nms_topk,
            "post_nms_topk": post.post_nms_topk,
            "nms_thresh": post.nms_thresh,
            "thresh_with_ctr": post.thresh_with_ctr,
            "score_sqrt": post.score_sqrt,
        },
    }


def max_difference(outputs, reference) -> float:
    return max(float((torch.as_tensor(o) - r).abs().max()) for o, r in zip(outputs, reference))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export a one-stage FCOS to TorchScript or ONNX.")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--sample-image", default="", help="image to trace on (default: random)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    cfg = setup_cfg(args)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    os.makedirs(args.output, exist_ok=True)
    sample = preprocess(model, [sample_input(cfg, args.sample_image)]).tensor
    with torch.no_grad():
        reference = FCOSRawOutputs(model).eval()(sample)

    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        traced = export_torchscript(model, sample, path)
        with torch.no_grad():
            difference = max_difference(traced(sample), reference)
        print(f"TorchScript vs eager, max |difference|: {difference:.3g}")
    else:
        path = os.path.join(args.output, "model.onnx")
        export_onnx(model, sample, path, opset=args.opset)
        try:
            import onnxruntime
        except ImportError:
            print("onnxruntime is not installed: the ONNX file is not checked")
        else:
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            outputs = session.run(None, {"images": sample.contiguous().numpy()})
            difference = max_difference(outputs, reference)
            print(f"onnxruntime vs eager, max |difference|: {difference:.3g}")
    info_path = os.path.join(args.output, "export_info.json")
    with open(info_path, "w") as f:
        json.dump(export_info(cfg, model, args.format, path), f, indent=2)
    print(f"Wrote {path} and {info_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
