"""Loss values on tiny inputs computed by hand (fcos_d2.modeling.losses): the box losses, the
IoU box-quality target, the moving foreground normaliser."""
import math

import pytest
import torch

import fcos_d2  # noqa: F401
from helpers import tiny_cfg, training_step
from fcos_d2.modeling.losses import FCOSLosses, box_iou_ltrb, iou_loss

LN2 = math.log(2.0)


def test_iou_losses_on_nested_boxes():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # 2 x 2 box around the point
    target = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # 3 x 3 box, contains pred
    iou = 4 / 9
    assert iou_loss(pred, target, "iou").item() == pytest.approx(-math.log(iou), rel=1e-5)
    assert iou_loss(pred, target, "linear_iou").item() == pytest.approx(1 - iou, rel=1e-5)
    assert iou_loss(pred, target, "giou").item() == pytest.approx(1 - iou, rel=1e-5)


def test_giou_penalises_the_empty_part_of_the_enclosing_box():
    pred = torch.tensor([[2.0, 0.5, 0.5, 2.0]])
    target = torch.tensor([[0.5, 2.0, 2.0, 0.5]])
    inter, union, enclose = 1.0, 6.25 + 6.25 - 1.0, 16.0
    giou = inter / union - (enclose - union) / enclose
    assert iou_loss(pred, target, "giou").item() == pytest.approx(1 - giou, rel=1e-5)


def test_unknown_loc_loss_type_is_refused():
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        FCOSLosses(num_classes=2, loc_loss_type="l1")


