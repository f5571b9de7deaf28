"""TorchScript scripting (``torch.jit.script``) of the fcos_d2 models, the way Detectron2's
``tools/deploy/export_model.py --export-method scripting`` does it (``scripting_with_instances``
on an adapter that returns the Instances' fields), in this process: scripted detections
equal eager ones, and eager inference is unchanged. The tool itself:
tests/tools/test_d2_export_tool.py."""
import importlib.util
import os
import sys
from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn

import detectron2
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from helpers import BOX_ATOL, SCORE_ATOL, spread_model, tiny_cfg
from fcos_d2.modeling import FCOSPostProcessor
from fcos_d2.modeling.fold_bn import FrozenBatchNormFoldedConv2d

pytestmark = pytest.mark.usefixtures("one_thread")

#: The Instances fields the scripted models use (those of Detectron2's export tool).
FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
}


@pytest.fixture(scope="module")
def scripting_with_instances():
    """Detectron2's ``scripting_with_instances``. Detectron2 v0.6's ``detectron2.export``
    imports caffe2, which PyTorch no longer has: its ``torchscript_patch`` module (what
    ``scripting_with_instances`` runs) is then loaded alone."""
    try:
        from detectron2.export import scripting_with_instances

        return scripting_with_instances
    except ImportError:
        pass
    path = os.path.join(os.path.dirname(detectron2.__file__), "export", "torchscript_patch.py")
    spec = importlib.util.spec_from_file_location("detectron2_torchscript_patch", path)
    patch = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = patch
    spec.loader.exec_module(patch)

    def script(model, fields):
        with patch.freeze_training_mode(model), patch.patch_instances(fields):
            return torch.jit.script(model)

    return script


class OneStage(nn.Module):
    """What the export tool scripts for a model called directly (RetinaNet, FCOS), for a
    batch (the tool's takes one image, a 1-tuple)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train(model.training)  # Detectron2's scripting_with_instances wants eval mode

    def forward(self, inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        return [i.get_fields() for i in self.model(inputs)]


class TwoStage(OneStage):
    """What the export tool scripts for a ``GeneralizedRCNN``."""

    def forward(self, inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        return [i.get_fields() for i in self.model.inference(inputs, do_postprocess=False)]


def images(seed=0):
    """Two images of different sizes (one batch, padded)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=gen) * 255 for h, w in ((96, 128), (80, 100))]


def assert_fields_equal_eager(scripted, expected):
    assert len(scripted) == len(expected)
    for fields, instances in zip(scripted, expected):
        assert len(fields["scores"]) == len(instances) >= 10
        assert torch.equal(fields["pred_classes"], instances.pred_classes)
        torch.testing.assert_close(fields["scores"], instances.scores, atol=SCORE_ATOL, rtol=0)
        torch.testing.assert_close(
            fields["pred_boxes"], instances.pred_boxes.tensor, atol=BOX_ATOL, rtol=0
        )


def test_fcos_scripts_and_equals_eager(scripting_with_instances):
    model = spread_model()
    inputs = [{"image": image} for image in images()]
    with torch.no_grad():
        before = [out["instances"] for out in model(inputs)]
        scripted = scripting_with_instances(OneStage(model), FIELDS)
        got = scripted(inputs)
        after = [out["instances"] for out in model(inputs)]
    assert_fields_equal_eager(got, before)
    for a, b in zip(after, before):  # scripting leaves the eager model as it was
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)


def test_two_stage_scripts_and_equals_eager(scripting_with_instances):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(two_stage=True)).eval()
    inputs = [{"image": image} for image in images()]
    with torch.no_grad():
        expected = model.inference(inputs, do_postprocess=False)
        got = scripting_with_instances(TwoStage(model), FIELDS)(inputs)
    assert_fields_equal_eager(got, expected)


def test_frozen_batchnorm_folded_conv_scripts_bit_exact():
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(8)
    with torch.no_grad():
        for t in (norm.weight, norm.bias, norm.running_mean):
            t.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 4, 9, 11)
    for conv in (
        FrozenBatchNormFoldedConv2d(4, 8, 3, padding=1, norm=norm, activation=nn.ReLU()),
        FrozenBatchNormFoldedConv2d(4, 8, 3, padding=1, bias=False, norm=norm),
        FrozenBatchNormFoldedConv2d(4, 8, 3, padding=1),  # no norm: fold_batchnorm's copies
    ):
        with torch.no_grad():
            assert torch.equal(torch.jit.script(conv)(x), conv(x))


def test_post_processor_adds_no_checkpoint_keys():
    """The post-processor is a module (it scripts with the model) without state."""
    assert FCOSPostProcessor().state_dict() == {}
    keys = spread_model().state_dict().keys()
    assert not [k for k in keys if "postprocessor" in k]
