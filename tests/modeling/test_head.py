"""The FCOS design space: head/loss options, backbones, deformable conv, assignment analysis."""
import glob
import math
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.structures import BoxMode

from helpers import REPO, load_script, make_inputs, tiny_cfg
from fcos_d2 import add_fcos_config
from fcos_d2.modeling.backbones import DarkNet, MobileNetV2
from fcos_d2.modeling.backbones.mobilenet import InvertedResidual
from fcos_d2.modeling.head import DeformConv3x3
from fcos_d2.modeling.losses import FCOSLosses, box_iou_ltrb

DEMO_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "FCOS-Demo", "*.yaml")))
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
IMAGE = 64  # a multiple of 32: the FPN pads to it, so level i is IMAGE / stride wide

pytestmark = pytest.mark.usefixtures("one_thread")


def demo_cfg(path: str):
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


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


def training_step(cfg):
    """One training step of a model built from ``cfg``: (model, head outputs, losses)."""
    model = build_model(cfg)
    model.train()
    captured = {}
    model.head.register_forward_hook(lambda m, i, out: captured.setdefault("out", out))
    boxes = [[[8, 8, 40, 40], [20, 10, 60, 50]], [[0, 0, 30, 30]]]
    inputs = make_inputs(boxes, size=(IMAGE, IMAGE))
    losses = model(inputs)
    sum(losses.values()).backward()
    return model, captured["out"], losses


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


def test_moving_fg_normalizer_follows_the_positives(seeded):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.LOSS_NORMALIZER_CLS = "moving_fg"
    model, _, _ = training_step(cfg)
    assert model.losses.moving_num_fg.item() < 100.0  # started at 100, few positives here


# ---- the IoU box-quality target ----------------------------------------------------------

