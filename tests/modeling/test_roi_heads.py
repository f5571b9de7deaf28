"""Probabilistic two-stage FCOS (fcos_d2.modeling.roi_heads): FCOS proposals' P(object) x
the ROI heads' P(class); the yacs configs of the recipe (their LazyConfig twins:
tests/config/test_lazy.py)."""
import math

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import fcos_d2
from helpers import make_inputs, tiny_cfg
from fcos_d2.modeling.roi_heads import (
    ProbabilisticCascadeROIHeads,
    ProbabilisticFastRCNNOutputLayers,
    ProbabilisticROIHeads,
    combine_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BOXES = [[[10, 10, 60, 50], [30, 20, 120, 90]], [[0, 0, 40, 40]]]
HEADS = {"faster": "ProbabilisticROIHeads", "cascade": "ProbabilisticCascadeROIHeads"}
STOCK = {"faster": StandardROIHeads, "cascade": CascadeROIHeads}


def prob_cfg(kind: str):
    """The tiny two-stage config with a probabilistic head and the recipe's keys."""
    cfg = tiny_cfg(two_stage=True)
    cfg.MODEL.ROI_HEADS.NAME = HEADS[kind]
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.6]
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.6, 0.7, 0.8]
    cfg.MODEL.FCOS.RPN.POST_NMS_TOPK_TEST = 64
    return cfg


def proposals_with(boxes, logits, size=(96, 128)) -> Instances:
    proposals = Instances(size)
    proposals.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    proposals.objectness_logits = torch.tensor(logits, dtype=torch.float32)
    return proposals


def features_of(model, size=(96, 128)):
    images = model.preprocess_image(make_inputs([[]], size=size))
    return model.backbone(images.tensor)


# ---- the score ---------------------------------------------------------------------------


def test_combine_scores_is_the_geometric_mean_by_hand():
    class_probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    object_probs = torch.tensor([0.25, 0.81])
    # sqrt(0.25 * 0.6) = sqrt(0.15), sqrt(0.075), sqrt(0.025); sqrt(0.162), sqrt(0.486)
    expected = torch.tensor(
        [[0.3872983, 0.2738613, 0.1581139], [0.4024922, 0.4024922, 0.6971370]]
    )
    assert torch.allclose(combine_scores(class_probs, object_probs), expected, atol=1e-6)


def test_predictor_scores_by_hand_and_zero_probability_gives_no_detection():
    """Two proposals, the same class logits (softmax 0.6 / 0.3 / 0.1 over 2 classes +
    background), P(object) = 0.25 and 0: the first gives sqrt(0.25 * 0.6) and sqrt(0.25 * 0.3),
    the second nothing (its final scores are 0, under the 0.05 threshold)."""
    cfg = prob_cfg("faster")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    predictor = ProbabilisticFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    logits = torch.log(torch.tensor([[6.0, 3.0, 1.0], [6.0, 3.0, 1.0]]))
    deltas = torch.zeros(2, 4)  # class-agnostic, predicted boxes = proposals
    proposals = proposals_with(
        [[10, 10, 50, 40], [60, 20, 100, 70]], [math.log(0.25 / 0.75), float("-inf")]
    )
    (result,), (kept,) = predictor.inference((logits, deltas), [proposals])
    assert kept.tolist() == [0, 0]
    assert result.pred_classes.tolist() == [0, 1]
    assert torch.allclose(result.scores, torch.tensor([math.sqrt(0.15), math.sqrt(0.075)]))
    assert torch.allclose(result.pred_boxes.tensor, torch.tensor([[10.0, 10, 50, 40]] * 2))
    assert combine_scores(torch.rand(5, 3), torch.zeros(5)).eq(0).all()


# ---- the heads against Detectron2's -------------------------------------------------------


def test_registered_and_built_from_the_config():
    assert ROI_HEADS_REGISTRY.get("ProbabilisticROIHeads") is ProbabilisticROIHeads
    assert ROI_HEADS_REGISTRY.get("ProbabilisticCascadeROIHeads") is ProbabilisticCascadeROIHeads
    heads = build_model(prob_cfg("cascade")).roi_heads
    assert type(heads) is ProbabilisticCascadeROIHeads and heads.num_cascade_stages == 3
    assert all(type(p) is ProbabilisticFastRCNNOutputLayers for p in heads.box_predictor)
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.6, 0.7, 0.8]
    assert heads.box_predictor[0].bbox_pred.out_features == 4  # class-agnostic


def test_a_stock_predictor_is_refused():
    cfg = prob_cfg("faster")
    kwargs = ProbabilisticROIHeads.from_config(cfg, build_model(cfg).backbone.output_shape())
    assert type(kwargs["box_predictor"]) is ProbabilisticFastRCNNOutputLayers
    kwargs["box_predictor"] = FastRCNNOutputLayers(cfg, kwargs["box_head"].output_shape)
    with pytest.raises(TypeError, match="box_predictor must be ProbabilisticFastRCNNOutputLayers"):
        ProbabilisticROIHeads(**kwargs)


@pytest.mark.parametrize("kind", ["faster", "cascade"])
def test_probability_one_gives_the_square_root_of_detectron2s_scores(kind, seeded):
    """P(object) = 1 for every proposal: the same detections as Detectron2's own head on
    the same weights, each score the square root of Detectron2's (which is P(class))."""
    cfg = prob_cfg(kind)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # sqrt(s) > 0 <=> s > 0: the same set
    model = build_model(cfg).eval()
    stock = STOCK[kind](cfg, model.backbone.output_shape()).eval()
    stock.load_state_dict(model.roi_heads.state_dict())
    features = features_of(model)
    boxes = [[5, 5, 40, 30], [20, 10, 90, 80], [0, 30, 60, 95], [64, 0, 127, 50]]
    proposals = proposals_with(boxes, [float("inf")] * 4)
    with torch.no_grad():
        ours, _ = model.roi_heads(None, features, [proposals])
        theirs, _ = stock(None, features, [proposals])
    ours, theirs = ours[0], theirs[0]
    assert len(ours) == len(theirs) > 0
    assert torch.allclose(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.pred_classes, theirs.pred_classes)
    assert torch.allclose(ours.scores**2, theirs.scores, atol=1e-6)


