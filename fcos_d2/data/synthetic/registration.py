"""Registration of the demo datasets in Detectron2's catalogs (generated on first load)."""
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .cache import ensure_demo_dataset
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


def register_demo_datasets(root: Optional[str] = None) -> None:
    """Register fcos_demo_{train,val} and fcos_demo_{train,val}_mini in Detectron2.

    Nothing is generated here; the loaders generate on first use. ``root=None`` resolves
    the folder when the data is loaded (so environment variables set later count).
    Registering again is a no-op.
    """
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
