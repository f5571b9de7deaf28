"""Dataset checks before training (fcos_d2.data.checks): class ids that do not fit the model."""
import pytest

from detectron2.data import MetadataCatalog

from helpers import dataset_record, tiny_cfg
from fcos_d2.data.checks import check_dataset_classes


def test_class_count_mismatch_is_refused_before_training():
    cfg = tiny_cfg(num_classes=3)
    MetadataCatalog.get("five_class_set").set(thing_classes=list("abcde"))
    message = "'five_class_set' has 5 classes.*MODEL.FCOS.NUM_CLASSES is 3"
    with pytest.raises(ValueError, match=message):
        check_dataset_classes(cfg, ["five_class_set"], [])


def test_category_id_outside_num_classes_is_refused():
    cfg = tiny_cfg(num_classes=3)
    dicts = [dataset_record("a.png", [([0, 0, 5, 5], 1, 0)], image_id=1),
             dataset_record("b.png", [([0, 0, 5, 5], 3, 0)], image_id=2)]
    with pytest.raises(ValueError, match=r"category_id=3 in image_id=2 \(b.png\).*\[0, 3\)"):
        check_dataset_classes(cfg, [], dicts)
