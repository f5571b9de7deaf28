#!/usr/bin/env python
"""Run a trained detector on images, a folder or a video; save drawings and COCO results.

    python demo.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --input datasets/fcos_demo/val/images --output demo_out/ \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/fcos_R_18_demo/model_final.pth
    python demo.py --config-file CFG --input a.jpg b.png clip.mp4 --output out/ --opts ...

For each input image, ``OUTPUT/<file name>`` shows its detections (boxes, class names,
scores; Detectron2's Visualizer); a video gives ``OUTPUT/<name>.mp4``. All detections
with score >= the threshold go to ``OUTPUT/results.json`` in COCO's results format
(``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``), and
``OUTPUT/images.json`` lists the images in COCO's format: ids number the inputs from 1
in order (folders in sorted file-name order, then each video's frames). Category ids
are the dataset's own (the inverse of ``thing_dataset_id_to_contiguous_id`` of
``DATASETS.TEST[0]``'s metadata) when it has them, else the model's class indices.
"""
import argparse
import json
import os
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import tqdm

import fcos_d2  # registers FCOS in Detectron2; setup_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from fcos_d2.data.mapper import read_image
from fcos_d2.data.register import setup_datasets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="yacs config of the model")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or videos")
    parser.add_argument("--output", required=True, help="folder for drawings and JSON")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="keep detections with at least this score")
    parser.add_argument("--dataset", default=None, metavar="SPEC",
                        help="the model's dataset, as train_net.py --test-dataset SPEC "
                        "(name=N,json=FILE,images=DIR or a VOC SPEC): its class names are drawn")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def setup_cfg(args: argparse.Namespace):
    cfg = fcos_d2.setup_cfg(args.config_file, args.opts, freeze=False)
    if args.dataset:  # its metadata names the classes (DATASETS.TEST[0])
        setup_datasets(cfg, test=[args.dataset], opts=args.opts)
    # Let the models' own thresholds pass every detection the final threshold t keeps:
    # an R-CNN's score is its class probability; an FCOS score sqrt(cls * ctr) >= t needs
    # cls >= t^2 (cls >= t for cls * ctr), and FCOS thresholds cls first.
    t = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, t)
    fcos = cfg.MODEL.FCOS
    fcos.INFERENCE_TH_TEST = min(fcos.INFERENCE_TH_TEST, t * t if fcos.SCORE_SQRT else t)
    cfg.freeze()
    return cfg


def expand_inputs(paths: List[str]) -> List[str]:
    """Files in order: folders expanded to their images in sorted name order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
            files += [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path!r} does not exist")
    return files


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def count_frames(paths: List[str]) -> int:
    total = 0
    for path in paths:
        if is_video(path):
            video = cv2.VideoCapture(path)
            total += max(int(video.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            video.release()
        else:
            total += 1
    return total


def video_fps(path: str) -> float:
    video = cv2.VideoCapture(path)
    fps = video.get(cv2.CAP_PROP_FPS)
    video.release()
    return fps if fps and fps > 0 else 25.0


def video_frames(path: str) -> Iterator[np.ndarray]:
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise OSError(f"cannot open video {path!r}")
    try:
        while True:
            ok, frame = video.read()
            if not ok:
                return
            yield frame
    finally:
        video.release()


def category_ids(metadata) -> Optional[Dict[int, int]]:
    """Contiguous class index -> the dataset's category id, when the metadata has them."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    return {v: k for k, v in mapping.items()} if mapping else None


def coco_results(
    instances: Instances, image_id: int, to_category: Optional[Dict[int, int]]
) -> List[dict]:
    """COCO results entries (XYWH boxes) of one image's detections."""
    boxes = instances.pred_boxes.tensor.tolist()
    results = []
    for (x0, y0, x1, y1), score, cls in zip(
        boxes, instances.scores.tolist(), instances.pred_classes.tolist()
    ):
        results.append({
            "image_id": image_id,
            "category_id": to_category[cls] if to_category else cls,
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(score, 5),
        })
    return results


class Demo:
    """Runs the predictor on one BGR image at a time; keeps the COCO records."""

    def __init__(self, cfg, threshold: float):
        self.predictor = DefaultPredictor(cfg)
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(name)
        self.to_category = category_ids(self.metadata)
        self.threshold = threshold
        self.images: List[dict] = []
        self.results: List[dict] = []

    def __call__(self, image: np.ndarray, file_name: str) -> np.ndarray:
        """Detect, record, and return the drawing (BGR, the image's size)."""
        instances = self.predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= self.threshold]
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name,
                            "height": image.shape[0], "width": image.shape[1]})
        self.results += coco_results(instances, image_id, self.to_category)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def unique_path(folder: str, name: str, taken: set) -> str:
    """``folder/name``, with ``_1``, ``_2``... added when inputs share a file name."""
    stem, ext = os.path.splitext(name)
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{stem}_{k}{ext}"
    taken.add(candidate)
    return os.path.join(folder, candidate)


def run(args: argparse.Namespace) -> Tuple[str, int]:
    cfg = setup_cfg(args)
    demo = Demo(cfg, args.confidence_threshold)
    files = expand_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    taken: set = set()
    with tqdm.tqdm(total=count_frames(files), unit="image") as progress:
        for path in files:
            if not is_video(path):
                drawing = demo(read_image(path, format="BGR"), path)
                cv2.imwrite(unique_path(args.output, os.path.basename(path), taken), drawing)
                progress.update(1)
                continue
            stem = os.path.splitext(os.path.basename(path))[0]
            out_path = unique_path(args.output, stem + ".mp4", taken)
            fps = video_fps(path)
            writer = None
            for index, frame in enumerate(video_frames(path)):
                drawing = np.ascontiguousarray(demo(frame, f"{path}#frame{index}"))
                if writer is None:
                    height, width = drawing.shape[:2]
                    writer = cv2.VideoWriter(
                        out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                    )
                writer.write(drawing)
                progress.update(1)
            if writer is not None:
                writer.release()
    categories = [
        {"id": demo.to_category[i] if demo.to_category else i, "name": name}
        for i, name in enumerate(demo.metadata.get("thing_classes", []))
    ]
    with open(os.path.join(args.output, "images.json"), "w") as f:
        json.dump({"images": demo.images, "categories": categories}, f, indent=1)
    results_path = os.path.join(args.output, "results.json")
    with open(results_path, "w") as f:
        json.dump(demo.results, f)
    return results_path, len(demo.results)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    results_path, count = run(args)
    print(f"{count} detections with score >= {args.confidence_threshold} -> {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
