"""A small synthetic detection dataset ("fcos_demo"), generated on first use.

Every image is drawn from its own random stream, seeded by (seed, split, index), so
image ``i`` is the same whatever the number of images generated or their order. A split
is written as PNG images plus one COCO-format json into a cache folder:

* ``$FCOS_D2_DATASETS`` if set, else
* ``$DETECTRON2_DATASETS/fcos_demo`` if that is set, else
* ``datasets/fcos_demo`` relative to the current directory.

Each split lives in ``<root>/<split>/`` (``images/``, ``annotations.json``,
``stamp.json``). A split is regenerated when its stamp (generator version + parameters)
differs, and written to a temporary folder that is renamed into place at the end, so an
interrupted generation never leaves a half dataset behind.

Content: 256x256 RGB images with a smooth textured background and clutter lines, and
0-8 objects of 5 classes (a distinct shape and colour each), sizes log-uniform from 12
to 200 px (long side), aspect ratios 0.5-2. Objects may overlap, but every object keeps
at least 60% of its pixels visible. About 5% of the images are empty and about 2% carry
one crowd annotation (a cluster of small same-class objects annotated as one
``iscrowd=1`` box).

Run ``python -m fcos_d2.data.synthetic --root DIR`` to generate and print statistics.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

__all__ = [
    "DEMO_CLASSES",
    "IMAGE_SIZE",
    "GENERATOR_VERSION",
    "DEFAULT_SPLIT_SIZES",
    "SyntheticConfig",
    "PlacedObject",
    "SplitFiles",
    "resolve_root",
    "generate_image",
    "generate_split",
    "ensure_demo_dataset",
    "register_demo_datasets",
    "dataset_statistics",
    "center_rule_level",
    "positive_levels",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the drawing or annotation code changes what is generated.
GENERATOR_VERSION = 1
#: Side of the square images, in pixels.
IMAGE_SIZE = 256
#: Class names; category ids in the json are 1..5 in this order.
DEMO_CLASSES: Tuple[str, ...] = (
    "red_rectangle",
    "green_ellipse",
    "blue_triangle",
    "yellow_diamond",
    "magenta_ring",
)
#: The shape drawn for each class, in the order of DEMO_CLASSES.
CLASS_SHAPES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "diamond", "ring")
#: Base RGB colour of each class (jittered per object).
CLASS_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (220, 45, 40),
    (40, 185, 65),
    (45, 75, 225),
    (240, 210, 40),
    (215, 55, 205),
)
#: Number of images per split when not told otherwise.
DEFAULT_SPLIT_SIZES: Dict[str, int] = {"train": 2000, "val": 250}
#: The dataset names registered in Detectron2, and (split, number of leading images).
DATASET_SPLITS: Dict[str, Tuple[str, Optional[int]]] = {
    "fcos_demo_train": ("train", None),
    "fcos_demo_val": ("val", None),
    "fcos_demo_train_mini": ("train", 64),
    "fcos_demo_val_mini": ("val", 32),
}
_SPLIT_IDS = {"train": 0, "val": 1}
_ELLIPSE_POINTS = 24
_PROGRESS_EVERY = 500
_CHUNK = 50

# FCOS defaults used by the per-level statistics.
FPN_STRIDES: Tuple[int, ...] = (8, 16, 32, 64, 128)
SIZES_OF_INTEREST: Tuple[float, ...] = (64, 128, 256, 512)
FPN_LEVEL_NAMES: Tuple[str, ...] = ("P3", "P4", "P5", "P6", "P7")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (all of them go into the cache stamp)."""

    image_size: int = IMAGE_SIZE
    seed: int = 20240
    max_objects: int = 8
    min_object_size: float = 12.0  # long side, pixels
    max_object_size: float = 200.0
    max_aspect: float = 2.0  # w / h drawn log-uniformly in [1 / max_aspect, max_aspect]
    min_visible: float = 0.6  # fraction of an object's pixels that must stay visible
    empty_prob: float = 0.05
    crowd_prob: float = 0.02
    crowd_members: Tuple[int, int] = (6, 12)
    crowd_member_size: Tuple[float, float] = (8.0, 16.0)
    crowd_region_size: Tuple[int, int] = (40, 100)
    placement_tries: int = 25
    color_jitter: int = 20
    clutter_lines: Tuple[int, int] = (2, 8)


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


