"""Drawing: backgrounds, clutter, shapes (as label maps and COCO polygons), colours."""
import math
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .config import CLASS_COLORS, SyntheticConfig


_ELLIPSE_POINTS = 24


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


def clip_polygon(polygon: List[float], size: int) -> List[float]:
    """Clamp polygon coordinates into [0, size]."""
    return [min(max(v, 0.0), float(size)) for v in polygon]
