#!/usr/bin/env python
"""The FCOS paper's two diagnostics of its target assignment, on a registered dataset.

* **best possible recall (BPR)**: the share of non-crowd ground-truth boxes that get at
  least one positive location (after ambiguous locations go to their smallest box);
* **ambiguous positives**: among the locations that are positive candidates for some box,
  the share that are candidates for boxes of more than one class (also reported: for
  more than one box, whatever the classes).

Both for four settings: {one level (P3 only, every box assigned there), FPN levels
P3-P7 with MODEL.FCOS.SIZES_OF_INTEREST} x {without, with center sampling}. Images are
sized as at test time (ResizeShortestEdge with INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and a
level of stride s has ceil(height / s) x ceil(width / s) locations. The result is a
markdown table:

    python tools/analyze_assignment.py --dataset fcos_demo_val \\
        --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml [KEY VALUE ...]
"""
import argparse
import math
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import fcos_d2  # registers the datasets; setup_cfg
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BoxMode

from fcos_d2.data.register import register_dataset
from fcos_d2.modeling.targets import FCOSTargetAssigner, compute_locations


@dataclass
class Counts:
    """What one setting found over the images seen so far."""

    boxes: int = 0  # non-crowd ground-truth boxes
    recalled: int = 0  # of them, boxes with at least one positive location
    candidates: int = 0  # locations that are positive candidates for some box
    ambiguous: int = 0  # of them, candidates for boxes of two or more classes
    ambiguous_any: int = 0  # of them, candidates for two or more boxes

    @property
    def best_possible_recall(self) -> float:
        return self.recalled / max(self.boxes, 1)

    @property
    def ambiguous_share(self) -> float:
        return self.ambiguous / max(self.candidates, 1)

    @property
    def ambiguous_any_share(self) -> float:
        return self.ambiguous_any / max(self.candidates, 1)


@dataclass
class ImageBoxes:
    """One image's ground truth at test-time size."""

    height: int
    width: int
    boxes: Tensor  # (G, 4) XYXY
    classes: Tensor  # (G,) int64
    is_crowd: Tensor  # (G,) bool


def build_settings(
    cfg: CfgNode, single_stride: Optional[int] = None
) -> Dict[Tuple[str, bool], Tuple[FCOSTargetAssigner, List[int]]]:
    """The four (assigner, level strides) compared, keyed by (levels, center sampling);
    the other assignment keys as in ``cfg``."""
    fcos = cfg.MODEL.FCOS
    stride = int(single_stride or fcos.FPN_STRIDES[0])
    levels = {
        f"P{int(math.log2(stride))} only (no FPN)": ([stride], []),
        "FPN (P3-P7)": ([int(s) for s in fcos.FPN_STRIDES], list(fcos.SIZES_OF_INTEREST)),
    }
    settings = {}
    for level_name, (strides, sizes) in levels.items():
        for center_sample in (False, True):
            assigner = FCOSTargetAssigner(
                num_classes=fcos.NUM_CLASSES,
                sizes_of_interest=sizes,
                center_sample=center_sample,
                pos_radius=fcos.POS_RADIUS,
            )
            settings[(level_name, center_sample)] = (assigner, strides)
    return settings


def resized_size(height: int, width: int, cfg: CfgNode) -> Tuple[int, int]:
    """(height, width) after the test-time ResizeShortestEdge (0: no resize)."""
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return height, width
    return ResizeShortestEdge.get_output_shape(
        height, width, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )


def image_boxes(record: dict, cfg: CfgNode) -> ImageBoxes:
    """The record's boxes resized to test-time size, clipped, empty ones dropped."""
    height, width = record["height"], record["width"]
    new_h, new_w = resized_size(height, width, cfg)
    annotations = record.get("annotations", [])
    boxes = torch.tensor(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
        dtype=torch.float32,
    ).reshape(-1, 4)
    boxes = boxes * torch.tensor([new_w / width, new_h / height] * 2)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
    classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
    crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ImageBoxes(new_h, new_w, boxes[keep], classes[keep], crowd[keep])


