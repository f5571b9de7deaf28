"""Datasets on disk registered from the command line (fcos_d2.data.register) and the demo
datasets' metadata as Detectron2's tools expect it (the walk-through of docs/own_dataset.md:
tests/tools/test_own_dataset_walk_through.py)."""
import json
import os

import pytest
import torch
from PIL import Image

import fcos_d2  # noqa: F401  (registers FCOS and the demo datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from fcos_d2.data.register import parse_dataset_spec, register_dataset, setup_datasets
from fcos_d2.engine.trainer import build_evaluator
from helpers import coco_spec, unique_name, write_coco_folder


# ---- parsing and errors ------------------------------------------------------------------

def test_parse_spec_formats_and_errors():
    coco = parse_dataset_spec("name=a,json=/x/a.json,images=/x/img")
    assert (coco.name, coco.format, coco.fields["json"]) == ("a", "coco", "/x/a.json")
    voc = parse_dataset_spec("name=v,voc=/data/VOC2007,split=test,classes=a|b")
    assert (voc.format, voc.fields["split"], voc.fields["classes"]) == ("voc", "test", "a|b")
    with pytest.raises(ValueError, match="missing images"):
        parse_dataset_spec("name=a,json=/x/a.json")
    with pytest.raises(ValueError, match="unknown key.*split"):
        parse_dataset_spec("name=a,json=j,images=i,split=val")
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        parse_dataset_spec("name=a,oops")


def test_errors_name_the_file_and_the_problem(tmp_path):
    json_file, image_dir = write_coco_folder(str(tmp_path), "train", 3)
    missing = os.path.join(str(tmp_path), "nope.json")
    with pytest.raises(FileNotFoundError, match=f"json file '{missing}' does not exist"):
        register_dataset(coco_spec(unique_name("e1", tmp_path), missing, image_dir))
    with pytest.raises(FileNotFoundError, match="image folder .*/elsewhere' does not exist"):
        elsewhere = str(tmp_path / "elsewhere")
        register_dataset(coco_spec(unique_name("e2", tmp_path), json_file, elsewhere))

    with open(json_file) as f:
        data = json.load(f)

    def variant(tag, **changes):
        path = os.path.join(str(tmp_path), f"{tag}.json")
        with open(path, "w") as f:
            json.dump({**data, **changes}, f)
        return path

    bad = variant("nocats", categories=[])
    with pytest.raises(ValueError, match=f"{bad} has an empty category list"):
        register_dataset(coco_spec(unique_name("e3", tmp_path), bad, image_dir))
    bad = variant("noanns", annotations=[])
    with pytest.raises(ValueError, match=f"{bad} has no annotations .* for its 3 images"):
        register_dataset(coco_spec(unique_name("e4", tmp_path), bad, image_dir))
    bad = variant("badcat", annotations=[{**data["annotations"][0], "category_id": 9}])
    with pytest.raises(ValueError, match=r"category ids not in 'categories' \[3, 7\]: 9"):
        register_dataset(coco_spec(unique_name("e5", tmp_path), bad, image_dir))
    os.remove(os.path.join(image_dir, "img_001.jpg"))
    with pytest.raises(FileNotFoundError, match="1 of the 3 images .* img_001.jpg"):
        register_dataset(coco_spec(unique_name("e6", tmp_path), json_file, image_dir))
    assert not any(unique_name(f"e{i}", tmp_path) in DatasetCatalog.list() for i in range(1, 7))


# ---- COCO folder: classes, category ids, evaluator ----------------------------------------

def test_coco_folder_classes_ids_and_evaluator(tmp_path):
    json_file, image_dir = write_coco_folder(str(tmp_path), "val", 4)
    name = unique_name("coco_val", tmp_path)
    cfg = fcos_d2.setup_cfg("configs/FCOS-Demo/fcos_R_18_demo.yaml", freeze=False)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 5
    setup_datasets(cfg, test=[coco_spec(name, json_file, image_dir)])
    assert cfg.DATASETS.TEST == (name,)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 2  # taken from the json
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["square", "disc"] and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    dicts = DatasetCatalog.get(name)  # Detectron2's load_coco_json, consistent metadata
    assert [d["image_id"] for d in dicts] == [100, 101, 102, 103]
    with open(json_file) as f:
        first = [a for a in json.load(f)["annotations"] if a["image_id"] == 100]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [
        {3: 0, 7: 1}[a["category_id"]] for a in first
    ]
    assert isinstance(build_evaluator(cfg, name, str(tmp_path / "eval")), COCOEvaluator)
    # registering the same SPEC again (another process's setup) is fine, another is not
    assert register_dataset(coco_spec(name, json_file, image_dir)) == name
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(coco_spec(name, json_file, str(tmp_path)))