@dataclass(frozen=True)
class SplitFiles:
    """Where a generated split lives."""

    json_file: str
    image_root: str


# ---------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------


def image_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The random stream of one image; independent of every other image."""
    return np.random.default_rng([config.seed, _SPLIT_IDS[split], index])


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 background: a coarse random grid (grey level plus a gentle
    colour tint) upsampled bicubically into smooth low-frequency noise."""
    grid = int(rng.integers(3, 7))
    base = rng.uniform(70, 180)
    luma = rng.uniform(-45, 45, size=(grid, grid, 1))
    tint = rng.uniform(-20, 20, size=(grid, grid, 3))
    coarse = np.clip(base + luma + tint, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def draw_clutter(
    rng: np.random.Generator, image: np.ndarray, config: SyntheticConfig
) -> np.ndarray:
    """Random greyish lines over the background (distractors without annotations)."""
    size = config.image_size
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(config.clutter_lines[0], config.clutter_lines[1] + 1))):
        grey = rng.uniform(30, 230)
        color = tuple(int(np.clip(grey + rng.uniform(-20, 20), 0, 255)) for _ in range(3))
        points = rng.uniform(-0.1 * size, 1.1 * size, size=4)
        draw.line(points.tolist(), fill=color, width=int(rng.integers(1, 4)))
    return np.asarray(canvas).copy()


def shape_label_map(shape: str, box: Tuple[int, int, int, int], size: int) -> np.ndarray:
    """(size, size) uint8 map of a shape in the XYWH ``box``: 2 fill, 1 outline, 0 outside."""
    x0, y0, w, h = box
    x1, y1 = x0 + w - 1, y0 + h - 1  # PIL's boxes include their last pixel
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    width = 1 if max(w, h) < 32 else 2
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=2, outline=1, width=width)
    elif shape == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=2, outline=1, width=width)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=2, outline=1, width=width)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=2, outline=1, width=width)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=2, outline=1, width=width)
        # The hole's outline is drawn inside its box: grow the box by the outline width so
        # that the hole left empty is the one of ``_ring_inner_box``.
        ix0, iy0, iw, ih = _ring_inner_box(box)
        hole = (ix0 - width, iy0 - width, ix0 + iw - 1 + width, iy0 + ih - 1 + width)
        draw.ellipse(hole, fill=0, outline=1, width=width)
    else:
        raise ValueError(f"Unknown shape {shape!r}")
    return np.asarray(canvas)


def _ring_inner_box(box: Tuple[int, int, int, int]) -> Tuple[float, float, float, float]:
    """XYWH box of a ring's hole: 55% of the outer ellipse, same center."""
    x0, y0, w, h = box
    iw, ih = 0.55 * w, 0.55 * h
    return (x0 + (w - iw) / 2, y0 + (h - ih) / 2, iw, ih)


def _ellipse_points(box: Sequence[float], num: int = _ELLIPSE_POINTS) -> List[Tuple[float, float]]:
    """``num`` points on the ellipse inscribed in an XYWH box (continuous coordinates)."""
    x0, y0, w, h = box
    angles = 2 * np.pi * np.arange(num) / num
    return [(x0 + w / 2 * (1 + math.cos(a)), y0 + h / 2 * (1 + math.sin(a))) for a in angles]


