"""FCOS as the RPN of Faster R-CNN (Detectron2's GeneralizedRCNN + StandardROIHeads)."""
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from helpers import make_inputs, tiny_cfg
from fcos_d2.modeling import FCOSProposalGenerator

BOXES = [[[10, 10, 60, 50], [30, 20, 120, 90]], [[0, 0, 40, 40]]]


def test_registered_as_fcos():
    entry = PROPOSAL_GENERATOR_REGISTRY.get("FCOS")
    assert entry.__name__ == "FCOS" and entry.build is FCOSProposalGenerator
    built = entry(tiny_cfg(two_stage=True), {
        f"p{i}": ShapeSpec(channels=64, stride=2**i) for i in range(2, 8)
    })
    assert type(built) is FCOSProposalGenerator and built.strides == [8, 16, 32, 64, 128]
    model = build_model(tiny_cfg(two_stage=True))
    assert isinstance(model.proposal_generator, FCOSProposalGenerator)
    assert model.proposal_generator.head.cls_logits.out_channels == 1  # class-agnostic


def test_proposals_have_the_structure_roi_heads_expect(seeded):
    cfg = tiny_cfg(two_stage=True)
    cfg.MODEL.FCOS.RPN.POST_NMS_TOPK_TEST = 50
    model = build_model(cfg).eval()
    inputs = make_inputs(BOXES, size=(96, 128))
    images = model.preprocess_image(inputs)
    with torch.no_grad():
        proposals, losses = model.proposal_generator(images, model.backbone(images.tensor))
    assert losses == {}
    for p, (h, w) in zip(proposals, images.image_sizes):
        assert set(p.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert p.image_size == (h, w)
        assert 0 < len(p) <= 50
        boxes = p.proposal_boxes.tensor
        assert boxes.shape == (len(p), 4)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        logits = p.objectness_logits
        assert torch.equal(logits, logits.sort(descending=True).values)


def test_two_stage_training_iteration_all_losses_finite(seeded):
    model = build_model(tiny_cfg(two_stage=True)).train()
    with EventStorage():  # the ROI heads log their sampling statistics
        losses = model(make_inputs(BOXES))
    assert set(losses) == {
        "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_cls", "loss_box_reg"
    }
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    pg = model.proposal_generator
    assert pg.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_proposals_carry_no_gradient(seeded):
    model = build_model(tiny_cfg(two_stage=True)).train()
    inputs = make_inputs(BOXES)
    images = model.preprocess_image(inputs)
    gt = [x["instances"] for x in inputs]
    proposals, _ = model.proposal_generator(images, model.backbone(images.tensor), gt)
    assert not proposals[0].proposal_boxes.tensor.requires_grad
    assert not proposals[0].objectness_logits.requires_grad


def test_two_stage_image_without_objects(seeded):
    model = build_model(tiny_cfg(two_stage=True)).train()
    with EventStorage():
        losses = model(make_inputs([[]]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_proposal_generator_and_meta_arch_agree_on_the_same_weights(seeded):
    """With one class and the same thresholds, FCOS detections == FCOS proposals."""
    cfg = tiny_cfg(num_classes=1)
    fcos = cfg.MODEL.FCOS
    fcos.INFERENCE_TH_TEST = fcos.RPN.SCORE_TH = 0.02
    fcos.PRE_NMS_TOPK_TEST = fcos.RPN.PRE_NMS_TOPK_TEST = 100
    fcos.POST_NMS_TOPK_TEST = fcos.RPN.POST_NMS_TOPK_TEST = 30
    fcos.NMS_TH = fcos.RPN.NMS_TH_TEST = 0.5
    fcos.RPN.MIN_SIZE = 0.0  # the detector keeps every non-empty box
    detector = build_model(cfg).eval()
    torch.nn.init.normal_(detector.head.cls_logits.weight, std=0.5)  # spread the scores
    rpn = FCOSProposalGenerator(cfg, detector.backbone.output_shape()).eval()
    rpn.head.load_state_dict(detector.head.state_dict())

    inputs = make_inputs([[]], size=(96, 128))
    with torch.no_grad():
        detections = detector(inputs)[0]["instances"]
        images = detector.preprocess_image(inputs)
        proposals, _ = rpn(images, detector.backbone(images.tensor))
    assert len(detections) == 30
    assert torch.allclose(proposals[0].proposal_boxes.tensor, detections.pred_boxes.tensor)
    assert torch.allclose(proposals[0].objectness_logits.sigmoid(), detections.scores, atol=1e-5)


def test_objectness_logits_give_the_fcos_score_back_exactly():
    """sigmoid(objectness_logits) is the proposal's FCOS score, 0 and 1 included (what the
    probabilistic ROI heads read as P(object))."""
    from detectron2.structures import Boxes, Instances

    detections = Instances((20, 30))
    detections.pred_boxes = Boxes(torch.tensor([[0.0, 0, 9, 9], [1, 1, 8, 8], [2, 2, 7, 7]]))
    detections.scores = torch.tensor([1.0, 0.3, 0.0])
    proposals = FCOSProposalGenerator.to_proposals(detections)
    probs = proposals.objectness_logits.sigmoid()
    assert probs[0] == 1.0 and probs[2] == 0.0
    assert torch.allclose(probs[1], torch.tensor(0.3))
    assert proposals.proposal_boxes is detections.pred_boxes