def test_fcos_losses_by_hand():
    """Two locations, two classes: one positive (class 1), one background."""
    losses = FCOSLosses(
        num_classes=2, focal_alpha=0.25, focal_gamma=2.0, loc_loss_type="linear_iou"
    )
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    box = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    ctr = torch.zeros(1, 2)  # sigmoid 0.5
    labels = torch.tensor([[1, 2]])
    reg = torch.tensor([[[1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    out = losses(logits, box, ctr, labels, reg)

    pos_term = 0.25 * 0.5**2 * LN2  # alpha (1 - p)^2 (-log p)
    neg_term = 0.75 * 0.5**2 * LN2  # (1 - alpha) p^2 (-log(1 - p))
    # 4 logits: the positive's class-1 logit is a positive term, the other three negative.
    assert out["loss_fcos_cls"].item() == pytest.approx(pos_term + 3 * neg_term, rel=1e-5)
    ctr_target = math.sqrt(1 / 2 * 1 / 2)  # l/r = 1/2, t/b = 1/2
    # loc: (1 - IoU) weighted by centerness target, normalised by its sum -> 1 - 4/9
    assert out["loss_fcos_loc"].item() == pytest.approx(1 - 4 / 9, rel=1e-5)
    bce = -(ctr_target * math.log(0.5) + (1 - ctr_target) * math.log(0.5))
    assert out["loss_fcos_ctr"].item() == pytest.approx(bce, rel=1e-5)


def test_ignored_locations_do_not_count():
    losses = FCOSLosses(num_classes=1)
    logits = torch.zeros(1, 3, 1)
    box = torch.ones(1, 3, 4)
    ctr = torch.zeros(1, 3)
    reg = torch.ones(1, 3, 4)
    with_ignored = losses(logits, box, ctr, torch.tensor([[0, 1, -1]]), reg)
    without = losses(logits[:, :2], box[:, :2], ctr[:, :2], torch.tensor([[0, 1]]), reg[:, :2])
    for key in with_ignored:
        assert with_ignored[key].item() == pytest.approx(without[key].item())


def test_image_without_positives_gives_finite_losses_and_gradients():
    losses = FCOSLosses(num_classes=3)
    logits = torch.randn(2, 5, 3, requires_grad=True)
    box = torch.rand(2, 5, 4, requires_grad=True)
    ctr = torch.randn(2, 5, requires_grad=True)
    out = losses(logits, box, ctr, torch.full((2, 5), 3), torch.zeros(2, 5, 4))
    total = sum(out.values())
    assert all(torch.isfinite(v) for v in out.values())
    assert out["loss_fcos_loc"].item() == 0 and out["loss_fcos_ctr"].item() == 0
    # normalised by max(num_pos, 1) = 1: the sum of the negatives' focal terms
    p = torch.sigmoid(logits)
    expected = (0.75 * p**2 * -torch.log(1 - p)).sum()
    assert out["loss_fcos_cls"].item() == pytest.approx(expected.item(), rel=1e-4)
    total.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loc_loss_type", ["iou", "linear_iou", "giou", "smooth_l1"])
@pytest.mark.parametrize("box_quality", ["ctrness", "iou"])
def test_targets_off_the_positives_do_not_matter(loc_loss_type, box_quality):
    """Whatever the assigner leaves at background/ignored locations (here negative and
    zero distances, whose centerness or log would be NaN) changes no loss or gradient."""
    losses = FCOSLosses(num_classes=2, loc_loss_type=loc_loss_type, box_quality=box_quality)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, generator=gen)
    box = torch.rand(1, 3, 4, generator=gen) * 3
    ctr = torch.randn(1, 3, generator=gen)
    labels = torch.tensor([[1, 2, -1]])
    clean = torch.tensor([[[1.0, 2.0, 3.0, 1.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    dirty = clean.clone()
    dirty[0, 1] = torch.tensor([-5.0, 0.0, 0.0, -1.0])
    dirty[0, 2] = torch.tensor([0.0, -3.0, 2.0, 0.0])
    grads = []
    for reg in (clean, dirty):
        inputs = [t.clone().requires_grad_() for t in (logits, box, ctr)]
        out = losses(*inputs, labels, reg)
        sum(out.values()).backward()
        grads.append([t.grad for t in inputs])
        if reg is clean:
            reference = out
    for key in out:
        assert torch.isfinite(out[key]) and out[key].item() == pytest.approx(reference[key].item())
    for clean_grad, dirty_grad in zip(*grads):
        assert torch.isfinite(dirty_grad).all()
        torch.testing.assert_close(dirty_grad, clean_grad)
    # only the positive location's box and quality receive gradient
    assert grads[1][1][0, 1:].abs().sum() == 0 and grads[1][2][0, 1:].abs().sum() == 0


@pytest.mark.parametrize("loc_loss_type", ["iou", "linear_iou", "giou", "smooth_l1"])
@pytest.mark.parametrize("box_quality", ["ctrness", "iou"])
def test_predictions_off_the_positives_do_not_matter(loc_loss_type, box_quality):
    """Box predictions at background/ignored locations -- even inf (an exp head that
    overflowed) or NaN -- change no loss and get no gradient."""
    losses = FCOSLosses(num_classes=2, loc_loss_type=loc_loss_type, box_quality=box_quality)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 2, generator=gen)
    ctr = torch.randn(1, 3, generator=gen)
    labels = torch.tensor([[1, 2, -1]])
    reg = torch.tensor([[[1.0, 2.0, 3.0, 1.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    clean = torch.rand(1, 3, 4, generator=gen) * 3
    dirty = clean.clone()
    dirty[0, 1] = torch.tensor([float("inf"), 0.0, 1.0, float("inf")])
    dirty[0, 2] = torch.tensor([float("nan"), 2.0, 0.0, 1.0])
    outs, box_grads = [], []
    for box in (clean, dirty):
        box = box.clone().requires_grad_()
        out = losses(logits, box, ctr, labels, reg)
        sum(out.values()).backward()
        outs.append(out)
        box_grads.append(box.grad)
    for key in outs[0]:
        assert torch.isfinite(outs[1][key])
        assert outs[1][key].item() == pytest.approx(outs[0][key].item())
    torch.testing.assert_close(box_grads[1], box_grads[0])
    assert box_grads[1][0, 1:].abs().sum() == 0 and box_grads[1][0, 0].abs().sum() > 0


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


@pytest.mark.usefixtures("one_thread")
def test_moving_fg_normalizer_follows_the_positives(seeded):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.LOSS_NORMALIZER_CLS = "moving_fg"
    model, _, _ = training_step(cfg)
    assert model.losses.moving_num_fg.item() < 100.0  # started at 100, few positives here