def shape_polygon(shape: str, box: Tuple[int, int, int, int]) -> List[float]:
    """COCO polygon (flat x, y list) of a shape in an XYWH box.

    A ring is one "keyhole" polygon: the outer ellipse, a zero-width cut to the hole, and
    the hole traversed the other way round, so a polygon rasteriser leaves the hole empty.
    """
    x0, y0, w, h = box
    x1, y1 = x0 + w, y0 + h
    if shape == "rectangle":
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape == "ellipse":
        points = _ellipse_points(box)
    elif shape == "triangle":
        points = [(x0, y1), (x1, y1), (x0 + w / 2, y0)]
    elif shape == "diamond":
        points = [(x0 + w / 2, y0), (x1, y0 + h / 2), (x0 + w / 2, y1), (x0, y0 + h / 2)]
    elif shape == "ring":
        outer = _ellipse_points(box)
        inner = _ellipse_points(_ring_inner_box(box))
        points = outer + [outer[0], inner[0]] + inner[::-1]
    else:
        raise ValueError(f"Unknown shape {shape!r}")
    return [round(float(v), 2) for point in points for v in point]


def tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """XYWH box of the True pixels of a non-empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


def jittered_color(
    rng: np.random.Generator, category: int, jitter: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(fill, outline) uint8 RGB colours of one object of a class."""
    fill = np.array(CLASS_COLORS[category], dtype=np.float64) + rng.uniform(-jitter, jitter, 3)
    fill = np.clip(fill, 0, 255)
    return fill.astype(np.uint8), (fill * 0.5).astype(np.uint8)


def paint(
    image: np.ndarray, labels: np.ndarray, box: Tuple[int, int, int, int],
    fill: np.ndarray, outline: np.ndarray,
) -> None:
    """Paint a shape's label map (2 fill, 1 outline, all inside the XYWH ``box``) onto an
    image, in place."""
    x0, y0, w, h = box
    crop, labels = image[y0:y0 + h, x0:x0 + w], labels[y0:y0 + h, x0:x0 + w]
    crop[labels == 2] = fill
    crop[labels == 1] = outline


# ---------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------


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


def clip_polygon(polygon: List[float], size: int) -> List[float]:
    """Clamp polygon coordinates into [0, size]."""
    return [min(max(v, 0.0), float(size)) for v in polygon]


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


# ---------------------------------------------------------------------------------------
# Writing a split
# ---------------------------------------------------------------------------------------


def coco_categories() -> List[Dict]:
    """The COCO ``categories`` list (ids 1..5)."""
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(DEMO_CLASSES)
    ]


def image_file_name(index: int) -> str:
    """File name of image ``index`` inside the split's image folder."""
    return f"{index:06d}.png"


def annotation_records(objects: Iterable[PlacedObject], image_id: int) -> List[Dict]:
    """COCO ``annotations`` entries (without ``id``) of one image's objects."""
    records = []
    for obj in objects:
        records.append(
            {
                "image_id": image_id,
                "category_id": obj.category + 1,
                "bbox": [float(v) for v in obj.bbox],
                "area": float(obj.area),
                "iscrowd": int(obj.iscrowd),
                "segmentation": obj.segmentation,
            }
        )
    return records


def split_stamp(split: str, num_images: int, config: SyntheticConfig) -> Dict:
    """What a cached split must match to be reused."""
    return {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "config": json.loads(json.dumps(asdict(config))),
    }


