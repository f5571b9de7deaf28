"""The FCOS head (fcos_d2.modeling.head): every head and loss option in a training step,
the modules the options build, deformable convolution."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling import build_model

from helpers import make_inputs, tiny_cfg, training_step
from fcos_d2.modeling.head import DeformConv3x3

STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
IMAGE = 64  # helpers.training_step's image size, a multiple of 32: level i is IMAGE / stride

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- head and loss options: a full tiny-model training step for every value ------------

HEAD_OPTIONS = [
    ("CENTERNESS_ON_REG", True),
    ("CENTERNESS_ON_REG", False),
    ("BOX_QUALITY", "ctrness"),
    ("BOX_QUALITY", "iou"),
    ("NORM", "GN"),
    ("NORM", "BN"),
    ("NORM", ""),
    ("USE_DEFORMABLE", False),
    ("USE_DEFORMABLE", True),
    ("NUM_SHARE_CONVS", 0),
    ("NUM_SHARE_CONVS", 2),
    ("USE_RELU", True),
    ("USE_RELU", False),
    ("LOC_LOSS_TYPE", "iou"),
    ("LOC_LOSS_TYPE", "linear_iou"),
    ("LOC_LOSS_TYPE", "giou"),
    ("LOC_LOSS_TYPE", "smooth_l1"),
    ("LOSS_NORMALIZER_CLS", "fg"),
    ("LOSS_NORMALIZER_CLS", "moving_fg"),
    ("LOSS_NORMALIZER_CLS", "all"),
]


@pytest.mark.parametrize("key,value", HEAD_OPTIONS, ids=[f"{k}={v!r}" for k, v in HEAD_OPTIONS])
def test_head_option_training_step(seeded, key, value):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS[key] = value
    model, (logits, box_dists, quality), losses = training_step(cfg)

    num_classes = cfg.MODEL.FCOS.NUM_CLASSES
    for level, stride in enumerate(STRIDES.values()):
        size = max(1, IMAGE // stride)
        assert logits[level].shape == (2, num_classes, size, size)
        assert box_dists[level].shape == (2, 4, size, size)
        assert quality[level].shape == (2, 1, size, size)
        assert (box_dists[level] >= 0).all()
    quality_loss = "loss_fcos_iou" if cfg.MODEL.FCOS.BOX_QUALITY == "iou" else "loss_fcos_ctr"
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", quality_loss}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_head_options_change_the_modules(seeded):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.USE_DEFORMABLE = True
    cfg.MODEL.FCOS.NUM_SHARE_CONVS = 2
    cfg.MODEL.FCOS.NORM = "BN"
    head = build_model(cfg).head
    assert isinstance(head.cls_tower.convs[-1], DeformConv3x3)
    assert isinstance(head.box_tower.convs[-1], DeformConv3x3)
    assert not isinstance(head.share_tower.convs[-1], DeformConv3x3)
    assert len(head.share_tower.convs) == 2
    assert len(head.cls_tower.norms) == 5  # one BatchNorm set per level
    assert isinstance(head.cls_tower.norms[0][0], nn.BatchNorm2d)


def test_centerness_on_cls_tower_takes_no_gradient_from_box_tower(seeded):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.CENTERNESS_ON_REG = False
    model = build_model(cfg)
    model.train()
    losses = model(make_inputs([[[8, 8, 40, 40]]], size=(IMAGE, IMAGE)))
    losses["loss_fcos_ctr"].backward()
    assert model.head.cls_tower.convs[0].weight.grad.abs().sum() > 0
    assert model.head.box_tower.convs[0].weight.grad is None


# ---- deformable convolution --------------------------------------------------------------

def test_deformable_conv_with_zero_offsets_is_a_plain_conv():
    torch.manual_seed(0)
    conv = DeformConv3x3(4, 5)
    x = torch.randn(2, 4, 7, 9)
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(conv(x), plain, atol=1e-5)

    nn.init.constant_(conv.offset.bias, 0.5)  # every sampling point moves half a pixel
    assert not torch.allclose(conv(x), plain, atol=1e-3)
