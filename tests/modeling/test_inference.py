"""Post-processing on crafted head outputs: threshold, top-k, NMS, rescaling."""
import math

import pytest
import torch

import fcos_d2  # noqa: F401
from fcos_d2.modeling.inference import FCOSPostProcessor, decode_boxes
from fcos_d2.modeling.meta_arch import FCOS
from fcos_d2.modeling.pipeline import FCOSPredictions
from fcos_d2.modeling.targets import compute_locations


def one_level(probs, ctr, dists, height=2, width=2, stride=8):
    """Head outputs of a single image, single level: probs (R, K), ctr (R,), dists (R, 4),
    as the post-processor's (predictions,) argument."""
    locations = [compute_locations(height, width, stride)]
    logits = [torch.tensor(probs).logit()[None]]
    ctrness = [torch.tensor(ctr).logit()[None]]
    box = [torch.tensor(dists, dtype=torch.float32)[None]]
    return (FCOSPredictions(locations, [stride], logits, box, ctrness),)


def test_decode_boxes():
    points = torch.tensor([[4.0, 4.0]])
    boxes = decode_boxes(points, torch.tensor([[0.5, 0.25, 1.0, 2.0]]), torch.tensor([8.0]))
    assert boxes.tolist() == [[0.0, 2.0, 12.0, 20.0]]


def test_threshold_score_and_decoding():
    post = FCOSPostProcessor(score_thresh=0.3, nms_thresh=0.6, score_sqrt=True)
    probs = [[0.9, 0.1], [0.2, 0.25], [0.1, 0.6], [0.05, 0.05]]
    ctr = [0.4, 0.9, 0.9, 0.9]
    d = [[0.5, 0.5, 0.5, 0.5]] * 4
    out = post(*one_level(probs, ctr, d), image_sizes=[(16, 16)])[0]
    # survivors: (loc 0, class 0) and (loc 2, class 1); scores sqrt(cls * ctr)
    assert out.pred_classes.tolist() == [1, 0]
    assert out.scores.tolist() == pytest.approx([math.sqrt(0.6 * 0.9), math.sqrt(0.9 * 0.4)])
    # loc 2 is (4, 12), distances 0.5 * 8 = 4
    assert out.pred_boxes.tensor.tolist() == [[0, 8, 8, 16], [0, 0, 8, 8]]


def test_product_score_and_threshold_with_centerness():
    post = FCOSPostProcessor(score_thresh=0.3, thresh_with_ctr=True, score_sqrt=False)
    probs = [[0.9], [0.5], [0.2], [0.1]]
    ctr = [0.3, 0.9, 0.9, 0.9]  # cls*ctr = 0.27, 0.45, 0.18, 0.09
    out = post(*one_level(probs, ctr, [[0.4] * 4] * 4), image_sizes=[(16, 16)])[0]
    assert out.scores.tolist() == pytest.approx([0.45])


def test_pre_nms_topk_keeps_the_best_per_level():
    post = FCOSPostProcessor(score_thresh=0.05, pre_nms_topk=2, nms_thresh=1.0)
    probs = [[0.9], [0.8], [0.7], [0.6]]
    out = post(*one_level(probs, [0.5] * 4, [[0.4] * 4] * 4), image_sizes=[(16, 16)])[0]
    assert out.scores.tolist() == pytest.approx([math.sqrt(0.45), math.sqrt(0.4)])