def _report(message: str) -> None:
    """Progress message: to the logger when logging is set up, else to stderr."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(f"[fcos_demo] {message}", file=sys.stderr, flush=True)


def render_images(
    image_dir: str, split: str, indices: Sequence[int], config: SyntheticConfig
) -> List[Tuple[Dict, List[Dict]]]:
    """Draw and save images; per image its COCO ``images`` entry and its annotations
    (without annotation ids, which are numbered later in image order)."""
    results = []
    for index in indices:
        pixels, objects = generate_image(split, index, config)
        file_name = image_file_name(index)
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=1)
        image_id = index + 1
        height, width = pixels.shape[:2]
        entry = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        results.append((entry, annotation_records(objects, image_id)))
    return results


def _render_chunk(
    args: Tuple[str, str, Sequence[int], SyntheticConfig]
) -> List[Tuple[Dict, List[Dict]]]:
    """Process-pool entry point of :func:`render_images`."""
    return render_images(*args)


def default_workers(num_images: int) -> int:
    """Processes to generate with: up to 4, one for small splits or inside a daemon."""
    if num_images < 200 or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def render_all(
    image_dir: str, split: str, num_images: int, config: SyntheticConfig, workers: int
) -> Iterator[Tuple[Dict, List[Dict]]]:
    """Render every image of a split (in order), in ``workers`` processes."""
    chunk = max(1, min(_CHUNK, -(-num_images // (4 * max(workers, 1)))))
    chunks = [range(i, min(i + chunk, num_images)) for i in range(0, num_images, chunk)]
    jobs = [(image_dir, split, chunk, config) for chunk in chunks]
    if workers <= 1:
        for job in jobs:
            yield from _render_chunk(job)
        return
    with multiprocessing.Pool(workers) as pool:
        for results in pool.imap(_render_chunk, jobs):
            yield from results


def write_split(
    out_dir: str,
    split: str,
    num_images: int,
    config: SyntheticConfig,
    workers: Optional[int] = None,
) -> None:
    """Generate a split into ``out_dir`` (images/, annotations.json, stamp.json last)."""
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    workers = default_workers(num_images) if workers is None else workers
    images, annotations = [], []
    start = time.perf_counter()
    for entry, records in render_all(image_dir, split, num_images, config, workers):
        images.append(entry)
        for record in records:
            annotations.append({"id": len(annotations) + 1, **record})
        if len(images) % _PROGRESS_EVERY == 0 and len(images) < num_images:
            elapsed = time.perf_counter() - start
            _report(f"{split}: {len(images)}/{num_images} images ({elapsed:.1f} s)")
    coco = {
        "info": {"description": "fcos_d2 synthetic shapes", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)
    with open(os.path.join(out_dir, "stamp.json"), "w") as f:
        json.dump(split_stamp(split, num_images, config), f, indent=1)
    _report(
        f"{split}: {num_images} images, {len(annotations)} annotations "
        f"in {time.perf_counter() - start:.1f} s ({workers} process(es))"
    )


def split_files(root: str, split: str) -> SplitFiles:
    """Paths of a split's json and image folder under ``root``."""
    split_dir = os.path.join(root, split)
    return SplitFiles(
        os.path.join(split_dir, "annotations.json"), os.path.join(split_dir, "images")
    )


def is_split_current(root: str, split: str, num_images: int, config: SyntheticConfig) -> bool:
    """Whether ``root`` holds a complete split generated with these parameters."""
    stamp_path = os.path.join(root, split, "stamp.json")
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return stamp == split_stamp(split, num_images, config) and os.path.isfile(
        split_files(root, split).json_file
    )


def generate_split(
    root: str, split: str, num_images: int, config: SyntheticConfig = SyntheticConfig(),
    workers: Optional[int] = None,
) -> SplitFiles:
    """(Re)generate a split under ``root`` atomically: temp folder, then rename into place.

    ``workers`` processes draw the images (default: :func:`default_workers`); the result
    does not depend on it.
    """
    os.makedirs(root, exist_ok=True)
    final_dir = os.path.join(root, split)
    tmp_dir = tempfile.mkdtemp(prefix=f".{split}-tmp-", dir=root)
    try:
        _report(f"generating {num_images} {split} images into {final_dir}")
        write_split(tmp_dir, split, num_images, config, workers)
        if os.path.exists(final_dir):
            stale = tempfile.mkdtemp(prefix=f".{split}-old-", dir=root)
            os.rename(final_dir, os.path.join(stale, split))
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return split_files(root, split)


