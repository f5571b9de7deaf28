"""The FCOS meta-architecture end to end: registry, a training step, inference, empty images,
tiny and odd image sizes."""

import pytest
import torch

from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model

from helpers import make_inputs, tiny_cfg
from fcos_d2.modeling import FCOS, build_fcos_resnet_fpn_backbone


def test_registry_names():
    assert META_ARCH_REGISTRY.get("FCOS") is FCOS
    assert BACKBONE_REGISTRY.get("build_fcos_resnet_fpn_backbone") is build_fcos_resnet_fpn_backbone
    model = build_model(tiny_cfg())
    assert isinstance(model, FCOS)
    shapes = model.backbone.output_shape()
    assert {f: shapes[f].stride for f in model.head_in_features} == {
        "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128
    }


def test_p6_p7_from_c5_option():
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE = "res5"
    model = build_model(cfg)
    assert model.backbone.top_block.p6.in_channels == 512  # ResNet-18 res5
    cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE = "p5"
    assert build_model(cfg).backbone.top_block.p6.in_channels == 64


def test_training_step_gives_finite_losses_and_gradients(seeded):
    model = build_model(tiny_cfg())
    model.train()
    inputs = make_inputs([[[10, 10, 60, 50], [30, 20, 120, 90]], [[0, 0, 40, 40]]])
    losses = model(inputs)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.head.ctrness.weight.grad.abs().sum() > 0


def test_image_without_objects(seeded):
    model = build_model(tiny_cfg())
    model.train()
    losses = model(make_inputs([[]]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()


def test_inference_output_format(seeded):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    cfg.MODEL.FCOS.POST_NMS_TOPK_TEST = 7
    model = build_model(cfg)
    model.eval()
    inputs = make_inputs([[], []], size=(96, 128))
    inputs[1]["height"], inputs[1]["width"] = 192, 256
    with torch.no_grad():
        out = model(inputs)
    for result, (h, w) in zip(out, [(96, 128), (192, 256)]):
        inst = result["instances"]
        assert inst.image_size == (h, w)
        assert len(inst) == 7
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_mismatched_strides_are_reported():
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 256]
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_model(cfg)


def test_images_without_annotations_train(seeded):
    model = build_model(tiny_cfg()).train()
    losses = model(make_inputs([[], []]))
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("size", [(32, 32), (1, 500), (100, 75), (130, 257)])
def test_tiny_and_odd_sizes_train_and_infer(size, seeded):
    model = build_model(tiny_cfg())
    h, w = size
    box = [[0, 0, max(w / 2, 1), max(h / 2, 1)]]
    model.train()
    losses = model(make_inputs([box, box], size=size))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(make_inputs([[]], size=size))[0]["instances"]
    assert out.image_size == size
