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

Modules, by job: :mod:`.config` (classes, parameters), :mod:`.draw` (shapes, colours,
painting), :mod:`.layout` (what goes where in an image), :mod:`.writer` (rendering
workers, one split's files), :mod:`.cache` (dataset folder, stamps, locks),
:mod:`.registration` (Detectron2 catalogs), :mod:`.stats` (counts, FPN levels reached
under :class:`~fcos_d2.modeling.targets.FCOSTargetAssigner`) and :mod:`.cli`.

Run ``python -m fcos_d2.data.synthetic --root DIR`` to generate and print statistics.
"""
from .cache import ensure_demo_dataset, is_split_current, resolve_root, split_lock
from .cli import main
from .config import (
    CLASS_COLORS,
    CLASS_SHAPES,
    DEFAULT_SPLIT_SIZES,
    DEMO_CLASSES,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    SyntheticConfig,
)
from .layout import PlacedObject, generate_image, image_rng, plan_image, visible_fractions
from .registration import DATASET_SPLITS, register_demo_datasets
from .stats import dataset_statistics, format_statistics, positive_levels
from .writer import SplitFiles, generate_split, split_files, write_split

__all__ = [
    "DEMO_CLASSES", "CLASS_SHAPES", "CLASS_COLORS", "IMAGE_SIZE", "GENERATOR_VERSION",
    "DEFAULT_SPLIT_SIZES", "DATASET_SPLITS", "SyntheticConfig", "PlacedObject", "SplitFiles",
    "image_rng", "plan_image", "generate_image", "visible_fractions", "write_split",
    "generate_split", "split_files", "is_split_current", "split_lock", "resolve_root",
    "ensure_demo_dataset", "register_demo_datasets", "positive_levels", "dataset_statistics",
    "format_statistics", "main",
]
