"""The one FCOS pipeline: strides from the backbone, old checkpoints, non-finite outputs."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import fcos_d2
from conftest import tiny_cfg
from fcos_d2.modeling import FCOSPipeline, FCOSPredictions, FCOSPostProcessor
from fcos_d2.modeling import inference
from fcos_d2.modeling.targets import compute_locations

# Saved by the code before the single-pipeline refactor (commit 24a8a05) from the tiny
# model below, with the head perturbed and moving_num_fg = 42; the ResNet-18 body is left
# out (it is rebuilt with the same seed), and its detections on one image are included.
LEGACY = "tests/data/fcos_checkpoint_before_refactor.pt"
LEGACY_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FCOS.NUM_CLASSES", "3",
    "MODEL.FCOS.NUM_CLS_CONVS", "1", "MODEL.FCOS.NUM_BOX_CONVS", "1",
    "MODEL.FCOS.LOSS_NORMALIZER_CLS", "moving_fg",
]  # fmt: skip


def test_checkpoint_saved_before_the_refactor_loads_and_detects_the_same(tmp_path):
    legacy = torch.load(LEGACY, weights_only=False)
    cfg = fcos_d2.setup_cfg("configs/Base-FCOS.yaml", LEGACY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Same names, nothing new. (Detectron2 after v0.6 also keeps num_batches_tracked in the
    # frozen BatchNorms of the stem and res2, which v0.6 drops: not fcos_d2's keys.)
    def fcos_keys(keys):
        return sorted(k for k in keys if not k.endswith("num_batches_tracked"))

    assert fcos_keys(model.state_dict()) == fcos_keys(legacy["all_keys"])
    path = tmp_path / "legacy.pth"
    torch.save({"model": legacy["model"]}, path)
    incompatible = model.load_state_dict(torch.load(path)["model"], strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.startswith("backbone.bottom_up.") for k in incompatible.missing_keys)
    assert not any(k.startswith("backbone.bottom_up.") for k in legacy["model"])
    assert model.losses.moving_num_fg.item() == 42.0  # training state restored
    DetectionCheckpointer(model).load(str(path))  # Detectron2's loader takes it too
    model.eval()
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        inst = model([{"image": image, "height": 120, "width": 160}])[0]["instances"]
    expected = legacy["outputs"]
    assert len(inst) == len(expected["scores"]) == 100
    assert torch.equal(inst.pred_classes, expected["classes"])
    torch.testing.assert_close(inst.scores, expected["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(inst.pred_boxes.tensor, expected["boxes"], rtol=0, atol=1e-3)


def test_weights_without_the_moving_fg_count_load_without_a_missing_key():
    model = build_model(tiny_cfg())
    state = {k: v for k, v in model.state_dict().items() if k != "losses.moving_num_fg"}
    model.losses.moving_num_fg.fill_(7.0)
    assert model.load_state_dict(state, strict=True) is not None  # strict: nothing missing
    assert model.losses.moving_num_fg.item() == 7.0


def test_strides_come_from_the_backbone_and_fpn_strides_is_checked():
    cfg = tiny_cfg()
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    assert model.strides == [shapes[f].stride for f in model.in_features] == [8, 16, 32, 64, 128]
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 256]
    with pytest.raises(ValueError, match=r"FPN_STRIDES is \[8, 16, 32, 64, 256\].*\[8, 16, 32, 64, 128\]"):
        build_model(cfg)
    two_stage = build_model(tiny_cfg(two_stage=True))
    assert two_stage.proposal_generator.strides == [8, 16, 32, 64, 128]
    assert isinstance(model, FCOSPipeline) and isinstance(two_stage.proposal_generator, FCOSPipeline)


def _predictions(dists, logit=3.0):
    """One image, one 2x2 level of stride 8, one class: every location scores sigmoid(logit)."""
    n = len(dists)
    return FCOSPredictions(
        locations=[compute_locations(2, 2, 8)],
        strides=[8],
        logits=[torch.full((1, n, 1), logit)],
        box_dists=[torch.tensor(dists, dtype=torch.float32)[None]],
        ctrness=[torch.full((1, n), 10.0)],
    )


def test_non_finite_candidates_are_dropped_and_counted(monkeypatch):
    logged = []  # the log line is rate-limited: record the calls instead of the output
    monkeypatch.setattr(
        inference, "log_every_n_seconds", lambda level, message, **kw: logged.append(message)
    )
    inf, nan = float("inf"), float("nan")  # an overflowed exp head, a diverged one
    dists = [[0.5, 0.5, 0.5, 0.5], [inf, 0.5, 0.5, 0.5], [0.5, nan, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    post = FCOSPostProcessor(score_thresh=0.05, nms_thresh=0.99)
    result = post(*(_predictions(dists),), image_sizes=[(64, 64)])[0]
    # locations 0 (4, 4) and 3 (12, 12) remain: boxes (0, 0, 8, 8) and (4, 4, 20, 20)
    assert sorted(result.pred_boxes.tensor.tolist()) == [[0, 0, 8, 8], [4, 4, 20, 20]]
    assert len(logged) == 1
    assert "dropped 2 candidates with a non-finite box or score" in logged[0]
    post(*(_predictions([[0.5] * 4] * 4),), image_sizes=[(64, 64)])
    assert len(logged) == 1  # nothing said when every candidate is finite


def test_the_detector_the_proposal_generator_and_export_use_one_detection_path(monkeypatch):
    calls = []
    original = FCOSPostProcessor.detect_image

    def counting(self, predictions, n, image_size):
        calls.append(type(self).__name__)
        return original(self, predictions, n, image_size)

    monkeypatch.setattr(FCOSPostProcessor, "detect_image", counting)
    image = {"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}
    model = build_model(tiny_cfg()).eval()
    rcnn = build_model(tiny_cfg(two_stage=True)).eval()
    with torch.no_grad():
        model([image])
        rcnn([image])
        from fcos_d2 import export

        export.run_exported(export.FCOSRawOutputs(model), model, [image])
    assert len(calls) == 3