def count_image(
    assigner: FCOSTargetAssigner, level_strides: List[int], image: ImageBoxes, counts: Counts
) -> None:
    """Add one image's boxes, recalled boxes, candidates and ambiguous ones to ``counts``."""
    locations = [
        compute_locations(math.ceil(image.height / s), math.ceil(image.width / s), s)
        for s in level_strides
    ]
    points = torch.cat(locations)
    strides, ranges = assigner.level_attributes(locations, level_strides)
    boxes = image.boxes
    counts.boxes += int((~image.is_crowd).sum())
    if len(boxes) == 0:
        return
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    class_onehot = torch.nn.functional.one_hot(image.classes).float()  # (G, C)
    recalled = torch.zeros(len(boxes), dtype=torch.bool)
    chunk = max(1, assigner.max_pairs_per_chunk // len(boxes))
    for start in range(0, len(points), chunk):
        sl = slice(start, start + chunk)
        candidate = assigner.candidates(
            points[sl], strides[sl], ranges[sl], boxes, image.is_crowd
        )[0]
        positive, gt_index = assigner.match(candidate, areas)
        recalled[gt_index[positive]] = True
        num_classes = (candidate.float() @ class_onehot > 0).sum(dim=1)
        counts.candidates += int(candidate.any(dim=1).sum())
        counts.ambiguous += int((num_classes >= 2).sum())
        counts.ambiguous_any += int((candidate.sum(dim=1) >= 2).sum())
    counts.recalled += int(recalled.sum())


def analyze(
    records: Sequence[dict],
    cfg: CfgNode,
    single_stride: Optional[int] = None,
    progress: bool = False,
) -> Dict[Tuple[str, bool], Counts]:
    """Counts of every setting of :func:`build_settings` over ``records``."""
    settings = build_settings(cfg, single_stride)
    results = {name: Counts() for name in settings}
    for i, record in enumerate(records, start=1):
        image = image_boxes(record, cfg)
        for name, (assigner, strides) in settings.items():
            count_image(assigner, strides, image, results[name])
        if progress and (i % 10 == 0 or i == len(records)):
            print(f"\ranalyze_assignment: {i}/{len(records)} images", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return results


def format_table(results: Dict[Tuple[str, bool], Counts]) -> str:
    """The results as a markdown table, one row per setting."""
    lines = [
        "| levels | center sampling | best possible recall | ambiguous positives "
        "(different classes) | ambiguous positives (any 2+ boxes) | positive candidates |",
        "|---|---|---|---|---|---|",
    ]
    for (levels, center_sample), c in results.items():
        lines.append(
            f"| {levels} | {'yes' if center_sample else 'no'} "
            f"| {100 * c.best_possible_recall:.2f}% ({c.recalled}/{c.boxes}) "
            f"| {100 * c.ambiguous_share:.2f}% ({c.ambiguous}) "
            f"| {100 * c.ambiguous_any_share:.2f}% ({c.ambiguous_any}) "
            f"| {c.candidates} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True,
                        help="a registered dataset name, or a SPEC as train_net.py --dataset")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--max-images", type=int, default=0, help="0: all images")
    parser.add_argument(
        "--single-stride", type=int, default=0,
        help="stride of the one level of the no-FPN rows (default: the first FPN stride)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    cfg = fcos_d2.setup_cfg(args.config_file, args.opts)
    if "=" in args.dataset:  # a dataset folder: name=N,json=FILE,images=DIR or a VOC SPEC
        args.dataset = register_dataset(args.dataset)
    records = DatasetCatalog.get(args.dataset)
    if args.max_images:
        records = records[: args.max_images]
    results = analyze(records, cfg, args.single_stride or None, progress=True)
    sizes = f"{cfg.INPUT.MIN_SIZE_TEST}/{cfg.INPUT.MAX_SIZE_TEST}"
    header = (
        f"{args.dataset}: {len(records)} images, test-time size {sizes}, "
        f"SIZES_OF_INTEREST {list(cfg.MODEL.FCOS.SIZES_OF_INTEREST)}, "
        f"POS_RADIUS {cfg.MODEL.FCOS.POS_RADIUS}"
    )
    table = format_table(results)
    print(header + "\n\n" + table)
    return table


if __name__ == "__main__":
    main()
