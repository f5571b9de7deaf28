"""Detectron2's own end-to-end model cases (its tests/modeling/test_model_e2e.py: empty data
at odd sizes, half-empty batches, inf/NaN head outputs at inference, autocast on CUDA)
applied to the FCOS meta-architecture and to Faster R-CNN with FCOS proposals."""
import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from helpers import DEVICES, spread_model, tiny_cfg
from fcos_d2.modeling.pipeline import FCOSPredictions

SIZES = [(200, 250), (200, 249)]  # odd sizes: one width is not a multiple of any stride


@pytest.fixture(params=[False, True], ids=["fcos", "faster_rcnn_fcos_proposals"])
def model(request, one_thread):
    torch.manual_seed(43)
    return build_model(tiny_cfg(two_stage=request.param))


def empty_instances(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.rand(0, 4))
    inst.gt_classes = torch.zeros(0, dtype=torch.int64)
    return inst


def regular_instances(h, w):
    """Detectron2's case: 3 random boxes inside [0, 2] x [0, 2] (smaller than a pixel or two)."""
    inst = Instances((h, w))
    boxes = torch.rand(3, 4)
    boxes[:, 2:] += boxes[:, :2]
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, 1, 2])
    return inst


def _train(model, instances):
    inputs = [{"image": torch.rand(3, h, w) * 255, "instances": inst}
              for (h, w), inst in zip(SIZES, instances)]  # fmt: skip
    model.train()
    with EventStorage():
        losses = model(inputs)
        sum(losses.values()).backward()
    return {k: float(v.detach()) for k, v in losses.items()}


def _is_two_stage(model):
    return hasattr(model, "roi_heads")


def test_empty_data_eval_at_odd_sizes(model):
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, h, w) * 255} for h, w in SIZES])
    assert [tuple(o["instances"].image_size) for o in out] == SIZES
    for o in out:
        inst = o["instances"]
        assert len(inst.pred_boxes) == len(inst.scores) == len(inst.pred_classes)
        assert torch.isfinite(inst.pred_boxes.tensor).all()


def test_empty_data_train(model):
    losses = _train(model, [empty_instances(*s) for s in SIZES])
    assert all(math.isfinite(v) for v in losses.values()), losses
    if _is_two_stage(model):
        assert losses["loss_box_reg"] == 0.0  # no foreground proposal
    else:
        # no positive location: the box and centerness losses are exactly 0
        assert losses["loss_fcos_loc"] == 0.0 and losses["loss_fcos_ctr"] == 0.0
        assert losses["loss_fcos_cls"] > 0.0  # every location is a negative
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_half_empty_data_train(model):
    losses = _train(model, [empty_instances(*SIZES[0]), regular_instances(*SIZES[1])])
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _filled(value, *shape):
    return torch.full(shape, value)


def _head_outputs(model, features, value, input_size):
    """The head's predictions for ``features`` with every output replaced by ``value``."""
    pipeline = model.proposal_generator if _is_two_stage(model) else model
    p = pipeline.predict(features, input_size)
    return pipeline, FCOSPredictions(
        locations=p.locations,
        strides=p.strides,
        logits=[torch.full_like(x, value) for x in p.logits],
        box_dists=[torch.full_like(x, value) for x in p.box_dists],
        ctrness=[torch.full_like(x, value) for x in p.ctrness],
    )


@pytest.mark.parametrize("value", [math.inf, math.nan], ids=["inf", "nan"])
def test_inf_nan_head_outputs_at_inference(model, value):
    """Overflowed (inf) or diverged (NaN) head outputs give no detection and no crash."""
    model.eval()
    images = ImageList(torch.zeros(1, 3, 512, 512), [(510, 510)])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        pipeline, predictions = _head_outputs(model, features, value, (512, 512))
        detections = pipeline.detect(predictions, images.image_sizes)
        assert len(detections[0]) == 0  # every candidate had a non-finite box
        if _is_two_stage(model):
            proposals = [pipeline.to_proposals(d) for d in detections]
            det, _ = model.roi_heads(images, features, proposals)
            assert len(det[0]) == 0


def test_fcos_proposals_in_training_survive_inf_head_outputs(model):
    """FCOS-RPN post-processes in every training step: an overflowed head must reach the
    losses (and the trainer's clear non-finite-loss error), not crash in Boxes.clip."""
    if not _is_two_stage(model):
        pytest.skip("the two-stage model's proposal generator")
    model.train()
    images = ImageList(torch.zeros(2, 3, 256, 256), [(256, 250), (250, 256)])
    features = model.backbone(images.tensor)
    pipeline, predictions = _head_outputs(model, features, math.inf, (256, 256))
    detections = pipeline.detect(predictions, images.image_sizes)
    assert [len(d) for d in detections] == [0, 0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_autocast(model):
    model = model.cuda().eval()
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            flat = list(output.values()) if isinstance(output, dict) else [output]
            dtypes[name] = {t.dtype for t in flat if isinstance(t, torch.Tensor)}

        return hook

    handle = model.backbone.register_forward_hook(record("backbone"))
    try:
        with torch.autocast("cuda"), torch.no_grad():
            out = model([{"image": torch.rand(3, 100, 100, device="cuda") * 255}])[0]
    finally:
        handle.remove()
    assert dtypes["backbone"] == {torch.float16}
    inst = out["instances"]
    assert inst.pred_boxes.tensor.dtype == torch.float32
    assert torch.isfinite(inst.pred_boxes.tensor).all()


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matrix products on CUDA (cuDNN's TF32 is on by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _detections(model, images):
    with torch.no_grad():
        out = model([{"image": image} for image in images])
    return [o["instances"].to("cpu") for o in out]


@pytest.mark.parametrize("device", DEVICES[1:])
@pytest.mark.parametrize("two_stage", [False, True], ids=["fcos", "faster_rcnn_fcos_proposals"])
def test_cuda_detections_equal_the_cpu_ones_in_float32(two_stage, device, no_tf32):
    """The same weights and pixels on CUDA and on the CPU, in float32: the same detections
    (count; each CPU detection has a CUDA one of its class within 0.01 px and 1e-4 in
    score; matched by box, since near-equal scores may sort differently)."""
    if two_stage:
        torch.manual_seed(0)
        cpu = build_model(tiny_cfg(two_stage=True)).eval()
    else:
        cpu = spread_model()
    gpu = build_model(tiny_cfg(two_stage=two_stage, device=device)).eval()
    gpu.load_state_dict(cpu.state_dict())
    if not two_stage:
        gpu.postprocessor.score_thresh = cpu.postprocessor.score_thresh
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=gen) * 255 for size in ((96, 128), (80, 100))]
    for ref, out in zip(_detections(cpu, images), _detections(gpu, images)):
        assert len(ref) >= 10 and len(out) == len(ref)
        for box, score, cls in zip(ref.pred_boxes.tensor, ref.scores, ref.pred_classes):
            same_class = out.pred_classes == cls
            gap = (out.pred_boxes.tensor[same_class] - box).abs().amax(dim=1)
            best = int(gap.argmin())
            assert gap[best] < 0.01
            assert abs(float(out.scores[same_class][best] - score)) < 1e-4
