"""Layout: what goes into an image (empty, crowd, how many objects) and where, so that
every object stays visible; :func:`generate_image` composes one image."""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .config import CLASS_SHAPES, DEMO_CLASSES, SyntheticConfig
from .draw import (
    clip_polygon,
    draw_background,
    draw_clutter,
    jittered_color,
    paint,
    shape_label_map,
    shape_polygon,
    tight_box,
)


_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass
class PlacedObject:
    """One annotation of an image, with the pixels it was drawn on (z-order = list order)."""

    category: int  # 0-based index into DEMO_CLASSES
    bbox: Tuple[int, int, int, int]  # XYWH, tight box of ``mask``
    segmentation: List[List[float]]
    mask: np.ndarray = field(repr=False)  # (H, W) bool, all pixels of the drawn shape(s)
    iscrowd: bool = False

    @property
    def area(self) -> int:
        """Pixel count of the drawn shape (the crowd region's box area for a crowd)."""
        if self.iscrowd:
            return int(self.bbox[2] * self.bbox[3])
        return int(self.mask.sum())


def image_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The random stream of one image; independent of every other image."""
    return np.random.default_rng([config.seed, _SPLIT_IDS[split], index])


def sample_box(
    rng: np.random.Generator, config: SyntheticConfig, size_range: Tuple[float, float],
    region: Optional[Tuple[int, int, int, int]] = None,
) -> Tuple[int, int, int, int]:
    """An XYWH integer box: long side log-uniform in ``size_range``, random aspect ratio,
    placed uniformly inside ``region`` (XYWH; the whole image by default)."""
    if region is None:
        region = (0, 0, config.image_size, config.image_size)
    long_side = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    aspect = math.exp(rng.uniform(-math.log(config.max_aspect), math.log(config.max_aspect)))
    short_side = long_side / max(aspect, 1 / aspect)
    w, h = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    w = min(max(round(w), 2), region[2])
    h = min(max(round(h), 2), region[3])
    x0 = region[0] + int(rng.integers(0, region[2] - w + 1))
    y0 = region[1] + int(rng.integers(0, region[3] - h + 1))
    return (x0, y0, w, h)


def keeps_others_visible(
    new_mask: np.ndarray, visible: List[np.ndarray], full_areas: List[int], min_visible: float
) -> bool:
    """Whether drawing ``new_mask`` on top keeps every earlier object ``min_visible`` visible."""
    for vis, area in zip(visible, full_areas):
        if np.count_nonzero(vis & ~new_mask) < min_visible * area:
            return False
    return True


class _Canvas:
    """An image being composed, with the still-visible pixels of every object on it."""

    def __init__(self, image: np.ndarray, config: SyntheticConfig):
        self.image = image
        self.config = config
        self.objects: List[PlacedObject] = []
        self.visible: List[np.ndarray] = []
        self.full_areas: List[int] = []

    def fits(self, mask: np.ndarray) -> bool:
        """Whether ``mask`` can go on top of the objects placed so far."""
        return keeps_others_visible(mask, self.visible, self.full_areas, self.config.min_visible)

    def add(self, obj: PlacedObject) -> None:
        """Put an (already painted) object on top."""
        self.visible = [vis & ~obj.mask for vis in self.visible]
        self.objects.append(obj)
        self.visible.append(obj.mask.copy())
        self.full_areas.append(int(np.count_nonzero(obj.mask)))


def place_object(rng: np.random.Generator, canvas: _Canvas, category: int) -> bool:
    """Try to draw one object of ``category``; False when no placement kept others visible."""
    config = canvas.config
    shape = CLASS_SHAPES[category]
    size_range = (config.min_object_size, config.max_object_size)
    for _ in range(config.placement_tries):
        box = sample_box(rng, config, size_range)
        labels = shape_label_map(shape, box, config.image_size)
        mask = labels > 0
        if not canvas.fits(mask):
            continue
        fill, outline = jittered_color(rng, category, config.color_jitter)
        paint(canvas.image, labels, box, fill, outline)
        polygon = clip_polygon(shape_polygon(shape, box), config.image_size)
        canvas.add(PlacedObject(category, tight_box(mask), [polygon], mask))
        return True
    return False


def place_crowd(rng: np.random.Generator, canvas: _Canvas, category: int) -> bool:
    """Draw a cluster of small same-class objects, annotated as one ``iscrowd=1`` box."""
    config = canvas.config
    shape = CLASS_SHAPES[category]
    lo, hi = config.crowd_region_size
    rw, rh = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    region = (
        int(rng.integers(0, config.image_size - rw + 1)),
        int(rng.integers(0, config.image_size - rh + 1)),
        rw,
        rh,
    )
    union = np.zeros((config.image_size, config.image_size), dtype=bool)
    num_members = int(rng.integers(config.crowd_members[0], config.crowd_members[1] + 1))
    for _ in range(num_members):
        box = sample_box(rng, config, config.crowd_member_size, region)
        labels = shape_label_map(shape, box, config.image_size)
        fill, outline = jittered_color(rng, category, config.color_jitter)
        paint(canvas.image, labels, box, fill, outline)
        union |= labels > 0
    bbox = tight_box(union)
    x, y, w, h = bbox
    polygon = [float(v) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]
    canvas.add(PlacedObject(category, bbox, [polygon], union, iscrowd=True))
    return True


def plan_image(rng: np.random.Generator, config: SyntheticConfig) -> Tuple[bool, int]:
    """(has_crowd, number of regular objects to try) of one image."""
    u = rng.random()
    if u < config.empty_prob:
        return False, 0
    if u < config.empty_prob + config.crowd_prob:
        return True, int(rng.integers(0, config.max_objects))
    return False, int(rng.integers(1, config.max_objects + 1))


def generate_image(
    split: str, index: int, config: SyntheticConfig = SyntheticConfig()
) -> Tuple[np.ndarray, List[PlacedObject]]:
    """Draw image ``index`` of a split: (H, W, 3) uint8 RGB and its objects in z-order."""
    rng = image_rng(config, split, index)
    has_crowd, num_objects = plan_image(rng, config)
    image = draw_clutter(rng, draw_background(rng, config.image_size), config)
    canvas = _Canvas(image, config)
    if has_crowd:
        place_crowd(rng, canvas, int(rng.integers(len(DEMO_CLASSES))))
    for _ in range(num_objects):
        place_object(rng, canvas, int(rng.integers(len(DEMO_CLASSES))))
    return canvas.image, canvas.objects


def visible_fractions(objects: Sequence[PlacedObject]) -> List[float]:
    """Visible fraction of each object's pixels given the z-order (later on top)."""
    fractions = []
    for i, obj in enumerate(objects):
        covered = np.zeros_like(obj.mask)
        for later in objects[i + 1:]:
            covered |= later.mask
        fractions.append(float((obj.mask & ~covered).sum()) / max(int(obj.mask.sum()), 1))
    return fractions