@contextlib.contextmanager
def split_lock(root: str, split: str) -> Iterator[None]:
    """Exclusive lock on a split across processes (e.g. the ranks of a multi-GPU run);
    a no-op where ``fcntl`` is unavailable."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{split}.lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers(root: str, split: str) -> None:
    """Delete temporary folders that an interrupted generation of ``split`` left behind."""
    for name in os.listdir(root):
        if name.startswith((f".{split}-tmp-", f".{split}-old-")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def resolve_root(root: Optional[str] = None) -> str:
    """The dataset folder: ``root``, else $FCOS_D2_DATASETS, else
    $DETECTRON2_DATASETS/fcos_demo, else ./datasets/fcos_demo."""
    if root:
        return root
    if os.environ.get("FCOS_D2_DATASETS"):
        return os.environ["FCOS_D2_DATASETS"]
    if os.environ.get("DETECTRON2_DATASETS"):
        return os.path.join(os.environ["DETECTRON2_DATASETS"], "fcos_demo")
    return os.path.join("datasets", "fcos_demo")


def ensure_demo_dataset(
    root: Optional[str] = None,
    splits: Sequence[str] = ("train", "val"),
    sizes: Optional[Dict[str, int]] = None,
    config: SyntheticConfig = SyntheticConfig(),
) -> Dict[str, SplitFiles]:
    """Make sure the splits exist under ``root`` (generating what is missing or stale).

    Args:
        root: dataset folder; see :func:`resolve_root`.
        splits: which splits to check, from "train" and "val".
        sizes: number of images per split (default :data:`DEFAULT_SPLIT_SIZES`).
        config: generator parameters.

    Returns:
        split name -> :class:`SplitFiles`.
    """
    root = resolve_root(root)
    sizes = {**DEFAULT_SPLIT_SIZES, **(sizes or {})}
    files = {}
    for split in splits:
        if not is_split_current(root, split, sizes[split], config):
            with split_lock(root, split):
                # another process may have generated it while we waited for the lock
                if not is_split_current(root, split, sizes[split], config):
                    remove_leftovers(root, split)
                    generate_split(root, split, sizes[split], config)
        files[split] = split_files(root, split)
    return files


# ---------------------------------------------------------------------------------------
# Detectron2 registration
# ---------------------------------------------------------------------------------------


def _load_split(name: str, split: str, limit: Optional[int], root: Optional[str]) -> List[Dict]:
    """DatasetCatalog loader: generate if needed, then read the COCO json."""
    from detectron2.data.datasets import load_coco_json

    files = ensure_demo_dataset(root, splits=(split,))[split]
    dicts = load_coco_json(files.json_file, files.image_root, name)
    return dicts if limit is None else dicts[:limit]


def register_demo_datasets(root: Optional[str] = None) -> None:
    """Register fcos_demo_{train,val} and fcos_demo_{train,val}_mini in Detectron2.

    Nothing is generated here; the loaders generate on first use. ``root=None`` resolves
    the folder when the data is loaded (so environment variables set later count).
    Registering again is a no-op.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    registered = set(DatasetCatalog.list())
    for name, (split, limit) in DATASET_SPLITS.items():
        if name in registered:
            continue
        DatasetCatalog.register(
            name, lambda name=name, split=split, limit=limit: _load_split(name, split, limit, root)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(DEMO_CLASSES),
            thing_colors=[list(c) for c in CLASS_COLORS],
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(DEMO_CLASSES))},
            evaluator_type="coco",
        )


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def center_rule_level(w: float, h: float, sizes: Sequence[float] = SIZES_OF_INTEREST) -> int:
    """FPN level index (0 = P3) whose range holds max(w, h) / 2, the largest regression
    distance at the box center."""
    distance = max(w, h) / 2
    for level, upper in enumerate(sizes):
        if distance <= upper:
            return level
    return len(sizes)


