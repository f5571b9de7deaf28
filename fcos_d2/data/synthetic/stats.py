"""Statistics of a split: images, boxes per class, crowd annotations, and the FPN levels
on which fcos_d2's own target assignment (:class:`FCOSTargetAssigner`) gives each box
positive locations."""
import contextlib
import math
from collections import defaultdict
from typing import Dict, Iterator, List, Optional

import torch
from detectron2.config import CfgNode
from torch import Tensor

from ...config import setup_cfg
from ...modeling.targets import FCOSTargetAssigner, compute_locations


def level_name(stride: int) -> str:
    """"P3" for stride 8, "P7" for stride 128."""
    return f"P{int(math.log2(stride))}"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread: the tensors here are a few thousand values, and more threads
    only add overhead (ten times as much on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def positive_levels(
    boxes: Tensor, height: int, width: int, assigner: FCOSTargetAssigner, strides: List[int]
) -> Tensor:
    """Which levels give each box at least one positive location, each box alone.

    Args:
        boxes: (N, 4) XYXY boxes of one (height, width) image.
        assigner: the target assignment, e.g. ``FCOSTargetAssigner(cfg)``.
        strides: the levels' strides; a level of stride s has ceil(height / s) x
            ceil(width / s) locations.

    Returns:
        (N, L) bool.
    """
    locations = [
        compute_locations(math.ceil(height / s), math.ceil(width / s), s) for s in strides
    ]
    # every box is its own "image", so that other boxes take none of its locations
    labels, _ = assigner(
        locations,
        strides,
        list(boxes.float()[:, None, :]),
        [torch.zeros(1, dtype=torch.int64)] * len(boxes),
        [torch.zeros(1, dtype=torch.bool)] * len(boxes),
    )  # (N, R)
    positive = (labels >= 0) & (labels != assigner.num_classes)
    per_level = positive.split([len(loc) for loc in locations], dim=1)
    return torch.stack([p.any(dim=1) for p in per_level], dim=1)


def dataset_statistics(coco: Dict, cfg: Optional[CfgNode] = None) -> Dict:
    """Counts of a COCO dict: images, empty images, boxes per class, crowd annotations,
    and non-crowd boxes per FPN level with at least one positive location.

    Args:
        coco: a COCO-format dict (``images``, ``annotations``, ``categories``).
        cfg: the config whose ``MODEL.FCOS`` assignment keys and ``FPN_STRIDES`` are used;
            default: :func:`fcos_d2.setup_cfg`'s defaults. Images are taken at their size
            in the json (no resizing).
    """
    cfg = setup_cfg(opts=["MODEL.DEVICE", "cpu"]) if cfg is None else cfg
    assigner = FCOSTargetAssigner(cfg)
    strides = [int(s) for s in cfg.MODEL.FCOS.FPN_STRIDES]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    per_class = {name: 0 for name in names.values()}
    boxes_per_image = defaultdict(list)
    annotated_images = set()
    crowd = 0
    for ann in coco["annotations"]:
        annotated_images.add(ann["image_id"])
        if ann["iscrowd"]:
            crowd += 1
            continue
        per_class[names[ann["category_id"]]] += 1
        x, y, w, h = ann["bbox"]
        boxes_per_image[ann["image_id"]].append([x, y, x + w, y + h])
    reached = torch.zeros(len(strides), dtype=torch.int64)
    with one_thread():
        for image_id, boxes in boxes_per_image.items():
            levels = positive_levels(torch.tensor(boxes), *sizes[image_id], assigner, strides)
            reached += levels.sum(dim=0)
    return {
        "images": len(coco["images"]),
        "empty_images": len(coco["images"]) - len(annotated_images),
        "boxes": sum(per_class.values()),
        "boxes_per_class": per_class,
        "crowd_annotations": crowd,
        "boxes_per_level": {level_name(s): int(n) for s, n in zip(strides, reached)},
    }


def format_statistics(split: str, stats: Dict) -> str:
    """Human-readable summary of :func:`dataset_statistics`."""
    lines = [
        f"{split}: {stats['images']} images, {stats['boxes']} boxes, "
        f"{stats['empty_images']} empty images, {stats['crowd_annotations']} crowd annotations",
        "  boxes per class: " + ", ".join(f"{k}={v}" for k, v in stats["boxes_per_class"].items()),
        "  boxes per FPN level with >=1 positive location (FCOSTargetAssigner): "
        + ", ".join(f"{k}={v}" for k, v in stats["boxes_per_level"].items()),
    ]
    return "\n".join(lines)
