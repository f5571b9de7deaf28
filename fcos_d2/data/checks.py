"""Checks run on a training set before training starts, with errors that name the culprit."""
from typing import Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet

__all__ = ["expected_num_classes", "check_dataset_classes"]


def expected_num_classes(cfg) -> Optional[tuple]:
    """(config key, number of classes) that the model's classifier has, if known."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name == "FCOS":
        return "MODEL.FCOS.NUM_CLASSES", cfg.MODEL.FCOS.NUM_CLASSES
    try:  # subclasses too, e.g. AMPGeneralizedRCNN
        arch = META_ARCH_REGISTRY.get(name)
    except KeyError:
        return None
    if issubclass(arch, RetinaNet):
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    if issubclass(arch, GeneralizedRCNN):
        return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return None


def check_dataset_classes(cfg, dataset_names: List[str], dataset_dicts: List[Dict]) -> None:
    """Refuse a training set whose classes do not fit the model's classifier.

    Raises ValueError naming the dataset and config key when a dataset's ``thing_classes``
    count differs from the model's, and naming the image when an annotation's
    ``category_id`` is outside [0, num_classes).
    """
    expected = expected_num_classes(cfg)
    if expected is None:
        return
    key, num_classes = expected
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"Dataset {name!r} has {len(classes)} classes ({', '.join(classes[:8])}"
                f"{', ...' if len(classes) > 8 else ''}) but {key} is {num_classes}: "
                f"set {key} {len(classes)}"
            )
    for record in dataset_dicts:
        for anno in record.get("annotations", []):
            category = anno.get("category_id")
            if category is None or not 0 <= category < num_classes:
                raise ValueError(
                    f"Annotation with category_id={category} in image_id="
                    f"{record.get('image_id')} ({record.get('file_name')}) is outside "
                    f"[0, {num_classes}) allowed by {key}"
                )
