"""What the generator draws: the classes, their shapes and colours, and its parameters."""
from dataclasses import dataclass
from typing import Dict, Tuple


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
