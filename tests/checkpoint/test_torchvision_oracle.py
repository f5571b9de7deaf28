"""torchvision's FCOS is the oracle for converted torchvision weights.

``torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)``
(nothing is downloaded) gets random weights spread so that many detections pass its 0.2
score threshold; its state dict is converted with ``tools/convert_weights.py`` and loaded
with ``configs/COCO-Detection/FCOS_R_50_torchvision.yaml``. Both models then run on the
same batches of two images, whose sizes are divisible by 128, by 32 only, and by neither.
They must give the same number of detections per image, the same classes (torchvision's
COCO category ids through the converter's mapping), scores within 1e-4 and boxes within
0.01 px.

Both see the same pixels: torchvision's ``GeneralizedRCNNTransform`` always resizes, by
``min(min_size / short side, max_size / long side)``; the two images of a batch share
their short side and ``min_size`` is set to it, so that factor is exactly 1 and its
bilinear resize returns the image unchanged (checked below). Detectron2 resizes in its
data loader instead (not part of the model), so resizing is outside this comparison.

Both pad the batch to a multiple of 32: torchvision's ``size_divisible=32``, and
Detectron2's FPN asks for its last input's stride (res5: 32, not P7's 128). So C3-C5 are
exact halves of each other, where the FPN's top-down upsampling by 2 (Detectron2) equals
interpolating to the lateral's size (torchvision); P6 and P7 are then rounded up.

Each torchvision behaviour that fcos_d2 does not have by default is a config option of
the shipped config; reverting any one of them alone breaks the equality.
"""
import pytest
import torch

import fcos_d2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import load_script
from fcos_d2.checkpoint import coco_contiguous_category_ids

TV_CONFIG = "configs/COCO-Detection/FCOS_R_50_torchvision.yaml"
SCORE_TOL = 1e-4
BOX_TOL = 0.01  # pixels

# (height, width) of the two images of a batch; equal heights (the short side)
BATCHES = {
    "divisible_by_128": [(128, 256), (128, 128)],  # padded: 128 x 256
    "divisible_by_32_only": [(96, 160), (96, 96)],  # padded: 96 x 160, P6 2 x 3, P7 1 x 2
    "divisible_by_neither": [(90, 150), (90, 110)],  # padded: 96 x 160
}


def randomize_torchvision_fcos(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random normalisation statistics and head biases for a torchvision FCOS, spread so
    that a few percent of the (location, class) pairs pass the 0.2 threshold on
    sqrt(cls * ctr), with boxes of about one stride, some of them empty (distances of 0).

    The outputs of torchvision's classifier that are no COCO class (0, background, and the
    10 unused ids) never fire, as in a trained model: their bias is -1e4.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = module.running_mean, module.running_var
                mean.copy_(torch.randn(mean.shape, generator=gen) * 0.1)
                var.copy_(torch.rand(var.shape, generator=gen) + 0.5)
        cls_logits = model.head.classification_head.cls_logits
        cls_logits.weight.normal_(0, 0.03, generator=gen)
        bias = torch.full((91,), -1e4)
        ids = coco_contiguous_category_ids()
        bias[ids] = torch.randn(len(ids), generator=gen) - 6.0
        cls_logits.bias.copy_(bias)
        regression = model.head.regression_head
        regression.bbox_reg.bias.copy_(torch.rand(4, generator=gen) + 0.5)
        regression.bbox_ctrness.weight.normal_(0, 0.03, generator=gen)
        regression.bbox_ctrness.bias.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def torchvision_fcos():
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    return randomize_torchvision_fcos(model, seed=1).eval()


@pytest.fixture(scope="module")
def converted_weights(torchvision_fcos, tmp_path_factory):
    """torchvision's state dict, saved and converted with the command-line tool."""
    folder = tmp_path_factory.mktemp("torchvision_fcos")
    src, out = str(folder / "fcos_tv.pth"), str(folder / "fcos_R_50_torchvision.pth")
    torch.save(torchvision_fcos.state_dict(), src)
    main = load_script("tools/convert_weights.py").main
    assert main(["--source", "torchvision", "--input", src, "--output", out,
                 "--config-file", TV_CONFIG]) == 0
    return out