def test_class_aware_nms_and_post_nms_topk():
    # Locations 0 and 1 predict the same box (distances differ by one stride in x).
    d = [[0.5, 0.5, 1.5, 0.5], [1.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]
    probs = [[0.9, 0.05], [0.8, 0.05], [0.05, 0.7], [0.05, 0.05]]
    post = FCOSPostProcessor(score_thresh=0.3, nms_thresh=0.5)
    out = post(*one_level(probs, [1.0 - 1e-6] * 4, d), image_sizes=[(16, 16)])[0]
    assert out.pred_classes.tolist() == [0, 1]  # the duplicate of class 0 is suppressed
    # The same box with another class is kept: NMS is per class.
    probs[1] = [0.05, 0.8]
    out = post(*one_level(probs, [1.0 - 1e-6] * 4, d), image_sizes=[(16, 16)])[0]
    assert sorted(out.pred_classes.tolist()) == [0, 1, 1]
    top1 = FCOSPostProcessor(score_thresh=0.3, nms_thresh=0.5, post_nms_topk=1)
    out = top1(*one_level(probs, [1.0 - 1e-6] * 4, d), image_sizes=[(16, 16)])[0]
    assert len(out) == 1 and out.scores.item() == pytest.approx(math.sqrt(0.9), rel=1e-4)


def test_boxes_are_clipped_to_the_image():
    post = FCOSPostProcessor(score_thresh=0.3)
    probs = [[0.9], [0.05], [0.05], [0.05]]
    out = post(*one_level(probs, [0.5] * 4, [[2.0, 2.0, 2.0, 0.5]] * 4), image_sizes=[(12, 10)])[0]
    assert out.pred_boxes.tensor.tolist() == [[0, 0, 10, 8]]


def test_detections_rescaled_to_the_original_image_size():
    post = FCOSPostProcessor(score_thresh=0.3)
    probs = [[0.9], [0.05], [0.05], [0.05]]
    results = post(*one_level(probs, [0.5] * 4, [[0.5] * 4] * 4), image_sizes=[(16, 16)])
    inputs = [{"image": torch.zeros(3, 16, 16), "height": 32, "width": 64}]
    out = FCOS.postprocess_to_original(results, inputs, [(16, 16)])[0]["instances"]
    assert out.image_size == (32, 64)
    assert out.pred_boxes.tensor.tolist() == [[0, 0, 32, 16]]  # (0, 0, 8, 8) * (4, 2)


@pytest.mark.parametrize("thresh_with_ctr", [False, True])
@pytest.mark.parametrize("pre_nms_topk", [3, 20, 1000])
def test_select_level_equals_brute_force(thresh_with_ctr, pre_nms_topk):
    """Whether few pairs pass the threshold (gathered) or more than pre_nms_topk (one dense
    top-k), a level yields the pairs a plain sort of all passing scores gives."""
    gen = torch.Generator().manual_seed(3)
    R, K, stride, thresh = 30, 4, 8, 0.3
    points = compute_locations(5, 6, stride)
    logits = torch.randn(R, K, generator=gen) * 2
    ctrness = torch.randn(R, generator=gen)
    dists = torch.rand(R, 4, generator=gen) * 3
    post = FCOSPostProcessor(
        score_thresh=thresh, pre_nms_topk=pre_nms_topk, thresh_with_ctr=thresh_with_ctr
    )
    boxes, scores, classes = post.select_level(points, stride, logits, dists, ctrness)

    prob = logits.sigmoid() * ctrness.sigmoid()[:, None]
    passing = (prob if thresh_with_ctr else logits.sigmoid()) > thresh
    expected = sorted(
        ((prob[r, k].item(), r, k) for r, k in passing.nonzero().tolist()), reverse=True
    )[:pre_nms_topk]
    assert 20 < passing.sum() < 1000  # both paths are taken across the parameters
    got = sorted(zip(scores.tolist(), boxes.tolist(), classes.tolist()), reverse=True)
    assert len(got) == len(expected)
    for (score, box, cls), (p, r, k) in zip(got, expected):
        assert score == pytest.approx(math.sqrt(p), rel=1e-6) and cls == k
        x, y = points[r].tolist()
        left, t, rr, b = (dists[r] * stride).tolist()
        assert box == pytest.approx([x - left, y - t, x + rr, y + b])


def test_final_detections_drop_non_finite_and_empty_boxes_before_nms():
    """Candidates given straight to the last step: a NaN score and an infinite box are
    dropped (not clipped into the image), so is a box that clipping leaves empty; NMS
    within a class then keeps the best of two overlapping boxes, not across classes."""
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # class 0, kept
        [1.0, 1.0, 10.0, 10.0],  # class 0, IoU 0.81 with the first: suppressed
        [1.0, 1.0, 10.0, 10.0],  # class 1: kept
        [2.0, 2.0, float("inf"), 8.0],  # non-finite box
        [3.0, 3.0, 6.0, 6.0],  # NaN score
        [20.0, 2.0, 30.0, 8.0],  # outside the 16-wide image: empty once clipped
    ])  # fmt: skip
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, float("nan"), 0.6])
    classes = torch.tensor([0, 0, 1, 0, 0, 1])
    post = FCOSPostProcessor(nms_thresh=0.6)
    out = post.final_detections(boxes, scores, classes, (16, 16))
    assert out[0].tolist() == [[0, 0, 10, 10], [1, 1, 10, 10]]
    assert out[1].tolist() == pytest.approx([0.9, 0.7]) and out[2].tolist() == [0, 1]
    kept = FCOSPostProcessor(nms_thresh=0.6, remove_empty_boxes=False).final_detections(
        boxes, scores, classes, (16, 16)
    )
    assert kept[0].tolist() == [[0, 0, 10, 10], [1, 1, 10, 10], [16, 2, 16, 8]]
    top1 = FCOSPostProcessor(nms_thresh=0.6, post_nms_topk=1)
    assert top1.final_detections(boxes, scores, classes, (16, 16))[2].tolist() == [0]


def test_old_argument_names_still_work_with_a_warning():
    """``remove_small_boxes`` (post-processor), ``keep_empty`` (the opposite sense, rescaling
    to the output size) and ``remove_empty`` (rescale_boxes) were the earlier names of
    ``remove_empty_boxes``."""
    from fcos_d2.modeling.inference import rescale_boxes
    from detectron2.structures import Boxes, Instances

    with pytest.warns(FutureWarning, match="use remove_empty_boxes=False"):
        post = FCOSPostProcessor(remove_small_boxes=False)
    assert post.remove_empty_boxes is False
    assert FCOSPostProcessor().remove_empty_boxes is True
    with pytest.raises(TypeError, match="unexpected keyword argument 'remove_boxes'"):
        FCOSPostProcessor(remove_boxes=False)

    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 2.0, 4.0]])  # the second: empty
    result = Instances((8, 8), pred_boxes=Boxes(boxes), scores=torch.tensor([0.9, 0.8]))
    sizes, inputs = [(8, 8)], [{"height": 16, "width": 16}]
    with pytest.warns(FutureWarning, match="use remove_empty_boxes=False instead of keep_empty"):
        old = FCOS.postprocess_to_original([result], inputs, sizes, keep_empty=True)
    new = FCOS.postprocess_to_original([result], inputs, sizes, remove_empty_boxes=False)
    assert old[0]["instances"].pred_boxes.tensor.tolist() == [[0, 0, 8, 8], [4, 0, 4, 8]]
    assert torch.equal(old[0]["instances"].pred_boxes.tensor, new[0]["instances"].pred_boxes.tensor)
    assert len(FCOS.postprocess_to_original([result], inputs, sizes)[0]["instances"]) == 1

    with pytest.warns(FutureWarning, match="'remove_empty' is deprecated"):
        _, keep = rescale_boxes(boxes, (8, 8), (16, 16), remove_empty=False)
    assert keep.tolist() == [True, True]
    assert rescale_boxes(boxes, (8, 8), (16, 16))[1].tolist() == [True, False]
