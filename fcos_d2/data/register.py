"""Register a dataset folder in Detectron2's catalogs from one line of text.

``train_net.py --dataset SPEC`` and ``demo.py --dataset SPEC`` use it, so a dataset on
disk needs no Python. A ``SPEC`` is comma-separated ``key=value`` pairs:

* COCO format (one json + an image folder)::

      name=my_train,json=/data/shapes/train.json,images=/data/shapes/train

* Pascal VOC format (``Annotations/``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/``)::

      name=my_voc_train,voc=/data/VOC2012,split=trainval
      name=my_voc_train,voc=/data/mine,split=train,classes=cat|dog|bird,year=2007

  ``classes`` is a ``|``-separated list or a text file with one class name a line
  (default: the 20 Pascal VOC classes); ``year`` 2007 selects VOC's 11-point AP in
  evaluation (default: 2007 if the folder's name contains "2007", else 2012).

The files are checked when the dataset is registered, with errors that name the file
and the problem: a missing json, image folder or VOC file, an empty category list, a
dataset without annotations, annotations of unknown images or categories, missing
image files, VOC objects of a class not in ``classes``. The metadata carries what
Detectron2's evaluators need (``evaluator_type``, and ``json_file`` / ``dirname``), and
the class names, so the class count is known before anything is loaded.
"""
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import load_voc_instances

from .checks import expected_num_classes

__all__ = [
    "DatasetSpec",
    "parse_dataset_spec",
    "register_coco_folder",
    "register_voc_folder",
    "register_dataset",
    "num_classes_from_datasets",
    "add_dataset_arguments",
    "setup_datasets",
]

logger = logging.getLogger(__name__)

#: The keys a SPEC may have, per format.
SPEC_KEYS = {"coco": ("name", "json", "images"), "voc": ("name", "voc", "split", "classes", "year")}
#: The keys whose values are paths.
PATH_KEYS = ("json", "images", "voc", "classes")
#: How many offending names an error message lists.
_LISTED = 5


