"""The synthetic fcos_demo dataset: determinism, COCO validity, content and registration."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fcos_d2 import setup_cfg
from fcos_d2.data import synthetic
from fcos_d2.data.synthetic import (
    DEMO_CLASSES,
    SyntheticConfig,
    dataset_statistics,
    ensure_demo_dataset,
    generate_image,
    generate_split,
    positive_levels,
)
from fcos_d2.data.synthetic.writer import annotation_records, coco_categories
from fcos_d2.modeling.targets import FCOSTargetAssigner

CONFIG = SyntheticConfig()
NUM_LAYOUTS = 120


@pytest.fixture(scope="module")
def layouts():
    """Objects of the first train images, drawn without writing anything."""
    return [generate_image("train", i, CONFIG)[1] for i in range(NUM_LAYOUTS)]


def read_split(root, split="train"):
    """(json bytes, list of image arrays) of a generated split."""
    files = synthetic.split_files(str(root), split)
    with open(files.json_file, "rb") as f:
        raw = f.read()
    coco = json.loads(raw)
    images = [
        np.asarray(Image.open(os.path.join(files.image_root, im["file_name"])))
        for im in coco["images"]
    ]
    return raw, images


def test_generation_is_deterministic(tmp_path):
    generate_split(str(tmp_path / "a"), "train", 10, CONFIG, workers=1)
    generate_split(str(tmp_path / "b"), "train", 10, CONFIG, workers=1)
    generate_split(str(tmp_path / "c"), "train", 10, CONFIG, workers=2)
    json_a, images_a = read_split(tmp_path / "a")
    for other in ("b", "c"):
        json_o, images_o = read_split(tmp_path / other)
        assert json_a == json_o
        assert all(np.array_equal(x, y) for x, y in zip(images_a, images_o))
    # image i does not depend on the images drawn before it
    pixels, _ = generate_image("train", 7, CONFIG)
    assert np.array_equal(pixels, images_a[7])
    assert not np.array_equal(images_a[0], images_a[1])


def test_json_is_valid_coco(tmp_path):
    files = generate_split(str(tmp_path), "val", 12, CONFIG, workers=1)
    with open(files.json_file) as f:
        coco = json.load(f)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in coco["categories"]] == list(DEMO_CLASSES)
    size = CONFIG.image_size
    for image in coco["images"]:
        assert (image["height"], image["width"]) == (size, size)
        assert os.path.isfile(os.path.join(files.image_root, image["file_name"]))
    assert coco["annotations"], "expected some objects in 12 images"
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= size and y + h <= size
        assert ann["area"] > 0 and ann["iscrowd"] in (0, 1)
        assert 1 <= ann["category_id"] <= len(DEMO_CLASSES)
        for polygon in ann["segmentation"]:
            assert len(polygon) >= 6 and len(polygon) % 2 == 0
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    pycocotools_coco = pytest.importorskip("pycocotools.coco")
    api = pycocotools_coco.COCO(files.json_file)
    assert len(api.getImgIds()) == 12
    ann = api.loadAnns(api.getAnnIds())[0]
    assert api.annToMask(ann).sum() > 0


def test_default_train_split_has_empty_and_crowd_images():
    """The per-image plan is the first thing drawn from each image's stream, so it gives
    the default train split's empty / crowd images without drawing them."""
    n = synthetic.DEFAULT_SPLIT_SIZES["train"]
    plans = [
        synthetic.plan_image(synthetic.image_rng(CONFIG, "train", i), CONFIG) for i in range(n)
    ]
    empty = [i for i, (crowd, count) in enumerate(plans) if not crowd and count == 0]
    crowd = [i for i, (has_crowd, _) in enumerate(plans) if has_crowd]
    assert 0.03 * n <= len(empty) <= 0.07 * n
    assert 0.01 * n <= len(crowd) <= 0.03 * n
    # and the drawn images agree with their plans
    assert generate_image("train", empty[0], CONFIG)[1] == []
    objects = generate_image("train", crowd[0], CONFIG)[1]
    crowds = [obj for obj in objects if obj.iscrowd]
    assert len(crowds) == 1 and crowds[0] is objects[0]
    x, y, w, h = crowds[0].bbox
    assert crowds[0].segmentation == [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_sizes_span_fpn_levels(layouts):
    boxes = [obj.bbox for objects in layouts for obj in objects if not obj.iscrowd]
    long_sides = [max(w, h) for _, _, w, h in boxes]
    assert min(long_sides) <= 16 and max(long_sides) >= 150
    # Under FCOS's assignment (default MODEL.FCOS, center sampling) the boxes get positives
    # on P3, P4 and P5. The counts are those of the numpy re-implementation of center
    # sampling that this module had before it used FCOSTargetAssigner.
    coco = {
        "images": [{"id": i + 1, "height": 256, "width": 256} for i in range(NUM_LAYOUTS)],
        "annotations": [
            record
            for i, objects in enumerate(layouts)
            for record in annotation_records(objects, i + 1)
        ],
        "categories": coco_categories(),
    }
    stats = dataset_statistics(coco)
    assert stats["boxes"] == len(boxes) == 494
    assert stats["boxes_per_level"] == {"P3": 443, "P4": 98, "P5": 16, "P6": 0, "P7": 0}


# Worked out by hand, default MODEL.FCOS (center radius 1.5 strides; P3 max distance
# <= 64, P4 64..128, P5 128..256, ...); locations of stride s at s/2 + k*s.
POSITIVE_LEVELS = [
    # 20 px at 110: P3 locations 108, 116 (max distance 12); P4's 104 has 16 < 64.
    ((100, 100, 120, 120), [True, False, False, False, False]),
    # 100 px at 150: P3 (148, 148) max distance 52; P4 (168, 168) 68; P5 at most 88.
    ((100, 100, 200, 200), [True, True, False, False, False]),
    # 128 px at 128: P3 (124 / 132) 68 > 64; P4 (120 / 136) 72; P5 (112 / 144) 80 < 128.
    ((64, 64, 192, 192), [False, True, False, False, False]),
    # the whole image: P4 136 > 128; P5 (112 / 144) 144; P6 (96 / 160) 160 < 256.
    ((0, 0, 256, 256), [False, False, True, False, False]),
]


def test_positive_levels_known_answers():
    cfg = setup_cfg(opts=["MODEL.DEVICE", "cpu"])
    boxes = torch.tensor([box for box, _ in POSITIVE_LEVELS], dtype=torch.float32)
    levels = positive_levels(boxes, 256, 256, FCOSTargetAssigner(cfg), [8, 16, 32, 64, 128])
    assert levels.tolist() == [expected for _, expected in POSITIVE_LEVELS]


def test_dataset_statistics_counts():
    """Boxes count alone (the 20 px box inside the 100 px one still reaches P3); crowd
    boxes and empty images are counted apart."""
    def ann(image_id, x0, y0, x1, y1, category_id=1, iscrowd=0):
        return {"image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "category_id": category_id, "iscrowd": iscrowd}

    coco = {
        "images": [{"id": i, "height": 256, "width": 256} for i in (1, 2, 3)],
        "annotations": [
            ann(1, *POSITIVE_LEVELS[0][0]),
            ann(1, *POSITIVE_LEVELS[1][0], category_id=3),
            ann(1, 0, 0, 256, 256, category_id=2, iscrowd=1),
            ann(3, *POSITIVE_LEVELS[3][0], category_id=3),
        ],
        "categories": coco_categories(),
    }
    stats = dataset_statistics(coco)
    assert stats["images"] == 3 and stats["empty_images"] == 1
    assert stats["boxes"] == 3 and stats["crowd_annotations"] == 1
    assert stats["boxes_per_class"] == dict(zip(DEMO_CLASSES, [1, 0, 2, 0, 0]))
    assert stats["boxes_per_level"] == {"P3": 2, "P4": 1, "P5": 1, "P6": 0, "P7": 0}
    # The config's assignment keys count. With SIZES_OF_INTEREST [8, 16, 32, 64] (P3 up
    # to 8, P4 8..16, P5 16..32, P6 32..64, P7 above), max distances: the 20 px box's P3
    # locations 12 or more, its P4 location (104, 104) 16, its P5 (112, 112) 12; the
    # 100 px box's P5 locations 56 or more, its P6 (160, 160) 60, its P7 (192, 192) 92;
    # the whole image's P6 locations 160 or more, its P7 ones 192.
    small = setup_cfg(
        opts=["MODEL.DEVICE", "cpu", "MODEL.FCOS.SIZES_OF_INTEREST", "[8, 16, 32, 64]"]
    )
    assert dataset_statistics(coco, small)["boxes_per_level"] == {
        "P3": 0, "P4": 1, "P5": 0, "P6": 1, "P7": 2
    }


def test_objects_stay_visible_and_boxes_are_tight(layouts):
    num_objects = 0
    for objects in layouts:
        for i, obj in enumerate(objects):
            on_top = np.zeros_like(obj.mask)
            for later in objects[i + 1:]:
                on_top |= later.mask
            visible = (obj.mask & ~on_top).sum() / obj.mask.sum()
            assert visible >= CONFIG.min_visible - 1e-9
            ys, xs = np.nonzero(obj.mask)
            tight = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert obj.bbox == tight
            num_objects += 1
    assert num_objects > 3 * NUM_LAYOUTS
    assert max(len(objects) for objects in layouts) <= CONFIG.max_objects + 1


def test_regenerates_stale_or_incomplete_split(tmp_path):
    root = str(tmp_path)
    files = ensure_demo_dataset(root, splits=("val",), sizes={"val": 3})["val"]
    first_mtime = os.path.getmtime(files.json_file)
    # current: reused as is
    ensure_demo_dataset(root, splits=("val",), sizes={"val": 3})
    assert os.path.getmtime(files.json_file) == first_mtime
    # other parameters: regenerated
    ensure_demo_dataset(root, splits=("val",), sizes={"val": 4})
    with open(files.json_file) as f:
        assert len(json.load(f)["images"]) == 4
    # a split without its stamp (e.g. copied half-way) is regenerated
    os.remove(os.path.join(root, "val", "stamp.json"))
    ensure_demo_dataset(root, splits=("val",), sizes={"val": 4})
    assert os.path.isfile(os.path.join(root, "val", "stamp.json"))
    assert [name for name in os.listdir(root) if not name.endswith(".lock")] == ["val"]
    # temporary folders of an interrupted generation are cleaned up by the next one
    os.makedirs(os.path.join(root, ".val-tmp-killed", "images"))
    ensure_demo_dataset(root, splits=("val",), sizes={"val": 2})
    assert [name for name in os.listdir(root) if not name.endswith(".lock")] == ["val"]


def test_root_resolution(monkeypatch):
    monkeypatch.delenv("FCOS_D2_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert synthetic.resolve_root() == os.path.join("datasets", "fcos_demo")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data")
    assert synthetic.resolve_root() == os.path.join("/data", "fcos_demo")
    monkeypatch.setenv("FCOS_D2_DATASETS", "/elsewhere")
    assert synthetic.resolve_root() == "/elsewhere"
    assert synthetic.resolve_root("/given") == "/given"


def test_command_line_summary(tmp_path, capsys):
    synthetic.main(["--root", str(tmp_path), "--num-train", "5", "--num-val", "3"])
    out = capsys.readouterr().out
    assert "train: 5 images" in out and "val: 3 images" in out
    assert "FCOSTargetAssigner" in out and "P3=" in out


def test_registered_datasets_load(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from fcos_d2.data import register_demo_datasets

    monkeypatch.setenv("FCOS_D2_DATASETS", str(tmp_path))
    register_demo_datasets()
    register_demo_datasets()  # a second time is a no-op
    names = ["fcos_demo_train", "fcos_demo_val", "fcos_demo_train_mini", "fcos_demo_val_mini"]
    assert set(names) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("fcos_demo_val")
    assert meta.thing_classes == list(DEMO_CLASSES) and meta.evaluator_type == "coco"
    assert not os.path.exists(os.path.join(str(tmp_path), "val"))  # registering generates nothing

    dicts = DatasetCatalog.get("fcos_demo_val_mini")
    assert len(dicts) == 32
    assert not os.path.exists(os.path.join(str(tmp_path), "train"))  # only val generated
    for record in dicts:
        assert {"file_name", "height", "width", "image_id", "annotations"} <= set(record)
        assert os.path.isfile(record["file_name"])
        for ann in record["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(DEMO_CLASSES)
    assert sum(len(r["annotations"]) for r in dicts) > 0
