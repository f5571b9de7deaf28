"""FCOS target assignment: which ground-truth box, if any, each location regresses."""
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable

__all__ = ["compute_locations", "FCOSTargetAssigner", "centerness_targets"]

INF = float("inf")


def compute_locations(
    height: int,
    width: int,
    stride: int,
    device: Optional[torch.device] = None,
    offset: float = 0.5,
    spacing: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Image coordinates (x, y) of every location of an (height, width) feature map.

    Location (i, j) of a level with stride s sits at (offset * s + j * sx, offset * s +
    i * sy), where (sy, sx) is ``spacing`` (default (s, s)). FCOS: offset 0.5, i.e.
    (s // 2 + j * s, s // 2 + i * s) for the even strides of FPN levels. torchvision's
    anchor centres: offset 0 and spacing (padded input size // level size) per axis.
    Returns a (height * width, 2) float tensor in row-major order.
    """
    step_y, step_x = spacing if spacing is not None else (stride, stride)
    shift = offset * stride
    xs = torch.arange(width, dtype=torch.float32, device=device) * step_x + shift
    ys = torch.arange(height, dtype=torch.float32, device=device) * step_y + shift
    y, x = torch.meshgrid([ys, xs], indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (M, 4) ltrb distances."""
    left_right = reg_targets[:, [0, 2]]
    top_bottom = reg_targets[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values.clamp(min=1e-12)) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values.clamp(min=1e-12)
    )
    return torch.sqrt(ratio.clamp(min=0))


@lru_cache(maxsize=32)
def _level_attributes(
    level_sizes: Tuple[int, ...],
    strides: Tuple[int, ...],
    size_ranges: Tuple[Tuple[float, float], ...],
    device: torch.device,
) -> Tuple[Tensor, Tensor]:
    stride = torch.cat(
        [torch.full((n,), float(s), device=device) for n, s in zip(level_sizes, strides)]
    )  # (R,)
    ranges = torch.cat(
        [torch.tensor(r, device=device).expand(n, 2) for n, r in zip(level_sizes, size_ranges)]
    )  # (R, 2)
    return stride, ranges


class FCOSTargetAssigner:
    """Assigns every location of every level to at most one ground-truth box.

    A location is a positive candidate for a box when it lies inside the box (or, with
    center sampling, inside the box's central region of radius ``pos_radius * stride``,
    clipped to the box) and the largest of its four distances falls in its level's
    size-of-interest range. Among several candidate boxes it takes the smallest-area one.
    Crowd boxes are never positive; negatives inside a crowd box are ignored (label -1).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
        center_sample: bool = True,
        pos_radius: float = 1.5,
        max_pairs_per_chunk: int = 1 << 22,
    ):
        """
        Args:
            num_classes: K; background locations get label K.
            sizes_of_interest: the L - 1 boundaries between the L levels' ranges, so
                level i takes max distances in [soi[i-1], soi[i]] (open-ended at both
                ends).
            max_pairs_per_chunk: bound on locations x boxes handled at once (memory).

        The levels' strides are not kept here: they come with the locations at each
        call, from the one place that knows them (the backbone's output shapes).
        """
        self.num_classes = num_classes
        bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [INF]
        self.size_ranges = tuple(zip(bounds[:-1], bounds[1:]))
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.max_pairs_per_chunk = max_pairs_per_chunk

    @classmethod
    def from_config(cls, cfg):
        fcos = cfg.MODEL.FCOS
        return {
            "num_classes": fcos.NUM_CLASSES,
            "sizes_of_interest": fcos.SIZES_OF_INTEREST,
            "center_sample": fcos.CENTER_SAMPLE,
            "pos_radius": fcos.POS_RADIUS,
        }

    def check_num_levels(self, num_levels: int) -> None:
        """Fail, naming the key, unless there is one size range per level."""
        if len(self.size_ranges) != num_levels:
            raise ValueError(
                f"MODEL.FCOS.SIZES_OF_INTEREST needs {num_levels - 1} values for "
                f"{num_levels} levels, got {[b for _, b in self.size_ranges[:-1]]}"
            )

    def level_attributes(
        self, locations: List[Tensor], strides: Sequence[int]
    ) -> Tuple[Tensor, Tensor]:
        """Per-location stride (R,) and size-of-interest range (R, 2) for all levels
        (cached per level sizes; do not modify them in place)."""
        self.check_num_levels(len(locations))
        return _level_attributes(
            tuple(len(loc) for loc in locations),
            tuple(int(s) for s in strides),
            self.size_ranges,
            locations[0].device,
        )

    @torch.no_grad()
    def __call__(
        self,
        locations: List[Tensor],
        strides: Sequence[int],
        gt_boxes: List[Tensor],
        gt_classes: List[Tensor],
        gt_is_crowd: Optional[List[Optional[Tensor]]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            locations: per level, (Ri, 2) image coordinates from :func:`compute_locations`.
            strides: per level, its stride.
            gt_boxes: per image, (Gn, 4) XYXY boxes in input-image coordinates.
            gt_classes: per image, (Gn,) class indices in [0, K).
            gt_is_crowd: per image, optional (Gn,) bools.

        Returns:
            labels: (N, R) int64; class index for positives, K for background, -1 ignored.
            reg_targets: (N, R, 4) float; (l, t, r, b) divided by the location's stride
                (only meaningful at positives).
        """
        points = torch.cat(locations, dim=0)
        strides, ranges = self.level_attributes(locations, strides)
        labels, reg_targets = [], []
        for n, (boxes, classes) in enumerate(zip(gt_boxes, gt_classes)):
            crowd = None if gt_is_crowd is None else gt_is_crowd[n]
            lab, reg = self.assign_image(points, strides, ranges, boxes, classes, crowd)
            labels.append(lab)
            reg_targets.append(reg)
        return torch.stack(labels), torch.stack(reg_targets)

    def assign_image(
        self,
        points: Tensor,
        strides: Tensor,
        ranges: Tensor,
        boxes: Tensor,
        classes: Tensor,
        is_crowd: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Targets of one image over all R locations; see :meth:`__call__`."""
        num_points = len(points)
        labels = torch.full(
            (num_points,), self.num_classes, dtype=torch.int64, device=points.device
        )
        reg_targets = points.new_zeros((num_points, 4))
        if len(boxes) == 0:
            return labels, reg_targets
        boxes = boxes.to(points.dtype)
        if is_crowd is None:
            is_crowd = torch.zeros(len(boxes), dtype=torch.bool, device=points.device)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

        chunk = max(1, self.max_pairs_per_chunk // len(boxes))
        for start in range(0, num_points, chunk):
            sl = slice(start, min(start + chunk, num_points))
            lab, reg = self._assign_chunk(
                points[sl], strides[sl], ranges[sl], boxes, classes, areas, is_crowd
            )
            labels[sl] = lab
            reg_targets[sl] = reg
        return labels, reg_targets

    def _assign_chunk(self, points, strides, ranges, boxes, classes, areas, is_crowd):
        candidate, inside_box, ltrb = self.candidates(points, strides, ranges, boxes, is_crowd)
        positive, gt_index = self.match(candidate, areas)

        labels = torch.where(positive, classes[gt_index], self.num_classes)
        # computed even without crowd boxes: testing for them would sync with a GPU
        in_crowd = (inside_box & is_crowd[None, :]).any(dim=1)
        labels = torch.where(in_crowd & ~positive, -1, labels)
        reg = ltrb[torch.arange(len(points), device=points.device), gt_index]
        reg = reg / strides[:, None]
        return labels, reg

    def candidates(
        self, points: Tensor, strides: Tensor, ranges: Tensor, boxes: Tensor, is_crowd: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Which boxes each location is a positive candidate for.

        Args:
            points, strides, ranges: (R, 2), (R,), (R, 2), see :meth:`level_attributes`.
            boxes, is_crowd: (G, 4) XYXY boxes and (G,) bools.
        Returns:
            (R, G) candidate mask (inside the box or its center region, max distance in
            the level's range, not crowd), (R, G) inside-box mask, (R, G, 4) ltrb distances.
        """
        x = points[:, 0, None]  # (R, 1)
        y = points[:, 1, None]
        ltrb = torch.stack(
            [x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2
        )  # (R, G, 4)
        inside_box = ltrb.min(dim=2).values > 0
        if self.center_sample:
            inside = self._inside_center_region(x, y, strides, boxes)
        else:
            inside = inside_box
        max_dist = ltrb.max(dim=2).values
        in_range = (max_dist >= ranges[:, :1]) & (max_dist <= ranges[:, 1:])
        return inside & in_range & ~is_crowd[None, :], inside_box, ltrb

    @staticmethod
    def match(candidate: Tensor, areas: Tensor) -> Tuple[Tensor, Tensor]:
        """(R,) positive mask and (R,) index of the smallest-area candidate box of each
        location (meaningless where not positive), from an (R, G) candidate mask."""
        cand_area = torch.where(candidate, areas[None, :].expand_as(candidate), INF)
        min_area, gt_index = cand_area.min(dim=1)
        return min_area < INF, gt_index

    def _inside_center_region(self, x: Tensor, y: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
        """(R, G) mask: location inside the box's center region, clipped to the box."""
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        radius = strides[:, None] * self.pos_radius  # (R, 1)
        x0 = torch.maximum(cx - radius, boxes[:, 0])
        y0 = torch.maximum(cy - radius, boxes[:, 1])
        x1 = torch.minimum(cx + radius, boxes[:, 2])
        y1 = torch.minimum(cy + radius, boxes[:, 3])
        return (x > x0) & (y > y0) & (x1 > x) & (y1 > y)