@dataclass(frozen=True)
class DatasetSpec:
    """One ``--dataset`` value, parsed: the format ("coco" or "voc") and its fields."""

    name: str
    format: str
    fields: Dict[str, str]


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``"name=N,json=J,images=I"`` or ``"name=N,voc=DIR,split=S[,classes=..][,year=..]"``."""
    fields: Dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"--dataset {text!r}: {part!r} is not key=value")
        if key in fields:
            raise ValueError(f"--dataset {text!r}: {key!r} is given twice")
        # "~" is not expanded by the shell inside name=...,json=~/...: expand it here
        fields[key] = os.path.expanduser(value) if key in PATH_KEYS else value
    if "json" in fields and "voc" in fields:
        raise ValueError(f"--dataset {text!r}: give json=... (COCO) or voc=... (VOC), not both")
    fmt = "voc" if "voc" in fields else "coco"
    required = ("name", "voc", "split") if fmt == "voc" else SPEC_KEYS["coco"]
    missing = [k for k in required if k not in fields]
    unknown = [k for k in fields if k not in SPEC_KEYS[fmt]]
    if missing or unknown:
        raise ValueError(
            f"--dataset {text!r}: "
            + (f"missing {', '.join(missing)}; " if missing else "")
            + (f"unknown key(s) {', '.join(unknown)}; " if unknown else "")
            + "expected name=N,json=FILE,images=DIR (COCO) or "
            "name=N,voc=DIR,split=S[,classes=a|b|c][,year=2007] (Pascal VOC)"
        )
    return DatasetSpec(fields["name"], fmt, fields)


def _listing(names: Sequence) -> str:
    shown = ", ".join(str(n) for n in list(names)[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def _require(path: str, what: str, name: str, is_dir: bool = False) -> None:
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not ok:
        raise FileNotFoundError(f"Dataset {name!r}: {what} {path!r} does not exist")


def read_coco_categories(json_file: str, image_root: str, name: str) -> Tuple[List[str], Dict]:
    """Check a COCO detection json against its image folder; return its class names
    (in category-id order) and its category id -> contiguous index map."""
    _require(json_file, "json file", name)
    _require(image_root, "image folder", name, is_dir=True)
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Dataset {name!r}: {json_file} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"Dataset {name!r}: {json_file} is not a COCO json (an object with "
                         "'images', 'annotations', 'categories')")
    categories = data.get("categories") or []
    if not categories:
        raise ValueError(
            f"Dataset {name!r}: {json_file} has an empty category list ('categories'); a COCO "
            'detection json lists its classes as [{"id": 1, "name": "cat"}, ...]'
        )
    images = data.get("images") or []
    annotations = data.get("annotations") or []
    if not images:
        raise ValueError(f"Dataset {name!r}: {json_file} lists no images ('images' is empty)")
    if not annotations:
        raise ValueError(
            f"Dataset {name!r}: {json_file} has no annotations ('annotations' is empty) for its "
            f"{len(images)} images: nothing to train on or to evaluate against"
        )
    cat_ids = sorted(c["id"] for c in categories)
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"Dataset {name!r}: {json_file} repeats category ids: {cat_ids}")
    image_ids = {im["id"] for im in images}
    unknown_images = sorted({a["image_id"] for a in annotations} - image_ids)
    if unknown_images:
        raise ValueError(f"Dataset {name!r}: {json_file} has annotations of image ids not in "
                         f"'images': {_listing(unknown_images)}")
    unknown_cats = sorted({a["category_id"] for a in annotations} - set(cat_ids))
    if unknown_cats:
        raise ValueError(f"Dataset {name!r}: {json_file} has annotations with category ids not "
                         f"in 'categories' {cat_ids}: {_listing(unknown_cats)}")
    missing = [im["file_name"] for im in images
               if not os.path.isfile(os.path.join(image_root, im["file_name"]))]
    if missing:
        raise FileNotFoundError(f"Dataset {name!r}: {len(missing)} of the {len(images)} images "
                                f"of {json_file} are not in {image_root}: {_listing(missing)}")
    by_id = {c["id"]: c["name"] for c in categories}
    return [by_id[i] for i in cat_ids], {cat_id: i for i, cat_id in enumerate(cat_ids)}


def register_coco_folder(name: str, json_file: str, image_root: str) -> List[str]:
    """Check and register a COCO-format dataset (as Detectron2's
    ``register_coco_instances``, with the class names known up front); returns them."""
    classes, id_map = read_coco_categories(json_file, image_root, name)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=classes,
        thing_dataset_id_to_contiguous_id=id_map,
    )
    return classes


def voc_class_names(classes: Optional[str]) -> List[str]:
    """``classes`` of a VOC SPEC: ``a|b|c``, a file with one name a line, or None (VOC's)."""
    if classes is None:
        return list(VOC_CLASS_NAMES)
    if os.path.isfile(classes):
        with open(classes) as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError(f"classes file {classes!r} is empty: give one class name a line")
        return names
    names = [n.strip() for n in classes.split("|") if n.strip()]
    if not names:
        raise ValueError(f"classes={classes!r} names no class")
    return names


def check_voc_folder(root: str, split: str, classes: List[str], name: str) -> None:
    """The split file, an annotation xml and a jpg per image id, known object classes,
    at least one object."""
    _require(root, "VOC folder", name, is_dir=True)
    split_file = os.path.join(root, "ImageSets", "Main", split + ".txt")
    _require(split_file, "split file", name)
    with open(split_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"Dataset {name!r}: {split_file} lists no image")
    missing = [i for i in ids if not os.path.isfile(os.path.join(root, "Annotations", i + ".xml"))]
    if missing:
        raise FileNotFoundError(f"Dataset {name!r}: {len(missing)} image ids of {split_file} have "
                                f"no {root}/Annotations/<id>.xml: {_listing(missing)}")
    missing = [i for i in ids if not os.path.isfile(os.path.join(root, "JPEGImages", i + ".jpg"))]
    if missing:
        raise FileNotFoundError(f"Dataset {name!r}: {len(missing)} image ids of {split_file} have "
                                f"no {root}/JPEGImages/<id>.jpg: {_listing(missing)}")
    num_objects = 0
    for image_id in ids:
        xml_file = os.path.join(root, "Annotations", image_id + ".xml")
        for obj in ET.parse(xml_file).findall("object"):
            cls = obj.find("name").text.strip()
            if cls not in classes:
                raise ValueError(f"Dataset {name!r}: {xml_file} has an object of class {cls!r}, "
                                 f"not in the classes ({_listing(classes)}); pass classes=...")
            num_objects += 1
    if num_objects == 0:
        raise ValueError(f"Dataset {name!r}: the {len(ids)} images of {split_file} have no "
                         "annotated object: nothing to train on or to evaluate against")


def register_voc_folder(
    name: str, root: str, split: str, classes: Optional[str] = None, year: Optional[str] = None
) -> List[str]:
    """Check and register a Pascal VOC-format folder (as Detectron2's
    ``register_pascal_voc``, evaluated by ``PascalVOCDetectionEvaluator``); returns the
    class names."""
    names = voc_class_names(classes)
    check_voc_folder(root, split, names, name)
    if year is None:
        year = 2007 if "2007" in os.path.basename(os.path.normpath(root)) else 2012
    DatasetCatalog.register(name, lambda: load_voc_instances(root, split, names))
    MetadataCatalog.get(name).set(
        thing_classes=names, dirname=root, year=int(year), split=split,
        evaluator_type="pascal_voc",
    )  # fmt: skip
    return names


def register_dataset(spec: str) -> str:
    """Parse, check and register one ``--dataset`` SPEC; returns the dataset's name.

    Registering a name that is already registered is an error, except for the same SPEC
    again (a multi-process run registers in every process).
    """
    parsed = parse_dataset_spec(spec)
    if parsed.name in DatasetCatalog.list():
        if MetadataCatalog.get(parsed.name).get("dataset_spec", None) == spec:
            return parsed.name
        raise ValueError(f"--dataset {spec!r}: a dataset named {parsed.name!r} is already "
                         "registered; choose another name")
    f = parsed.fields
    if parsed.format == "coco":
        classes = register_coco_folder(parsed.name, f["json"], f["images"])
    else:
        classes = register_voc_folder(parsed.name, f["voc"], f["split"], f.get("classes"),
                                      f.get("year"))
    MetadataCatalog.get(parsed.name).set(dataset_spec=spec)
    logger.info(f"Registered dataset {parsed.name!r} ({parsed.format}, {len(classes)} classes: "
                f"{_listing(classes)})")
    return parsed.name


def num_classes_from_datasets(cfg, registered: Sequence[str], explicit_keys: Sequence[str]):
    """Set the model's class-count key (e.g. ``MODEL.FCOS.NUM_CLASSES``) from the datasets
    registered from the command line, unless that key was given explicitly.

    The training datasets decide (the test datasets with no training dataset among
    ``registered``, as for ``--eval-only``); they must agree. An explicit key is left to
    the trainer's check, which refuses a count that differs from the dataset's. ``cfg``
    must not be frozen. Returns (key, count) when set, else None.
    """
    expected = expected_num_classes(cfg)
    if expected is None:
        return None
    key, current = expected
    names = [n for n in cfg.DATASETS.TRAIN if n in registered]
    names = names or [n for n in cfg.DATASETS.TEST if n in registered]
    if not names or key in explicit_keys:
        return None
    counts = {n: len(MetadataCatalog.get(n).thing_classes) for n in names}
    if len(set(counts.values())) > 1:
        raise ValueError(f"The datasets {names} have different class counts {counts}")
    count = next(iter(counts.values()))
    logger.info(f"{key} {count}, from dataset {names[0]!r} (the config file has {current})")
    cfg.merge_from_list([key, count])
    return key, count


def add_dataset_arguments(parser):
    """Add ``--dataset``, ``--train-dataset`` and ``--test-dataset`` (each repeatable) to
    an argparse parser, e.g. Detectron2's ``default_argument_parser()``."""
    spec = "name=N,json=FILE,images=DIR (COCO) or name=N,voc=DIR,split=S (Pascal VOC)"
    parser.add_argument("--dataset", action="append", default=[], metavar="SPEC",
                        help=f"register a dataset: {spec}")
    parser.add_argument("--train-dataset", action="append", default=[], metavar="SPEC",
                        help="register a dataset and train on it (sets DATASETS.TRAIN)")
    parser.add_argument("--test-dataset", action="append", default=[], metavar="SPEC",
                        help="register a dataset and evaluate on it (sets DATASETS.TEST)")
    return parser


def setup_datasets(
    cfg,
    datasets: Sequence[str] = (),
    train: Sequence[str] = (),
    test: Sequence[str] = (),
    opts: Sequence[str] = (),
) -> List[str]:
    """Register the SPECs of ``--dataset`` / ``--train-dataset`` / ``--test-dataset``;
    set ``DATASETS.TRAIN`` / ``DATASETS.TEST`` to the latter two when given, and the
    class count from the datasets unless ``opts`` (``KEY VALUE`` pairs) set it.

    ``cfg`` must not be frozen. Returns the registered names.
    """
    names = [register_dataset(s) for s in datasets]
    train_names = [register_dataset(s) for s in train]
    test_names = [register_dataset(s) for s in test]
    if train_names:
        cfg.DATASETS.TRAIN = tuple(train_names)
    if test_names:
        cfg.DATASETS.TEST = tuple(test_names)
    registered = names + train_names + test_names
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    for name in registered:
        if name not in used:
            logger.warning(f"Dataset {name!r} is registered but not in DATASETS.TRAIN or "
                           "DATASETS.TEST (use --train-dataset / --test-dataset to select it)")
    num_classes_from_datasets(cfg, registered, list(opts)[0::2])
    return registered
