"""Checkpoints loaded into fcos_d2 models: fine-tuning with another number of classes."""
import logging

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import tiny_cfg


def test_checkpoint_with_other_class_count_skips_only_the_classifier(tmp_path, caplog):
    source = build_model(tiny_cfg(num_classes=5))
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("five")
    target = build_model(tiny_cfg(num_classes=3))
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(target).load(str(tmp_path / "five.pth"))
    assert "head.cls_logits.weight" in caplog.text and "head.cls_logits.bias" in caplog.text
    assert torch.equal(target.head.bbox_pred.weight, source.head.bbox_pred.weight)
    stem_weight = source.backbone.bottom_up.stem.conv1.weight
    assert torch.equal(target.backbone.bottom_up.stem.conv1.weight, stem_weight)
    assert target.head.cls_logits.weight.shape[0] == 3
