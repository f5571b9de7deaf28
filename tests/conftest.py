"""Small models and batches shared by the tests (CPU, tiny sizes)."""
import pytest
import torch

import fcos_d2  # registers modules; setup_cfg
from detectron2.structures import Boxes, Instances


def tiny_cfg(two_stage: bool = False, num_classes: int = 3):
    """A small ResNet-18 FCOS (or FCOS-RPN Faster R-CNN) config that runs fast on CPU."""
    two_stage_base = "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml"
    base = two_stage_base if two_stage else "configs/Base-FCOS.yaml"
    cfg = fcos_d2.setup_cfg(base, freeze=False)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 64  # GroupNorm(32) needs >1 value per group on 1x1 P7
    cfg.MODEL.FPN.NORM = "GN"  # from-scratch two-stage training diverges without it
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 160
    # float32 inference on every machine kind: tests compare detections exactly (against
    # exports, torchvision, ...); tests/test_precision.py runs TEST.AMP.
    cfg.TEST.AMP.ENABLED = False
    return cfg


def make_inputs(boxes_per_image, size=(96, 128), seed=0, classes=None):
    """Detectron2 training inputs: random images with the given XYXY boxes."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for i, boxes in enumerate(boxes_per_image):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        cls = classes[i] if classes is not None else [j % 3 for j in range(len(boxes))]
        inst.gt_classes = torch.tensor(cls, dtype=torch.int64)
        image = torch.rand(3, *size, generator=gen) * 255
        inputs.append({"image": image, "instances": inst, "height": size[0], "width": size[1]})
    return inputs


def load_script(relative_path: str):
    """Import a repository script (e.g. "tools/export_model.py") as a module."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", relative_path)
    name = os.path.splitext(os.path.basename(relative_path))[0] + "_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield
