"""Test-time augmentation of the one-stage FCOS (fcos_d2.modeling.tta)."""
import math
import os

import pytest
import torch

import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from detectron2.layers import batched_nms
from detectron2.modeling import GeneralizedRCNNWithTTA, build_model

from helpers import tiny_cfg
from fcos_d2.modeling.tta import FCOSWithTTA, maybe_add_tta, with_tta

SCORE = 1 / (1 + math.exp(-3))  # sqrt(sigmoid(3) * sigmoid(3))


pytestmark = pytest.mark.usefixtures("one_thread")


def tta_cfg(min_sizes, flip: bool):
    cfg = tiny_cfg()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = tuple(min_sizes)
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = flip
    cfg.MODEL.FCOS.POST_NMS_TOPK_TEST = 1000
    return cfg


def constant_model(cfg, ltrb=(1.0, 1.0, 1.0, 1.0)):
    """Every location predicts class 0 (score sigmoid(3)) and a box ``ltrb`` strides
    around itself, whatever the image: the prediction convs have zero weights."""
    model = build_model(cfg).eval()
    head = model.head
    with torch.no_grad():
        for conv in (head.cls_logits, head.ctrness, head.bbox_pred):
            conv.weight.zero_()
        head.cls_logits.bias.copy_(torch.tensor([3.0, -8.0, -8.0]))
        head.ctrness.bias.fill_(3.0)
        head.bbox_pred.bias.copy_(torch.tensor(ltrb))
    return model


def image(height: int, width: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(3, height, width, generator=gen) * 255,
            "height": height, "width": width}


def box_set(instances):
    """Rounded (x0, y0, x1, y1, class) of the detections, as a set."""
    boxes = instances.pred_boxes.tensor.round(decimals=3).tolist()
    return {tuple(b) + (c,) for b, c in zip(boxes, instances.pred_classes.tolist())}


def test_config_switch():
    model = build_model(tiny_cfg()).eval()
    cfg = tiny_cfg()
    assert cfg.TEST.AUG.ENABLED is False and maybe_add_tta(cfg, model) is model
    assert isinstance(maybe_add_tta(tta_cfg([96], True), model), FCOSWithTTA)
    assert isinstance(with_tta(cfg, model), FCOSWithTTA)  # whatever TEST.AUG.ENABLED
    two_stage = tiny_cfg(two_stage=True)
    two_stage.TEST.AUG.ENABLED = True
    assert isinstance(maybe_add_tta(two_stage, build_model(two_stage)), GeneralizedRCNNWithTTA)
    with pytest.raises(RuntimeError, match="eval"):
        FCOSWithTTA(cfg, model.train())([image(64, 64)])


def test_flip_of_a_symmetric_model_mirrors_every_box_onto_itself():
    """Width 128 is a multiple of every stride: flipping maps the locations onto
    themselves, so the flipped image's (symmetric) boxes, mirrored back, are the plain
    boxes. With NMS off (IoU threshold 1), TTA gives each plain box twice."""
    cfg = tta_cfg([96], flip=True)
    cfg.MODEL.FCOS.NMS_TH = 1.0
    model = constant_model(cfg)
    inputs = image(96, 128)
    plain = model([inputs])[0]["instances"]
    tta = FCOSWithTTA(cfg, model)([inputs])[0]["instances"]
    assert len(plain) > 0 and len(tta) == 2 * len(plain)
    assert box_set(tta) == box_set(plain)
    assert torch.allclose(tta.scores, torch.full_like(tta.scores, SCORE))


def test_flip_adds_the_mirrored_boxes():
    """Boxes reaching 1 stride left and 2 right of their location; width 100 (P3
    locations at x = 4 + 8k). The flipped image's P3 box around x_f, mirrored back
    (x -> 100 - x), spans [100 - x_f - 16, 100 - x_f + 8]: left edges at multiples of 8,
    which no plain box (left edge x - 8 = 4 mod 8) has. NMS off: TTA = plain + mirrored."""
    cfg = tta_cfg([64], flip=True)
    cfg.MODEL.FCOS.NMS_TH = 1.0
    model = constant_model(cfg, ltrb=(1.0, 1.0, 2.0, 1.0))
    inputs = image(64, 100)
    plain = box_set(model([inputs])[0]["instances"])
    tta = box_set(FCOSWithTTA(cfg, model)([inputs])[0]["instances"])
    mirrored = set()
    for x_f in range(4, 101, 8):  # P3 locations whose boxes reach into the image
        for y in range(4, 64, 8):
            x0, x1 = max(100 - x_f - 16, 0), min(100 - x_f + 8, 100)
            mirrored.add((float(x0), float(max(y - 8, 0)), float(x1), float(min(y + 8, 64)), 0))
    assert plain <= tta and mirrored <= tta
    assert (40.0, 20.0, 64.0, 36.0, 0) in mirrored  # x_f = 44, y = 28
    assert (40.0, 20.0, 64.0, 36.0, 0) not in plain
    assert (52.0, 20.0, 76.0, 36.0, 0) in plain  # plain P3 location (60, 28)


