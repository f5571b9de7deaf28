"""Registration of the demo datasets in Detectron2's catalogs (generated on first load).

Each dataset's metadata carries what Detectron2's tools expect of a COCO-format dataset:
``thing_classes``, ``thing_colors``, ``thing_dataset_id_to_contiguous_id``,
``evaluator_type`` "coco", and ``json_file`` / ``image_root``, so that
``COCOEvaluator(name)`` works without an ``output_dir``. Reading ``json_file`` generates
the split when it is missing; a ``_mini`` subset has its own json (its first images).
"""
import json
import os
import tempfile
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json

from .cache import ensure_demo_dataset, resolve_root, split_lock
from .config import CLASS_COLORS, DEMO_CLASSES


#: The dataset names registered in Detectron2, and (split, number of leading images).
DATASET_SPLITS: Dict[str, Tuple[str, Optional[int]]] = {
    "fcos_demo_train": ("train", None),
    "fcos_demo_val": ("val", None),
    "fcos_demo_train_mini": ("train", 64),
    "fcos_demo_val_mini": ("val", 32),
}


def _load_split(name: str, split: str, limit: Optional[int], root: Optional[str]) -> List[Dict]:
    """DatasetCatalog loader: generate if needed, then read the COCO json."""
    files = ensure_demo_dataset(root, splits=(split,))[split]
    dicts = load_coco_json(files.json_file, files.image_root, name)
    return dicts if limit is None else dicts[:limit]


def subset_json(json_file: str, limit: int) -> str:
    """The COCO json of the first ``limit`` images (by id) of ``json_file``, written next
    to it once (atomically); the images the ``_mini`` loader returns."""
    path = os.path.join(os.path.dirname(json_file), f"annotations_first{limit}.json")
    if os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(json_file):
        return path
    with open(json_file) as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])[:limit]
    kept = {im["id"] for im in images}
    subset = {
        **data,
        "images": images,
        "annotations": [a for a in data["annotations"] if a["image_id"] in kept],
    }
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(json_file), suffix=".json.tmp")
    with os.fdopen(handle, "w") as f:
        json.dump(subset, f)
    os.replace(tmp, path)
    return path


class DemoMetadata(Metadata):
    """Metadata of a demo dataset whose ``json_file`` and ``image_root`` are found (and
    generated when missing) when read, in the dataset folder of that moment."""

    def _files(self):
        split, _, root = self._demo_source
        return ensure_demo_dataset(root, splits=(split,))[split]

    @property
    def json_file(self) -> str:
        split, limit, root = self._demo_source
        json_file = self._files().json_file
        if limit is None:
            return json_file
        with split_lock(resolve_root(root), split):
            return subset_json(json_file, limit)

    @property
    def image_root(self) -> str:
        return self._files().image_root


def demo_metadata(name: str, split: str, limit: Optional[int], root: Optional[str]) -> Metadata:
    metadata = DemoMetadata(name=name)
    object.__setattr__(metadata, "_demo_source", (split, limit, root))
    return metadata.set(
        thing_classes=list(DEMO_CLASSES),
        thing_colors=[list(c) for c in CLASS_COLORS],
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(DEMO_CLASSES))},
        evaluator_type="coco",
    )


def register_demo_datasets(root: Optional[str] = None) -> None:
    """Register fcos_demo_{train,val} and fcos_demo_{train,val}_mini in Detectron2.

    Nothing is generated here; the loaders (and reading ``json_file`` of the metadata)
    generate on first use. ``root=None`` resolves the folder when the data is loaded (so
    environment variables set later count). Registering again is a no-op.
    """
    registered = set(DatasetCatalog.list())
    for name, (split, limit) in DATASET_SPLITS.items():
        if name in registered:
            continue
        DatasetCatalog.register(
            name, lambda name=name, split=split, limit=limit: _load_split(name, split, limit, root)
        )
        MetadataCatalog[name] = demo_metadata(name, split, limit, root)