def build_fcos_d2(weights: str, *opts: str):
    # float32 as torchvision computes (the shipped config follows TEST.AMP "auto")
    opts = ["TEST.AMP.ENABLED", "False", *opts]
    cfg = fcos_d2.setup_cfg(TV_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *opts])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return model.eval()


def batch_images(name: str):
    """Two RGB uint8-valued images (float, 0-255) of the batch's sizes."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    return [torch.randint(0, 256, (3, h, w), generator=gen).float() for h, w in BATCHES[name]]


_ORACLE_CACHE = {}


def torchvision_detections(model, name: str, per_image: int = 100):
    """torchvision's detections on the batch (at most ``per_image`` per image, its
    ``detections_per_img``), with labels as Detectron2's class indices."""
    if (name, per_image) not in _ORACLE_CACHE:
        images = [x / 255.0 for x in batch_images(name)]
        model.detections_per_img = per_image
        model.transform.min_size = (min(BATCHES[name][0]),)  # resize factor exactly 1
        with torch.no_grad():
            image_list, _ = model.transform(images)
            assert image_list.image_sizes == [tuple(x.shape[-2:]) for x in images]
            for image, resized in zip(images, image_list.tensors):
                normalized = (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / (
                    torch.tensor([0.229, 0.224, 0.225])[:, None, None]
                )
                h, w = image.shape[-2:]
                assert torch.equal(resized[:, :h, :w], normalized)
            detections = model(images)
        to_class = {cid: c for c, cid in enumerate(coco_contiguous_category_ids())}
        for det in detections:
            classes = [to_class[int(i)] for i in det["labels"]]
            det["classes"] = torch.tensor(classes, dtype=torch.long)
        _ORACLE_CACHE[name, per_image] = detections
    return _ORACLE_CACHE[name, per_image]


def fcos_d2_detections(model, name: str):
    with torch.no_grad():
        outputs = model([{"image": x} for x in batch_images(name)])
    return [out["instances"] for out in outputs]


def differences(theirs, ours):
    """Match each of our detections to the unmatched one of torchvision's of the same
    class with the closest box, and return, over all matches, the largest box and score
    differences; None when the counts per image differ or a detection has no partner."""
    max_box, max_score = 0.0, 0.0
    for det, inst in zip(theirs, ours):
        if len(inst) != len(det["boxes"]):
            return None
        unmatched = torch.ones(len(det["boxes"]), dtype=torch.bool)
        for box, score, cls in zip(inst.pred_boxes.tensor, inst.scores, inst.pred_classes):
            box_diff = (det["boxes"] - box).abs().amax(dim=1)  # (D,)
            box_diff[~unmatched | (det["classes"] != cls)] = float("inf")
            j = int(box_diff.argmin())
            if not torch.isfinite(box_diff[j]):
                return None
            unmatched[j] = False
            max_box = max(max_box, float(box_diff[j]))
            max_score = max(max_score, abs(float(det["scores"][j] - score)))
    return max_box, max_score


def equal_detections(theirs, ours) -> bool:
    diff = differences(theirs, ours)
    return diff is not None and diff[0] <= BOX_TOL and diff[1] <= SCORE_TOL


@pytest.fixture(scope="module")
def fcos_d2_model(converted_weights):
    return build_fcos_d2(converted_weights)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_same_detections_as_torchvision(torchvision_fcos, fcos_d2_model, batch):
    theirs = torchvision_detections(torchvision_fcos, batch)
    ours = fcos_d2_detections(fcos_d2_model, batch)
    counts = [len(d["boxes"]) for d in theirs]
    assert min(counts) >= 20, counts  # the weights give many detections to compare
    diff = differences(theirs, ours)
    assert diff is not None, ([len(d["boxes"]) for d in theirs], [len(i) for i in ours])
    max_box, max_score = diff
    print(f"{batch}: {counts} detections, largest box difference {max_box:.2e} px, "
          f"largest score difference {max_score:.2e}")
    assert max_box <= BOX_TOL and max_score <= SCORE_TOL
    for inst, (h, w) in zip(ours, BATCHES[batch]):
        assert inst.image_size == (h, w)


# Each torchvision behaviour of the shipped config, reverted alone to fcos_d2's default,
# and a batch where that changes the detections. (USE_SCALE is not here: converted weights
# have no scales, and a scale of 1 changes nothing.)
REVERTED = {
    # AnchorGenerator.grid_anchors: shifts_x = arange(0, grid_width) * stride_width
    "MODEL.FCOS.LOCATION_OFFSET": ("0.5", "divisible_by_128"),
    # AnchorGenerator.forward: stride = image_size[0] // g[0] (57 for a level of 5 in 288)
    "MODEL.FCOS.SPACING_FROM_INPUT": ("False", "divisible_by_32_only"),
    # FCOS.postprocess_detections: keep_idxs = sqrt(sigmoid(cls) * sigmoid(ctr)) > thresh
    "MODEL.FCOS.THRESH_ON_FINAL_SCORE": ("False", "divisible_by_128"),
    # FCOS.postprocess_detections: clip_boxes_to_image, and no remove_small_boxes
    "MODEL.FCOS.REMOVE_EMPTY_BOXES": ("True", "divisible_by_32_only"),
    # torchvision's Bottleneck: stride in conv2 (3x3)
    "MODEL.RESNETS.STRIDE_IN_1X1": ("True", "divisible_by_128"),
    # GeneralizedRCNNTransform.normalize: ImageNet mean / std on [0, 1]
    "MODEL.PIXEL_STD": ("[1.0, 1.0, 1.0]", "divisible_by_128"),
}


ALL = 1000  # detections per image: all that pass (the 100 best hide the threshold's effect)
TOP_ALL = ("MODEL.FCOS.POST_NMS_TOPK_TEST", str(ALL))


@pytest.fixture(scope="module")
def shipped_config_all(converted_weights):
    """The shipped config keeping every detection; per batch, whether it equals torchvision."""
    return build_fcos_d2(converted_weights, *TOP_ALL), {}


@pytest.mark.parametrize("key", list(REVERTED))
def test_each_option_is_needed(torchvision_fcos, converted_weights, shipped_config_all, key):
    """With every detection kept (not only the 100 best), the shipped config still equals
    torchvision, and reverting the option alone does not."""
    value, batch = REVERTED[key]
    theirs = torchvision_detections(torchvision_fcos, batch, per_image=ALL)
    assert max(len(d["boxes"]) for d in theirs) < ALL
    shipped, equal_on = shipped_config_all
    if batch not in equal_on:
        equal_on[batch] = equal_detections(theirs, fcos_d2_detections(shipped, batch))
    assert equal_on[batch]
    reverted = fcos_d2_detections(build_fcos_d2(converted_weights, *TOP_ALL, key, value), batch)
    assert not equal_detections(theirs, reverted)


def test_some_detections_are_empty_boxes(torchvision_fcos):
    """torchvision keeps boxes of zero width or height (both distances 0 after its ReLU,
    or clipped to the border): the batch that REMOVE_EMPTY_BOXES is tested on has some."""
    detections = torchvision_detections(torchvision_fcos, "divisible_by_32_only", per_image=ALL)
    boxes = torch.cat([d["boxes"] for d in detections])
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    assert 0 < int(empty.sum()) < len(boxes)


def test_both_pad_the_batch_to_32(torchvision_fcos, fcos_d2_model):
    assert torchvision_fcos.transform.size_divisible == 32
    assert fcos_d2_model.backbone.size_divisibility == 32


def test_torchvision_locations():
    """LOCATION_OFFSET 0 and spacing input size // level size, by hand: a 96 x 160 input,
    P6 of 2 x 3 (64 * 2 > 96, 64 * 3 > 160) is spaced by (96 // 2, 160 // 3) = (48, 53)."""
    from fcos_d2.modeling.pipeline import level_locations
    from fcos_d2.modeling.targets import compute_locations

    p6 = torch.zeros(1, 1, 2, 3)
    fcos = level_locations([p6], [64])[0]
    assert fcos.tolist() == [[32, 32], [96, 32], [160, 32], [32, 96], [96, 96], [160, 96]]
    tv = level_locations([p6], [64], offset=0.0, input_size=(96, 160))[0]
    assert tv.tolist() == [[0, 0], [53, 0], [106, 0], [0, 48], [53, 48], [106, 48]]
    assert compute_locations(1, 2, 8, offset=0.0).tolist() == [[0, 0], [8, 0]]


def test_threshold_on_the_final_score_and_empty_boxes():
    """A hand-made level of 3 locations and 1 class: cls 0.5, 0.3, 0.1 and ctr 0.5, 0.1,
    0.9, so final scores sqrt(cls * ctr) 0.5, 0.173, 0.3. The threshold 0.2 on cls keeps
    the first two; on the final score the first and the third, whose box is empty (left
    and right distances 0)."""
    from fcos_d2.modeling import FCOS
    from fcos_d2.modeling.inference import FCOSPostProcessor
    from fcos_d2.modeling.pipeline import FCOSPredictions

    def logit(p):
        p = torch.tensor(p)
        return torch.log(p / (1 - p))

    predictions = FCOSPredictions(
        locations=[torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])],
        strides=[8],
        logits=[logit([0.5, 0.3, 0.1]).view(1, 3, 1)],
        box_dists=[torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25],
                                  [0.0, 0.5, 0.0, 0.5]]])],
        ctrness=[logit([0.5, 0.1, 0.9]).view(1, 3)],
    )
    size = [(32, 32)]

    def run(**kwargs):
        return FCOSPostProcessor(score_thresh=0.2, **kwargs)(predictions, size)[0]

    default = run()
    torch.testing.assert_close(default.scores, torch.tensor([0.5, 0.03 ** 0.5]))
    assert default.pred_boxes.tensor.tolist() == [[0, 0, 8, 8], [10, 2, 14, 6]]
    final = run(thresh_on_final_score=True)  # the empty box is dropped
    assert final.pred_boxes.tensor.tolist() == [[0, 0, 8, 8]]
    torchvision = run(thresh_on_final_score=True, remove_empty_boxes=False)
    torch.testing.assert_close(torchvision.scores, torch.tensor([0.5, 0.3]))
    assert torchvision.pred_boxes.tensor.tolist() == [[0, 0, 8, 8], [20, 0, 20, 8]]

    inputs = [{"height": 64, "width": 16}]  # output size: x 0.5, y 2
    kept = FCOS.postprocess_to_original([torchvision], inputs, size, remove_empty_boxes=False)
    assert kept[0]["instances"].pred_boxes.tensor.tolist() == [[0, 0, 4, 16], [10, 0, 10, 16]]
    torchvision = run(thresh_on_final_score=True, remove_empty_boxes=False)  # rescaled in place
    dropped = FCOS.postprocess_to_original([torchvision], inputs, size)
    assert dropped[0]["instances"].pred_boxes.tensor.tolist() == [[0, 0, 4, 16]]