def positive_levels(
    bbox: Sequence[float],
    image_size: int = IMAGE_SIZE,
    strides: Sequence[int] = FPN_STRIDES,
    sizes: Sequence[float] = SIZES_OF_INTEREST,
    radius: float = 1.5,
) -> List[int]:
    """FPN levels on which an XYWH box gets at least one positive location under FCOS's
    center sampling (locations at s//2 + k*s within ``radius * s`` of the box center,
    inside the box, max distance in the level's range), ignoring other boxes."""
    x0, y0, w, h = bbox
    x1, y1 = x0 + w, y0 + h
    cx, cy = x0 + w / 2, y0 + h / 2
    bounds = [-1.0, *sizes, math.inf]
    levels = []
    for level, stride in enumerate(strides):
        grid = np.arange(math.ceil(image_size / stride)) * stride + stride // 2
        r = radius * stride
        xs = grid[(grid > max(cx - r, x0)) & (grid < min(cx + r, x1))]
        ys = grid[(grid > max(cy - r, y0)) & (grid < min(cy + r, y1))]
        if len(xs) == 0 or len(ys) == 0:
            continue
        max_x = np.maximum(xs - x0, x1 - xs)[:, None]
        max_y = np.maximum(ys - y0, y1 - ys)[None, :]
        distance = np.maximum(max_x, max_y)
        if ((distance >= bounds[level]) & (distance <= bounds[level + 1])).any():
            levels.append(level)
    return levels


def dataset_statistics(coco: Dict, image_size: int = IMAGE_SIZE) -> Dict:
    """Counts of a COCO dict: images, empty images, boxes per class, crowd annotations,
    boxes per FPN level by the center rule and with center sampling."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = {name: 0 for name in names.values()}
    by_center = {name: 0 for name in FPN_LEVEL_NAMES}
    by_sampling = {name: 0 for name in FPN_LEVEL_NAMES}
    annotated_images = set()
    crowd = 0
    for ann in coco["annotations"]:
        annotated_images.add(ann["image_id"])
        if ann["iscrowd"]:
            crowd += 1
            continue
        per_class[names[ann["category_id"]]] += 1
        w, h = ann["bbox"][2:]
        by_center[FPN_LEVEL_NAMES[center_rule_level(w, h)]] += 1
        for level in positive_levels(ann["bbox"], image_size):
            by_sampling[FPN_LEVEL_NAMES[level]] += 1
    return {
        "images": len(coco["images"]),
        "empty_images": len(coco["images"]) - len(annotated_images),
        "boxes": sum(per_class.values()),
        "boxes_per_class": per_class,
        "crowd_annotations": crowd,
        "boxes_per_level_center_rule": by_center,
        "boxes_per_level_center_sampling": by_sampling,
    }


def format_statistics(split: str, stats: Dict) -> str:
    """Human-readable summary of :func:`dataset_statistics`."""
    lines = [
        f"{split}: {stats['images']} images, {stats['boxes']} boxes, "
        f"{stats['empty_images']} empty images, {stats['crowd_annotations']} crowd annotations",
        "  boxes per class: " + ", ".join(f"{k}={v}" for k, v in stats["boxes_per_class"].items()),
        "  boxes per FPN level, center rule max(w,h)/2: "
        + ", ".join(f"{k}={v}" for k, v in stats["boxes_per_level_center_rule"].items()),
        "  boxes per FPN level with >=1 positive (center sampling r=1.5): "
        + ", ".join(f"{k}={v}" for k, v in stats["boxes_per_level_center_sampling"].items()),
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: generate the dataset and print its statistics."""
    parser = argparse.ArgumentParser(description="Generate the fcos_demo synthetic dataset.")
    parser.add_argument("--root", default=None, help="dataset folder (default: see resolve_root)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLIT_SIZES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLIT_SIZES["val"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    files = ensure_demo_dataset(args.root, sizes={"train": args.num_train, "val": args.num_val})
    print(f"dataset ready in {resolve_root(args.root)} ({time.perf_counter() - start:.1f} s)")
    for split, paths in files.items():
        with open(paths.json_file) as f:
            print(format_statistics(split, dataset_statistics(json.load(f))))


if __name__ == "__main__":
    main()