def test_explicit_num_classes_is_kept_and_checked(tmp_path):
    from fcos_d2.data.checks import check_dataset_classes

    json_file, image_dir = write_coco_folder(str(tmp_path), "train", 3)
    name = unique_name("coco_train", tmp_path)
    opts = ["MODEL.FCOS.NUM_CLASSES", "4"]
    cfg = fcos_d2.setup_cfg("configs/FCOS-Demo/fcos_R_18_demo.yaml", opts, freeze=False)
    setup_datasets(cfg, train=[coco_spec(name, json_file, image_dir)], opts=opts)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 4 and cfg.DATASETS.TRAIN == (name,)
    with pytest.raises(ValueError, match=f"'{name}' has 2 classes .* set MODEL.FCOS.NUM_CLASSES 2"):
        check_dataset_classes(cfg, [name], DatasetCatalog.get(name))


def test_two_stage_class_count_key(tmp_path):
    json_file, image_dir = write_coco_folder(str(tmp_path), "train", 2)
    cfg = fcos_d2.setup_cfg("configs/FCOS-RPN/faster_rcnn_R_18_FPN_demo.yaml", freeze=False)
    setup_datasets(cfg, train=[coco_spec(unique_name("rcnn", tmp_path), json_file, image_dir)])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2


# ---- Pascal VOC folder ---------------------------------------------------------------------

def write_voc_folder(root, classes_of_images):
    """A VOC-layout folder: per image a jpg and an xml with one object per class name."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = []
    for i, names in enumerate(classes_of_images):
        image_id = f"{i:06d}"
        ids.append(image_id)
        Image.new("RGB", (80, 60), (90, 90, 90)).save(f"{root}/JPEGImages/{image_id}.jpg")
        objects = "".join(
            f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{5 + 10 * k}</xmin>"
            f"<ymin>5</ymin><xmax>{30 + 10 * k}</xmax><ymax>40</ymax></bndbox></object>"
            for k, n in enumerate(names)
        )
        with open(f"{root}/Annotations/{image_id}.xml", "w") as f:
            f.write(f"<annotation><size><width>80</width><height>60</height></size>"
                    f"{objects}</annotation>")
    with open(f"{root}/ImageSets/Main/train.txt", "w") as f:
        f.write("\n".join(ids) + "\n")


def test_voc_folder(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc_folder(root, [["cat", "dog"], ["dog"]])
    name = unique_name("voc", tmp_path)
    cfg = fcos_d2.setup_cfg("configs/FCOS-Demo/fcos_R_18_demo.yaml", freeze=False)
    setup_datasets(cfg, test=[f"name={name},voc={root},split=train,classes=dog|cat"])
    meta = MetadataCatalog.get(name)
    assert (meta.thing_classes, meta.year, meta.evaluator_type) == (["dog", "cat"], 2007,
                                                                    "pascal_voc")
    assert cfg.MODEL.FCOS.NUM_CLASSES == 2
    dicts = DatasetCatalog.get(name)  # Detectron2's load_voc_instances
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [1, 0]
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    evaluator.reset()  # the ground truth as detections: VOC's AP is 100
    for record in dicts:
        objects = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in objects]))
        instances.scores = torch.ones(len(objects))
        instances.pred_classes = torch.tensor([a["category_id"] for a in objects])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100.0)

    with pytest.raises(ValueError, match=r"000000.xml has an object of class 'cat', not in"):
        register_dataset(f"name={name}_x,voc={root},split=train,classes=dog")
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("\n")
    with pytest.raises(ValueError, match="classes file .* is empty"):
        register_dataset(f"name={name}_y,voc={root},split=train,classes={classes_file}")
    with pytest.raises(FileNotFoundError, match="split file .*val.txt' does not exist"):
        register_dataset(f"name={name}_z,voc={root},split=val")


# ---- the demo datasets' metadata in Detectron2's tools ------------------------------------

@pytest.mark.parametrize("name, num_images", [("fcos_demo_val_mini", 32)])
def test_demo_metadata_json_for_coco_evaluator(tmp_path, monkeypatch, name, num_images):
    """COCOEvaluator(name) without output_dir, as Detectron2's LazyConfig evaluation builds
    it, on a dataset folder not generated yet; the _mini subset's json has its images
    only, so the ground truth as predictions scores AP 100."""
    monkeypatch.setenv("FCOS_D2_DATASETS", str(tmp_path))
    assert not os.path.exists(tmp_path / "val")
    evaluator = COCOEvaluator(name)  # reads metadata.json_file: generates the val split
    meta = MetadataCatalog.get(name)
    assert meta.json_file == os.path.join(str(tmp_path), "val", "annotations_first32.json")
    assert meta.image_root == os.path.join(str(tmp_path), "val", "images")
    assert not os.path.exists(tmp_path / "train")
    with open(MetadataCatalog.get("fcos_demo_val").json_file) as f:
        assert len(json.load(f)["images"]) == 250
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == num_images
    evaluator.reset()
    for record in dicts:
        objects = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in objects],
            dtype=torch.float32,
        ).reshape(-1, 4))
        instances.scores = torch.ones(len(objects))
        instances.pred_classes = torch.tensor([a["category_id"] for a in objects]).long()
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