def test_cascade_scores_are_sqrt_of_probability_times_the_stage_mean(seeded):
    """With P(object) per proposal: each detection's score == sqrt(P(object) of its proposal
    x the mean of the three stages' class probabilities), computed here from the stages'
    own predictions."""
    cfg = prob_cfg("cascade")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    heads = model.roi_heads
    features = features_of(model)
    probs = [0.9, 0.5, 0.2, 0.0]
    proposals = proposals_with(
        [[5, 5, 40, 30], [20, 10, 90, 80], [0, 30, 60, 95], [64, 0, 127, 50]],
        [math.log(p / (1 - p)) if p > 0 else float("-inf") for p in probs],
    )
    with torch.no_grad():
        stages = heads.run_stages(features, [proposals])
        mean = sum(pred.predict_probs(out, props)[0] for pred, out, props in stages) / 3
        last_pred, last_out, last_props = stages[-1]
        boxes = last_pred.predict_boxes(last_out, last_props)[0]
        (result,), (kept,) = last_pred.detect([boxes], [mean], [proposals])
    assert len(result) > 0
    assert 3 not in kept.tolist()  # P(object) = 0: no detection
    p = torch.tensor(probs)[kept]
    expected = torch.sqrt(p * mean[kept, result.pred_classes])
    assert torch.allclose(result.scores, expected, atol=1e-6)


def test_cascade_stages_keep_the_first_stage_probabilities(seeded):
    model = build_model(prob_cfg("cascade")).eval()
    features = features_of(model)
    logits = [2.0, -1.0, 0.5, float("-inf")]
    proposals = proposals_with(
        [[5, 5, 40, 30], [20, 10, 90, 80], [0, 30, 60, 95], [64, 0, 127, 50]], logits
    )
    with torch.no_grad():
        stages = model.roi_heads.run_stages(features, [proposals])
    assert len(stages) == 3
    assert stages[0][2][0] is proposals
    for _, _, (stage_proposals,) in stages[1:]:
        assert torch.equal(stage_proposals.objectness_logits, torch.tensor(logits))
        # refined boxes (of the previous stage), not the first stage's
        refined = stage_proposals.proposal_boxes.tensor
        assert not torch.equal(refined, proposals.proposal_boxes.tensor)
    assert torch.isfinite(stages[2][2][0].proposal_boxes.tensor).all()


# ---- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["faster", "cascade"])
def test_trains_a_few_iterations_then_detects(kind, seeded):
    """Three SGD steps (one batch without objects), finite losses that reach the FCOS and
    the box heads; then inference on odd sizes and on an image without objects."""
    cfg = prob_cfg(kind)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [make_inputs(BOXES, seed=0), make_inputs([[]], seed=1), make_inputs(BOXES, seed=2)]
    with EventStorage():
        for inputs in batches:
            losses = model(inputs)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    suffix = ["_stage0", "_stage1", "_stage2"] if kind == "cascade" else [""]
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    expected |= {f"{name}{s}" for name in ("loss_cls", "loss_box_reg") for s in suffix}
    assert set(losses) == expected

    model.eval()
    inputs = make_inputs([[], []], size=(97, 131), seed=3) + make_inputs([[]], size=(61, 45))
    for x in inputs:
        x.pop("instances")
    with torch.no_grad():
        outputs = model(inputs)
    for x, out in zip(inputs, outputs):
        det = out["instances"]
        assert det.image_size == (x["height"], x["width"])
        assert torch.isfinite(det.pred_boxes.tensor).all()
        assert ((det.scores > 0.05) & (det.scores <= 1)).all()


@pytest.mark.slow
def test_stock_heads_with_fcos_proposals_unchanged(seeded):
    """FCOS proposals into Detectron2's StandardROIHeads still train and detect."""
    model = build_model(tiny_cfg(two_stage=True)).train()
    assert type(model.roi_heads) is StandardROIHeads
    with EventStorage():
        losses = model(make_inputs(BOXES))
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()([{"image": torch.rand(3, 96, 128) * 255}])
    assert out[0]["instances"].image_size == (96, 128)


# ---- configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "configs/FCOS-RPN/prob_faster_rcnn_R_18_FPN_demo.yaml",
        "configs/FCOS-RPN/prob_cascade_rcnn_R_18_FPN_demo.yaml",
        "configs/FCOS-RPN/prob_faster_rcnn_R_50_FPN_1x.yaml",
        "configs/FCOS-RPN/prob_cascade_rcnn_R_50_FPN_1x.yaml",
    ],
)
def test_yacs_configs_hold_the_recipe(path):
    cfg = fcos_d2.setup_cfg(path)
    rpn = cfg.MODEL.FCOS.RPN
    assert (rpn.PRE_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TRAIN) == (4000, 2000)
    assert (rpn.PRE_NMS_TOPK_TEST, rpn.POST_NMS_TOPK_TEST) == (1000, 256)
    assert rpn.NMS_TH_TRAIN == rpn.NMS_TH_TEST == 0.9
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FCOS"
    assert list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) == [0.6]
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    cascade = "cascade" in path
    assert cfg.MODEL.ROI_HEADS.NAME == HEADS["cascade" if cascade else "faster"]
    if cascade:
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.6, 0.7, 0.8]
