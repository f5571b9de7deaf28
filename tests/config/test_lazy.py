"""The LazyConfigs in configs/lazy: they load, match the yacs models (the probabilistic
two-stage ones included), and train a step."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import fcos_d2  # registers FCOS in Detectron2

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from helpers import REPO, make_inputs
from fcos_d2 import add_fcos_config
from fcos_d2.data.mapper import FCOSDatasetMapper
from fcos_d2.modeling import FCOS, FCOSProposalGenerator

ONE_STAGE = os.path.join(REPO, "configs/lazy/fcos_R_50_FPN.py")
TWO_STAGE = os.path.join(REPO, "configs/lazy/faster_rcnn_fcos_rpn_R_50_FPN.py")
# the yacs configs each LazyConfig mirrors
YACS_TWINS = {
    ONE_STAGE: "configs/COCO-Detection/FCOS_R_50_1x.yaml",
    TWO_STAGE: "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _yacs_model(path: str) -> torch.nn.Module:
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def _shrink(cfg) -> None:
    """ResNet-18, 64-channel FPN, 1+1-conv head, 3 classes: one CPU step in a second."""
    model = cfg.model
    model.backbone.bottom_up.stages.depth = 18
    del model.backbone.bottom_up.stages.stride_in_1x1  # basic blocks have no 1x1 conv
    model.backbone.out_channels = 64
    head = model.head if "head" in model else model.proposal_generator.head
    head.num_cls_convs = 1
    head.num_box_convs = 1
    if "head" in model:
        head.num_classes = 3
    else:
        model.roi_heads.num_classes = 3
        model.roi_heads.batch_size_per_image = 64
        model.roi_heads.box_head.fc_dims = [64, 64]
        model.roi_heads.box_predictor.input_shape.channels = 64


@pytest.mark.parametrize("path", [ONE_STAGE, TWO_STAGE], ids=["fcos", "faster_rcnn_fcos_rpn"])
def test_lazy_model_equals_yacs_model(path):
    """Same parameters (names, shapes, frozen or not) as the yacs config's model."""
    cfg = LazyConfig.load(path)
    assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
    lazy = instantiate(cfg.model)
    yacs = _yacs_model(YACS_TWINS[path])
    assert type(lazy) is type(yacs)

    def signature(model):
        return {k: (tuple(v.shape), v.requires_grad) for k, v in model.named_parameters()}

    assert signature(lazy) == signature(yacs)
    assert {k: v.shape for k, v in lazy.state_dict().items()} == {
        k: v.shape for k, v in yacs.state_dict().items()
    }


@pytest.mark.parametrize("path", [ONE_STAGE, TWO_STAGE], ids=["fcos", "faster_rcnn_fcos_rpn"])
def test_lazy_model_trains_one_step_and_infers(path):
    torch.manual_seed(0)
    cfg = LazyConfig.load(path)
    _shrink(cfg)
    model = instantiate(cfg.model)
    if path == ONE_STAGE:
        assert isinstance(model, FCOS) and model.head.num_classes == 3
        assert model.target_assigner.num_classes == 3 and model.losses.num_classes == 3
    else:
        assert isinstance(model, GeneralizedRCNN)
        assert isinstance(model.proposal_generator, FCOSProposalGenerator)
        assert model.proposal_generator.head.num_classes == 1
    assert model.backbone.bottom_up.stages[0][0].conv1.in_channels == 64  # ResNet-18

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert 0 < instantiate(cfg.lr_multiplier)(0.0) < 0.01  # warm-up starts low

    model.train()
    inputs = make_inputs([[[10, 10, 60, 50], [30, 20, 120, 90]], [[0, 0, 40, 40]]])
    before = model.backbone.fpn_output3.weight.detach().clone()
    with EventStorage(0):  # GeneralizedRCNN logs training statistics there
        losses = model(inputs)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    if path == TWO_STAGE:
        expected |= {"loss_cls", "loss_box_reg"}
    assert set(losses) == expected
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.fpn_output3.weight)

    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"], "height": 48, "width": 64}])
    assert out[0]["instances"].image_size == (48, 64)


def test_lazy_dataloader_mapper_keeps_crowd_for_fcos_only(tmp_path):
    image_path = str(tmp_path / "img.png")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image_path)
    record = {
        "file_name": image_path, "image_id": 1, "height": 40, "width": 60,
        "annotations": [
            {"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [30, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
             "iscrowd": 1},
        ],
    }
    for path, keep in [(ONE_STAGE, True), (TWO_STAGE, False)]:
        cfg = LazyConfig.load(path).dataloader.train.mapper
        cfg.augmentations = []  # no resizing or flipping
        mapper = instantiate(cfg)
        assert isinstance(mapper, FCOSDatasetMapper) and mapper.image_format == "BGR"
        instances = mapper(record)["instances"]
        assert len(instances) == (2 if keep else 1)
        assert instances.has("gt_is_crowd") == keep


def test_lazy_fcos_memory_format_follows_the_auto_rule_on_train_device(monkeypatch):
    """channels_last comes from MEMORY_FORMAT "auto"'s rule for ``train.device``."""
    from fcos_d2.modeling import memory_format

    monkeypatch.setattr(memory_format, "cpu_flags", lambda: frozenset({"avx2"}))  # no AVX-512
    cfg = LazyConfig.load(ONE_STAGE)
    cfg.train.device = "cpu"
    assert instantiate(cfg.model).channels_last_modes == (False, True)  # NCHW training
    cfg.train.device = "cuda"
    assert instantiate(cfg.model).channels_last_modes == (True, True)


@pytest.mark.slow  # builds four R-50 models
@pytest.mark.parametrize("kind", ["faster", "cascade"])
def test_lazy_config_equals_the_yacs_config(kind):
    """Same parameters, proposal budgets and second-stage settings as the yacs twin."""
    lazy = instantiate(LazyConfig.load(f"configs/lazy/prob_{kind}_rcnn_fcos_R_50_FPN.py").model)
    yacs_path = f"configs/FCOS-RPN/prob_{kind}_rcnn_R_50_FPN_1x.yaml"
    yacs = build_model(fcos_d2.setup_cfg(yacs_path, ["MODEL.DEVICE", "cpu"]))
    assert type(lazy.roi_heads) is type(yacs.roi_heads)

    def signature(model):
        return {k: (tuple(v.shape), v.requires_grad) for k, v in model.named_parameters()}

    assert signature(lazy) == signature(yacs)
    for split in ("postprocessor", "postprocessor_train"):
        assert vars(getattr(lazy.proposal_generator, split)) == vars(
            getattr(yacs.proposal_generator, split)
        )

    def second_stage(heads):
        predictors = heads.box_predictor if kind == "cascade" else [heads.box_predictor]
        matchers = heads.proposal_matchers if kind == "cascade" else [heads.proposal_matcher]
        return (
            [m.thresholds for m in matchers],
            [
                (type(p), p.box2box_transform.weights, p.test_score_thresh, p.test_nms_thresh)
                for p in predictors
            ],
        )

    assert second_stage(lazy.roi_heads) == second_stage(yacs.roi_heads)