def bce_with_logit(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_iou_quality_target_is_the_box_iou():
    # two positives (classes 0, 1) and a background location (label K = 2)
    pred = [[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]]
    target = [[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    # by hand: 2x2 inside 4x4 -> 4/16; 4x4 and 4x4 sharing 3x4 -> 12/(16+16-12)
    expected_iou = [0.25, 0.6]
    iou = box_iou_ltrb(torch.tensor(pred[:2]), torch.tensor(target[:2]))
    assert torch.allclose(iou, torch.tensor(expected_iou))

    box_dists = torch.tensor([pred], requires_grad=True)
    quality_logits = [0.3, -0.7, 5.0]
    losses = FCOSLosses(num_classes=2, box_quality="iou")(
        torch.zeros(1, 3, 2),
        box_dists,
        torch.tensor([quality_logits], requires_grad=True),
        torch.tensor([[0, 1, 2]]),
        torch.tensor([target]),
    )
    expected = sum(bce_with_logit(q, t) for q, t in zip(quality_logits, expected_iou)) / 2
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_iou"}  # named for it
    assert losses["loss_fcos_iou"].item() == pytest.approx(expected, rel=1e-5)
    # the target is a constant: the quality loss does not move the boxes
    (grad,) = torch.autograd.grad(losses["loss_fcos_iou"], box_dists, allow_unused=True)
    assert grad is None or (grad == 0).all()


# ---- deformable convolution --------------------------------------------------------------

def test_deformable_conv_with_zero_offsets_is_a_plain_conv():
    torch.manual_seed(0)
    conv = DeformConv3x3(4, 5)
    x = torch.randn(2, 4, 7, 9)
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(conv(x), plain, atol=1e-5)

    nn.init.constant_(conv.offset.bias, 0.5)  # every sampling point moves half a pixel
    assert not torch.allclose(conv(x), plain, atol=1e-3)


# ---- backbones ---------------------------------------------------------------------------

def test_darknet19_strides_and_channels():
    cfg = tiny_cfg()
    net = BACKBONE_REGISTRY.get("build_darknet19_backbone")(cfg, ShapeSpec(channels=3))
    assert isinstance(net, DarkNet)
    expected = {"dark3": (8, 256), "dark4": (16, 512), "dark5": (32, 1024)}
    assert {k: (s.stride, s.channels) for k, s in net.output_shape().items()} == expected
    out = net(torch.rand(1, 3, IMAGE, IMAGE))
    for name, (stride, channels) in expected.items():
        assert out[name].shape == (1, channels, IMAGE // stride, IMAGE // stride)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 18  # DarkNet-19 without its classifier conv
    assert sorted({c.kernel_size[0] for c in convs}) == [1, 3]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 5
    assert all(m.negative_slope == 0.1 for m in net.modules() if isinstance(m, nn.LeakyReLU))


@pytest.mark.parametrize("width_mult,channels", [(1.0, (32, 96, 320)), (0.5, (16, 48, 160))])
def test_mobilenetv2_strides_and_channels(width_mult, channels):
    cfg = tiny_cfg()
    cfg.MODEL.MOBILENET.WIDTH_MULT = width_mult
    net = BACKBONE_REGISTRY.get("build_mobilenetv2_backbone")(cfg, ShapeSpec(channels=3))
    assert isinstance(net, MobileNetV2)
    expected = dict(zip(("mb3", "mb4", "mb5"), zip((8, 16, 32), channels)))
    assert {k: (s.stride, s.channels) for k, s in net.output_shape().items()} == expected
    out = net(torch.rand(1, 3, IMAGE, IMAGE))
    for name, (stride, c) in expected.items():
        assert out[name].shape == (1, c, IMAGE // stride, IMAGE // stride)
    blocks = [m for m in net.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    expanded = blocks[1].conv[0]  # 1x1 expansion by 6
    assert expanded.out_channels == 6 * expanded.in_channels
    assert sum(b.use_shortcut for b in blocks) == 10
    assert any(isinstance(m, nn.ReLU6) for m in net.modules())


def test_freeze_at_freezes_the_first_stages():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    net = BACKBONE_REGISTRY.get("build_mobilenetv2_backbone")(cfg, ShapeSpec(channels=3))
    assert not any(p.requires_grad for p in net.mb1.parameters())
    assert not any(p.requires_grad for p in net.mb2.parameters())
    assert all(p.requires_grad for p in net.mb3.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.mb2.modules())


def fcos_backbone_names():
    return {name for name, _ in BACKBONE_REGISTRY if name.startswith("build_fcos_")}


def test_every_fcos_backbone_has_a_demo_config():
    assert fcos_backbone_names() == {demo_cfg(p).MODEL.BACKBONE.NAME for p in DEMO_CONFIGS}
    assert fcos_backbone_names() >= {
        "build_fcos_resnet_fpn_backbone",
        "build_fcos_regnet_fpn_backbone",
        "build_fcos_darknet19_fpn_backbone",
        "build_fcos_mobilenetv2_fpn_backbone",
    }


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=[os.path.basename(p) for p in DEMO_CONFIGS])
def test_demo_backbone_gives_p3_to_p7(path):
    cfg = demo_cfg(path)
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {f: shapes[f].stride for f in STRIDES} == STRIDES
    with torch.no_grad():
        out = backbone.eval()(torch.rand(1, 3, IMAGE, IMAGE))
    for name, stride in STRIDES.items():
        size = max(1, IMAGE // stride)
        assert out[name].shape == (1, cfg.MODEL.FPN.OUT_CHANNELS, size, size)


@pytest.mark.parametrize("name", ["RegNetX_400MF", "DarkNet19", "MobileNetV2"])
def test_new_backbone_training_step(seeded, name):
    cfg = demo_cfg(os.path.join(REPO, "configs", "FCOS-Demo", f"fcos_{name}_demo.yaml"))
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    model, _, losses = training_step(cfg)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


# ---- tools/analyze_assignment.py on a hand-made dataset ----------------------------------

def load_tool():
    return load_script("tools/analyze_assignment.py")


def annotation(bbox, mode, category_id, iscrowd=0):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, "iscrowd": iscrowd}


def two_images():
    """32x32 images, resized x2 at test time. In 64x64 coordinates:

    image 0: a1 (class 0) [0, 0, 32, 32] contains a2 (class 1) [8, 8, 24, 24];
    image 1: b1 (class 2) [40, 40, 44, 44] contains no location of any level; a crowd box
    over the whole image; b3, b4 (both class 2) [0, 40, 24, 64], [8, 40, 32, 64] overlap.
    """
    xywh, xyxy = BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    return [
        {"image_id": 0, "height": 32, "width": 32, "annotations": [
            annotation([0, 0, 16, 16], xywh, 0), annotation([4, 4, 8, 8], xywh, 1)]},
        {"image_id": 1, "height": 32, "width": 32, "annotations": [
            annotation([20, 20, 22, 22], xyxy, 2),
            annotation([0, 0, 32, 32], xyxy, 0, iscrowd=1),
            annotation([0, 20, 12, 32], xyxy, 2),
            annotation([4, 20, 16, 32], xyxy, 2)]},
    ]


ANALYSIS_OPTS = [
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.FCOS.SIZES_OF_INTEREST", "[16, 32, 64, 128]", "MODEL.FCOS.POS_RADIUS", "1.5",
]

# Worked out by hand (locations of stride s at s/2 + k*s; P3 only takes every box).
# P3, no center sampling: a1 has 16 locations, a2's 4 are among them (ambiguous, classes
#   0/1, they go to the smaller a2); b3, b4 have 9 each, 6 shared (same class); b1 none.
# P3, center sampling (radius 12): a1's region keeps only a2's 4 locations, so a1 loses
#   them all; b3, b4 unchanged.
# FPN (P3 <= 16 < P4 <= 32 < P5 ...): a2 keeps 4 on P3, a1 gets 4 on P4; b3 and b4 get one
#   location each on P3 and P4 -- no location is shared. Center sampling changes nothing.
EXPECTED = {
    ("P3 only (no FPN)", False): dict(boxes=5, recalled=4, candidates=28, ambiguous=4,
                                      ambiguous_any=10),
    ("P3 only (no FPN)", True): dict(boxes=5, recalled=3, candidates=16, ambiguous=4,
                                     ambiguous_any=10),
    ("FPN (P3-P7)", False): dict(boxes=5, recalled=4, candidates=12, ambiguous=0,
                                 ambiguous_any=0),
    ("FPN (P3-P7)", True): dict(boxes=5, recalled=4, candidates=12, ambiguous=0,
                                ambiguous_any=0),
}


def test_assignment_analysis_known_answers():
    tool = load_tool()
    cfg = tiny_cfg()
    cfg.merge_from_list(ANALYSIS_OPTS)
    results = tool.analyze(two_images(), cfg)
    assert {k: vars(v) for k, v in results.items()} == EXPECTED
    assert results[("P3 only (no FPN)", True)].best_possible_recall == pytest.approx(0.6)
    assert results[("P3 only (no FPN)", False)].ambiguous_share == pytest.approx(4 / 28)


def test_assignment_analysis_command_line(capsys):
    tool = load_tool()
    name = "fcos_test_two_images"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, two_images)
    config = os.path.join(REPO, "configs", "FCOS-Demo", "fcos_R_18_demo.yaml")
    tool.main(["--dataset", name, "--config-file", config] + ANALYSIS_OPTS)
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith(("| P3", "| FPN"))]
    assert rows == [
        "| P3 only (no FPN) | no | 80.00% (4/5) | 14.29% (4) | 35.71% (10) | 28 |",
        "| P3 only (no FPN) | yes | 60.00% (3/5) | 25.00% (4) | 62.50% (10) | 16 |",
        "| FPN (P3-P7) | no | 80.00% (4/5) | 0.00% (0) | 0.00% (0) | 12 |",
        "| FPN (P3-P7) | yes | 80.00% (4/5) | 0.00% (0) | 0.00% (0) | 12 |",
    ]
    assert "2/2 images" in err