def test_fine_tuning_step_on_demo_data(torchvision_fcos, tmp_path):
    """Converted for the demo dataset's classes (all but the class logits kept), the
    torchvision config trains: one SGD iteration on demo images gives finite losses,
    finite gradients and changed weights."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    from fcos_d2.data import DEMO_CLASSES, ensure_demo_dataset
    from fcos_d2.engine import Trainer

    files = ensure_demo_dataset(str(tmp_path / "data"), splits=("train",), sizes={"train": 4})
    files = files["train"]
    name = "torchvision_oracle_demo_train"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name, lambda: load_coco_json(files.json_file, files.image_root, name)
        )
        MetadataCatalog.get(name).set(thing_classes=list(DEMO_CLASSES))
    num_classes = str(len(DEMO_CLASSES))

    src, out = str(tmp_path / "fcos_tv.pth"), str(tmp_path / "fcos_demo.pth")
    torch.save(torchvision_fcos.state_dict(), src)
    main = load_script("tools/convert_weights.py").main
    assert main(["--source", "torchvision", "--input", src, "--output", out,
                 "--config-file", TV_CONFIG, "MODEL.FCOS.NUM_CLASSES", num_classes]) == 0
    opts = ["MODEL.FCOS.NUM_CLASSES", num_classes, "DATASETS.TRAIN", f"('{name}',)",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160"]
    model = build_fcos_d2(out, *opts).train()
    cfg = fcos_d2.setup_cfg(TV_CONFIG, ["MODEL.DEVICE", "cpu", *opts])
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert sum(len(x["instances"]) for x in batch) > 0

    before = model.head.cls_tower.convs[0].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    after = model.head.cls_tower.convs[0].weight
    assert torch.isfinite(after).all() and not torch.equal(after, before)