def test_multiscale_boxes_are_mapped_back_to_the_image():
    """At short side 128 a 64-pixel image is scaled by 2: its P3 boxes (16 px there) are
    8 px in the image, around the points (4 + 8k) / 2."""
    cfg = tta_cfg([64, 128], flip=False)
    model = constant_model(cfg)
    inputs = image(64, 80)
    result = FCOSWithTTA(cfg, model)([inputs])[0]["instances"]
    assert result.image_size == (64, 80)
    boxes = box_set(result)
    assert (28.0, 20.0, 44.0, 36.0, 0) in boxes  # scale 1, P3 location (36, 28)
    assert (34.0, 26.0, 42.0, 34.0, 0) in boxes  # scale 2, P3 location (76, 60) / 2
    t = result.pred_boxes.tensor
    assert (t[:, 0] >= 0).all() and (t[:, 2] <= 80).all() and (t[:, 3] <= 64).all()


def test_equals_plain_merged_with_flipped_detections():
    """A random model: TTA (one scale + flip) = class-aware NMS of the plain detections
    and the flipped image's detections mirrored back, x -> W - x."""
    torch.manual_seed(0)
    cfg = tta_cfg([96], flip=True)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.normal_(std=0.05)
        model.head.bbox_pred.weight.normal_(std=0.05)
        model.head.cls_logits.bias.fill_(-3.0)  # sigmoid 0.047: some pass 0.05
    inputs = image(96, 128, seed=3)
    width = 128
    with torch.no_grad():
        plain = model([inputs])[0]["instances"]
        flipped_inputs = dict(inputs, image=inputs["image"].flip(-1))
        flipped = model([flipped_inputs])[0]["instances"]
    x0, y0, x1, y1 = flipped.pred_boxes.tensor.unbind(1)
    mirrored = torch.stack([width - x1, y0, width - x0, y1], dim=1)
    boxes = torch.cat([plain.pred_boxes.tensor, mirrored])
    scores = torch.cat([plain.scores, flipped.scores])
    classes = torch.cat([plain.pred_classes, flipped.pred_classes])
    keep = batched_nms(boxes, scores, classes, cfg.MODEL.FCOS.NMS_TH)
    keep = keep[: cfg.MODEL.FCOS.POST_NMS_TOPK_TEST]

    tta = FCOSWithTTA(cfg, model)([inputs])[0]["instances"]
    assert 0 < len(plain) < len(tta) == len(keep) < cfg.MODEL.FCOS.POST_NMS_TOPK_TEST

    def ordered(b, s, c):  # NMS may order (nearly) equal scores either way
        order = sorted(range(len(s)), key=lambda i: (int(c[i]), *b[i].round(decimals=1).tolist()))
        return b[order], s[order], c[order]

    got = ordered(tta.pred_boxes.tensor, tta.scores, tta.pred_classes)
    expected = ordered(boxes[keep], scores[keep], classes[keep])
    torch.testing.assert_close(got[0], expected[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)
    assert torch.equal(got[2], expected[2])


def test_resized_input_is_mapped_to_its_output_size():
    """Input already resized (e.g. by the test loader): one scale equal to its size and no
    flip reproduce the plain model, rescaled to "height" x "width"."""
    cfg = tta_cfg([64], flip=False)
    model = constant_model(cfg)
    inputs = dict(image(64, 96), height=128, width=192)
    plain = model([inputs])[0]["instances"]
    tta = FCOSWithTTA(cfg, model)([inputs])[0]["instances"]
    assert tta.image_size == plain.image_size == (128, 192)
    assert box_set(tta) == box_set(plain)


def test_trainer_evaluates_with_tta(tmp_path):
    """``Trainer.test_with_TTA``: the dataset's evaluator on FCOSWithTTA's outputs."""
    import cv2
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from fcos_d2.engine import Trainer

    name = "fcos_tta_trainer_test"
    records = []
    for i in range(2):
        path = str(tmp_path / f"{i}.png")
        cv2.imwrite(path, np.full((64, 80, 3), 120, np.uint8))
        records.append({"file_name": path, "image_id": i, "height": 64, "width": 80,
                        "annotations": [{"bbox": [28, 20, 16, 16], "bbox_mode": BoxMode.XYWH_ABS,
                                         "category_id": 0, "iscrowd": 0}]})
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], evaluator_type="coco")
    cfg = tta_cfg([64, 96], flip=True)
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    results = Trainer.test_with_TTA(cfg, constant_model(cfg))
    assert set(results) == {"bbox_TTA"}
    # the ground-truth box is one of the (equal-score) boxes of the constant model
    assert results["bbox_TTA"]["AP50"] > 0
    assert os.path.isdir(os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
