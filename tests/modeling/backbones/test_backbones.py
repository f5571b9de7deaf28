"""The backbones (fcos_d2.modeling.backbones and the FPN builders): DarkNet-19 and
MobileNetV2 shapes and freezing, every FCOS backbone's demo config gives P3-P7 and trains."""
import glob
import os

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from helpers import REPO, tiny_cfg, training_step
from fcos_d2 import add_fcos_config
from fcos_d2.modeling.backbones import DarkNet, MobileNetV2
from fcos_d2.modeling.backbones.mobilenet import InvertedResidual

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
