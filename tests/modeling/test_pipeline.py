"""The one FCOS pipeline: strides from the backbone, old checkpoints, non-finite outputs."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import fcos_d2
from helpers import tiny_cfg
from fcos_d2.modeling import FCOSPipeline, FCOSPredictions, FCOSPostProcessor
from fcos_d2.modeling import inference
from fcos_d2.modeling.targets import compute_locations

# The names and shapes of an FCOS checkpoint saved before the detector, the proposal
# generator and export shared one pipeline (tiny model of LEGACY_OPTS; the ResNet body,
# whose names are Detectron2's, left out). Checkpoints saved then must still load.
LEGACY_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FCOS.NUM_CLASSES", "3",
    "MODEL.FCOS.NUM_CLS_CONVS", "1", "MODEL.FCOS.NUM_BOX_CONVS", "1",
    "MODEL.FCOS.LOSS_NORMALIZER_CLS", "moving_fg",
]  # fmt: skip
_FPN_IN = {3: 128, 4: 256, 5: 512}
LEGACY_SHAPES = {
    **{f"backbone.fpn_lateral{i}.weight": (64, c, 1, 1) for i, c in _FPN_IN.items()},
    **{f"backbone.fpn_lateral{i}.bias": (64,) for i in _FPN_IN},
    **{f"backbone.fpn_output{i}.weight": (64, 64, 3, 3) for i in _FPN_IN},
    **{f"backbone.fpn_output{i}.bias": (64,) for i in _FPN_IN},
    **{f"backbone.top_block.{p}.{n}": s for p in ("p6", "p7")
       for n, s in (("weight", (64, 64, 3, 3)), ("bias", (64,)))},
    **{f"head.{t}_tower.{k}": s for t in ("cls", "box")
       for k, s in (("convs.0.weight", (64, 64, 3, 3)), ("convs.0.bias", (64,)),
                    ("norms.0.0.weight", (64,)), ("norms.0.0.bias", (64,)))},
    "head.cls_logits.weight": (3, 64, 3, 3), "head.cls_logits.bias": (3,),
    "head.bbox_pred.weight": (4, 64, 3, 3), "head.bbox_pred.bias": (4,),
    "head.ctrness.weight": (1, 64, 3, 3), "head.ctrness.bias": (1,),
    **{f"head.scales.{level}.scale": (1,) for level in range(5)},
    "losses.moving_num_fg": (),
}  # fmt: skip


def legacy_state_dict(seed: int = 0):
    """Random tensors under the old names and shapes (the running count of foreground
    locations, training state, is 42)."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in LEGACY_SHAPES.items()}
    state["losses.moving_num_fg"] = torch.tensor(42.0)
    return state


def test_checkpoint_with_the_old_names_loads_every_tensor(tmp_path):
    cfg = fcos_d2.setup_cfg("configs/Base-FCOS.yaml", LEGACY_OPTS)
    model = build_model(cfg)
    legacy = legacy_state_dict()
    # every old name is a tensor of the model, with its shape; the model adds only the ResNet
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: shapes.get(k) for k in LEGACY_SHAPES} == LEGACY_SHAPES
    assert all(k.startswith("backbone.bottom_up.") for k in set(shapes) - set(LEGACY_SHAPES))
    path = str(tmp_path / "legacy.pth")
    torch.save({"model": legacy}, path)
    incompatible = model.load_state_dict(torch.load(path)["model"], strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.startswith("backbone.bottom_up.") for k in incompatible.missing_keys)
    assert model.losses.moving_num_fg.item() == 42.0  # training state restored
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(path)  # Detectron2's loader takes it too
    for key, value in legacy.items():
        assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(fresh.state_dict()[key], value), key
    with torch.no_grad():
        fresh.eval()([{"image": torch.rand(3, 64, 96) * 255}])  # and it detects


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
    strides_error = r"FPN_STRIDES is \[8, 16, 32, 64, 256\].*\[8, 16, 32, 64, 128\]"
    with pytest.raises(ValueError, match=strides_error):
        build_model(cfg)
    two_stage = build_model(tiny_cfg(two_stage=True))
    assert two_stage.proposal_generator.strides == [8, 16, 32, 64, 128]
    assert isinstance(model, FCOSPipeline)
    assert isinstance(two_stage.proposal_generator, FCOSPipeline)


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
