"""demo.py on generated images and a video, with a model whose detections are known.

The model's prediction convs have zero weights, so every location predicts the same
class logits (3, 0, -5), centerness logit 3 and distances of one stride on each side:
a (2 * stride)-square box around every location, class 0 with score sqrt(sigmoid(3) *
sigmoid(3)) = sigmoid(3), class 1 with sqrt(sigmoid(0) * sigmoid(3)), class 2 below the
cls threshold.
"""
import copy
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch

import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from pycocotools.coco import COCO

from helpers import load_script, tiny_cfg

DATASET = "fcos_demo_cli_test"
CATEGORY_IDS = {10: 0, 20: 1, 30: 2}  # dataset id -> contiguous class
SIGMOID_3 = 1 / (1 + math.exp(-3))
SCORE_CLASS0 = SIGMOID_3
SCORE_CLASS1 = math.sqrt(0.5 * SIGMOID_3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A config file, its weights and a folder of two images and a 3-frame video."""
    root = tmp_path_factory.mktemp("demo")
    if DATASET not in MetadataCatalog.list():
        MetadataCatalog.get(DATASET).set(
            thing_classes=["cat", "dog", "cow"], thing_dataset_id_to_contiguous_id=CATEGORY_IDS
        )
    cfg = tiny_cfg(num_classes=3)
    cfg.DATASETS.TEST = (DATASET,)
    cfg.INPUT.MIN_SIZE_TEST = 64  # the images' short side: no resizing
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.MODEL.FCOS.POST_NMS_TOPK_TEST = 1000
    model = build_model(cfg)
    head = model.head
    with torch.no_grad():
        for conv in (head.cls_logits, head.ctrness, head.bbox_pred):
            conv.weight.zero_()
        head.cls_logits.bias.copy_(torch.tensor([3.0, 0.0, -5.0]))
        head.ctrness.bias.fill_(3.0)
        head.bbox_pred.bias.fill_(1.0)
    weights = str(root / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(cfg.dump())

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"b.png": (64, 80), "a.jpg": (80, 64)}  # sorted order: a.jpg, then b.png
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / name), rng.integers(0, 256, (h, w, 3), np.uint8))
    (images / "notes.txt").write_text("not an image")
    video = str(root / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (80, 64))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (64, 80, 3), np.uint8))
    writer.release()
    return {"cfg": str(cfg_path), "images": str(images), "video": video, "root": root}


def run_demo(setup, threshold: float, name: str, inputs=None):
    out = setup["root"] / name
    args = ["--config-file", setup["cfg"], "--input", *(inputs or [setup["images"]]),
            "--output", str(out), "--confidence-threshold", str(threshold)]
    assert load_script("demo.py").main(args) == 0
    results = json.loads((out / "results.json").read_text())
    images = json.loads((out / "images.json").read_text())
    return out, results, images


def assert_valid_coco_results(results, images):
    gt = COCO()
    gt.dataset = {**images, "annotations": []}
    gt.createIndex()
    loaded = gt.loadRes(copy.deepcopy(results))  # checks image ids; adds fields in place
    assert len(loaded.getAnnIds()) == len(results)
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] > 0 and r["bbox"][3] > 0


def test_images_drawings_and_coco_results(setup):
    out, results, images = run_demo(setup, 0.8, "high")
    assert [im["file_name"].rsplit("/", 1)[1] for im in images["images"]] == ["a.jpg", "b.png"]
    assert [im["id"] for im in images["images"]] == [1, 2]
    assert images["categories"] == [{"id": 10, "name": "cat"}, {"id": 20, "name": "dog"},
                                    {"id": 30, "name": "cow"}]
    for name, (h, w) in {"a.jpg": (80, 64), "b.png": (64, 80)}.items():
        drawing = cv2.imread(str(out / name))
        assert drawing is not None and drawing.shape == (h, w, 3)
    assert not (out / "notes.txt").exists()
    assert_valid_coco_results(results, images)

    # only class 0 (dataset id 10) passes 0.8, with the hand-computed score
    assert results and {r["category_id"] for r in results} == {10}
    assert all(r["score"] == pytest.approx(SCORE_CLASS0, abs=1e-5) for r in results)
    assert {r["image_id"] for r in results} == {1, 2}
    # P3 location (36, 28) of b.png (image 2): a 16 x 16 box around it, kept by NMS
    assert [28, 20, 16, 16] in [r["bbox"] for r in results if r["image_id"] == 2]

    _, low, _ = run_demo(setup, 0.5, "low")
    assert {r["category_id"] for r in low} == {10, 20}
    assert all(r["score"] >= 0.5 for r in low)
    class1 = [r["score"] for r in low if r["category_id"] == 20]
    assert class1 and all(s == pytest.approx(SCORE_CLASS1, abs=1e-5) for s in class1)
    # NMS is per class: the class-0 detections do not depend on the threshold
    assert sorted(map(str, [r for r in low if r["category_id"] == 10])) == sorted(map(str, results))


def test_video_and_image_ids_continue(setup):
    one_image = os.path.join(setup["images"], "b.png")
    out, results, images = run_demo(setup, 0.8, "video", [one_image, setup["video"]])
    assert [im["id"] for im in images["images"]] == [1, 2, 3, 4]
    assert images["images"][1]["file_name"].endswith("clip.mp4#frame0")
    assert_valid_coco_results(results, images)
    assert {r["image_id"] for r in results} == {1, 2, 3, 4}
    video = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    assert len(frames) == 3 and frames[0].shape == (64, 80, 3)


def test_missing_input_is_reported(setup):
    with pytest.raises(FileNotFoundError, match="no_such_file.png"):
        run_demo(setup, 0.5, "missing", [str(setup["root"] / "no_such_file.png")])
