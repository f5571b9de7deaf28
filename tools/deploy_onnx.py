#!/usr/bin/env python
"""Run an end-to-end FCOS ONNX graph on images with ONNX Runtime alone.

    python tools/deploy_onnx.py --model export/model.onnx --input photos/ \\
        --output results.json [--draw drawn/] [--confidence-threshold 0.5]

Needs only onnxruntime, numpy, OpenCV and the standard library -- no torch, no
Detectron2, no fcos_d2 -- so it can be copied next to ``model.onnx`` onto a deployment
target. The graph (written by ``tools/export_model.py --end-to-end``) does the resize,
normalisation, network, decoding and NMS; this script reads images, feeds them in the
channel order ``export_info.json`` names (RGB if that file is absent), and writes:

* ``--output`` (JSON): ``{"model": ..., "classes": [names] or null, "images": [...],
  "failed": [...]}``, one ``images`` entry per image read, in sorted file-name order:
  ``file``, ``height``, ``width``, ``notes`` (conversions, e.g. a 16-bit image scaled to 8
  bits) and ``detections``, each ``{"box": [x0, y0, x1, y1] (the image's pixels),
  "score", "class" (index), "class_name" (when export_info.json lists class names)}``,
  best score first, only those with score >= ``--confidence-threshold``;
* ``--draw DIR``: each image with its boxes, class names and scores, as ``DIR/<file>``.

Grayscale images are repeated over 3 channels and alpha channels dropped, as Detectron2's
``read_image`` does. A file that cannot be used (not decodable, a truncated JPEG,
floating-point pixels, or the model failing on it) is reported on stderr and in
``failed`` (``{"file", "error"}``); the other files are still processed, and the exit
status is 1.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
import onnxruntime

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path):
    """A file, or the image files of a folder in sorted name order."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise SystemExit(f"--input {path}: the folder has no image files {IMAGE_EXTENSIONS}")
        return [os.path.join(path, n) for n in names]
    if not os.path.isfile(path):
        raise SystemExit(f"--input {path}: no such file or folder")
    return [path]


def load_info(model_path):
    """export_info.json next to the model, or {} when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "export_info.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


class BadImageError(Exception):
    """A file that cannot be used as an image; the message names the file and says why."""


def read_image(path, channel_order):
    """uint8 (H, W, 3) in ``channel_order`` ("RGB" or "BGR"), and the notes on what was
    converted (an empty list for an 8-bit image).

    As Detectron2's ``read_image``: grayscale is repeated over 3 channels, an alpha channel
    dropped, the EXIF orientation applied. 16-bit images are scaled to 8 bits (x / 257).
    Raises :class:`BadImageError` for files OpenCV cannot decode, truncated JPEGs and
    floating-point images.
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)  # BGR, depth kept
    if image is None:
        raise BadImageError(
            f"{path}: not an image OpenCV can decode (damaged, truncated or another kind of file)"
        )
    check_jpeg_complete(path)
    notes = []
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
        notes.append("16-bit image scaled to 8 bits")
    elif image.dtype != np.uint8:
        raise BadImageError(f"{path}: {image.dtype} pixels; the model takes 8- or 16-bit images")
    if channel_order == "RGB":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image), notes


def check_jpeg_complete(path):
    """Raise BadImageError for a JPEG whose end-of-image marker is missing: OpenCV decodes
    such a truncated file with only a warning, the missing rows grey."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":  # not a JPEG
            return
        f.seek(max(os.path.getsize(path) - 64, 0))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise BadImageError(f"{path}: the JPEG data ends early (truncated file)")


class Detector:
    """ONNX Runtime running an end-to-end graph: image -> boxes, scores, classes."""

    def __init__(self, model_path, threads=0):
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            model_path, options, providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or outputs != ["boxes", "scores", "classes"]:
            raise SystemExit(
                f"{model_path} is not an end-to-end FCOS graph (inputs "
                f"{[i.name for i in inputs]}, outputs {outputs}); export it with "
                "tools/export_model.py --end-to-end"
            )
        self.input_name = inputs[0].name

    def __call__(self, image):
        boxes, scores, classes = self.session.run(None, {self.input_name: image})
        return boxes, scores, classes


def detections_json(boxes, scores, classes, threshold, class_names):
    result = []
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        if score < threshold:
            continue
        entry = {"box": [round(v, 3) for v in box], "score": score, "class": int(cls)}
        if class_names:
            entry["class_name"] = class_names[cls] if cls < len(class_names) else str(cls)
        result.append(entry)
    return result


def draw(image_bgr, detections):
    """A copy of the image with each detection's box, class name (or index) and score."""
    out = image_bgr.copy()
    for det in detections:
        x0, y0, x1, y1 = (int(round(v)) for v in det["box"])
        colour = tuple(int(c) for c in np.random.default_rng(det["class"]).integers(64, 256, 3))
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, 2)
        label = f"{det.get('class_name', det['class'])} {det['score']:.2f}"
        cv2.putText(out, label, (x0, max(y0 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return out


def detect(detector, path, image, threshold, class_names):
    """The image's detections as JSON entries; BadImageError naming the file when ONNX
    Runtime fails on it."""
    try:
        boxes, scores, classes = detector(image)
    except Exception as e:  # ONNX Runtime's errors share no public base class
        height, width = image.shape[:2]
        raise BadImageError(
            f"{path}: the model failed on this {width}x{height} image: {type(e).__name__}: {e}"
        ) from e
    return detections_json(boxes, scores, classes, threshold, class_names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model.onnx written with --end-to-end")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="results JSON file")
    parser.add_argument("--draw", default="", help="folder for pictures with the boxes")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.model):
        raise SystemExit(f"--model {args.model}: no such file")
    info = load_info(args.model)
    if info and not info.get("end_to_end", False):
        raise SystemExit(f"{args.model}: export_info.json describes a raw graph, not --end-to-end")
    channel_order = info.get("input", {}).get("channel_order", "RGB")
    if channel_order not in ("RGB", "BGR"):
        raise SystemExit(f"export_info.json: unsupported input channel order {channel_order!r}")
    class_names = info.get("class_names") or None
    detector = Detector(args.model, args.threads)
    if args.draw:
        os.makedirs(args.draw, exist_ok=True)

    images, failed = [], []
    paths = list_images(args.input)
    for index, path in enumerate(paths):
        name = os.path.basename(path)
        try:
            image, notes = read_image(path, channel_order)
            detections = detect(detector, path, image, args.confidence_threshold, class_names)
        except BadImageError as e:
            failed.append({"file": name, "error": str(e)})
            print(f"[{index + 1}/{len(paths)}] FAILED {e}", file=sys.stderr, flush=True)
            continue
        images.append({"file": name, "height": image.shape[0], "width": image.shape[1],
                       "notes": notes, "detections": detections})
        if args.draw:
            bgr = image[:, :, ::-1] if channel_order == "RGB" else image
            cv2.imwrite(os.path.join(args.draw, name), draw(bgr, detections))
        print(f"[{index + 1}/{len(paths)}] {name}: {len(detections)} detections"
              + "".join(f"; {n}" for n in notes), flush=True)
    with open(args.output, "w") as f:
        json.dump({"model": args.model, "classes": class_names, "images": images,
                   "failed": failed}, f, indent=1)
    print(f"{len(images)} images, {sum(len(i['detections']) for i in images)} detections "
          f"-> {args.output}")
    if failed:
        print(f"{len(failed)} of {len(paths)} files failed: "
              + ", ".join(f["file"] for f in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
