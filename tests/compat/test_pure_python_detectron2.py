"""The Detectron2 fcos_d2 runs on (fcos_d2.compat): the pure-Python v0.6 of
tools/install_detectron2.py (its install-time fixes, one test each) or a compiled build (the
installer itself: tests/tools/test_install_detectron2.py)."""
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import pure_python_only


def _out_hw(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


# ---------------------------------------------------------------------------------------
# the fixes (pure-Python Detectron2); where a compiled Detectron2 has the feature, the same
# test runs there too
# ---------------------------------------------------------------------------------------


@pure_python_only  # the compiled DeformConv has no CPU kernel
@pytest.mark.parametrize(
    "stride,padding,dilation,groups,deformable_groups",
    [(1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1, 2, 2, 2, 1), (1, 1, 1, 1, 2)],
)
def test_deform_conv_zero_offset_is_conv(stride, padding, dilation, groups, deformable_groups):
    from detectron2.layers import DeformConv

    torch.manual_seed(0)
    m = DeformConv(
        4, 6, 3, stride=stride, padding=padding, dilation=dilation,
        groups=groups, deformable_groups=deformable_groups,
    )  # fmt: skip
    x = torch.randn(2, 4, 11, 9, requires_grad=True)
    ho = _out_hw(11, 3, stride, padding, dilation)
    wo = _out_hw(9, 3, stride, padding, dilation)
    offset = torch.zeros(2, 2 * deformable_groups * 9, ho, wo, requires_grad=True)
    y = m(x, offset)
    ref = F.conv2d(x, m.weight, None, stride, padding, dilation, groups)
    assert y.shape == ref.shape == (2, 6, ho, wo)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)

    # backward too (the compiled v0.6 op has no CPU backward)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, m.weight), g)
    rx, rw = torch.autograd.grad(ref, (x, m.weight), g)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)


@pure_python_only
def test_deform_conv_integer_offset_samples_shifted_input():
    from detectron2.layers import DeformConv

    torch.manual_seed(1)
    m = DeformConv(3, 5, 3)  # no padding
    x = torch.randn(1, 3, 8, 10)
    offset = torch.zeros(1, 18, 6, 8)
    offset[:, 1::2] = 1.0  # every kernel point moved one pixel to the right (x displacement)
    y = m(x, offset)
    ref = F.conv2d(x[..., 1:], m.weight)  # the same as convolving the shifted image
    torch.testing.assert_close(y[..., :-1], ref, rtol=1e-4, atol=1e-4)


@pure_python_only
def test_modulated_deform_conv_zero_offset_unit_mask_is_conv():
    from detectron2.layers import ModulatedDeformConv

    torch.manual_seed(0)
    m = ModulatedDeformConv(4, 6, 3, stride=1, padding=1, bias=True)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 4, 7, 8, requires_grad=True)
    offset = torch.zeros(2, 18, 7, 8)
    mask = torch.ones(2, 9, 7, 8)
    y = m(x, offset, mask)
    ref = F.conv2d(x, m.weight, m.bias, 1, 1)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)

    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, m.weight, m.bias), g)
    exp = torch.autograd.grad(ref, (x, m.weight, m.bias), g)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    # the mask scales every sampled value
    y_half = m(x, offset, mask * 0.5)
    expected = 0.5 * F.conv2d(x, m.weight, None, 1, 1) + m.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y_half, expected, rtol=1e-4, atol=1e-4)


@pure_python_only
def test_deform_conv_checks_group_shapes():
    from detectron2.layers import DeformConv

    m = DeformConv(4, 6, 3, padding=1, deformable_groups=2)
    with pytest.raises(ValueError, match="offset has 18 channels, expected .* = 36"):
        m(torch.randn(1, 4, 5, 5), torch.zeros(1, 18, 5, 5))


@pure_python_only
def test_rotated_ops_raise_a_clear_error():
    from detectron2 import _C
    from detectron2.layers import ROIAlignRotated, batched_nms_rotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated as structures_iou

    boxes = torch.tensor([[10.0, 10.0, 4.0, 6.0, 30.0], [11.0, 10.0, 4.0, 6.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    calls = [
        lambda: pairwise_iou_rotated(boxes, boxes),
        lambda: structures_iou(RotatedBoxes(boxes), RotatedBoxes(boxes)),
        lambda: nms_rotated(boxes, scores, 0.5),
        lambda: batched_nms_rotated(boxes, scores, torch.tensor([0, 1]), 0.5),
        lambda: ROIAlignRotated((2, 2), 1.0, 0)(
            torch.randn(1, 1, 8, 8), torch.tensor([[0.0, 4.0, 4.0, 2.0, 2.0, 0.0]])
        ),
    ]
    for call in calls:
        message = "compiled ops .* absent.*Rotated boxes need a compiled"
        with pytest.raises(_C.CompiledOpsMissingError, match=message):
            call()


@pure_python_only
def test_collect_env_works_with_the_pure_python_c_module():
    from detectron2.utils.collect_env import collect_env_info

    assert "pure-Python Detectron2 installed by fcos_d2" in collect_env_info()


def test_no_removed_numpy_alias_or_pillow_constant_in_detectron2_sources():
    """Every use of np.bool/np.int/np.float/np.str/... (gone in numpy 1.24) and of
    Image.LINEAR (gone in Pillow 10) is patched, not only those the tests below run."""
    import re

    import detectron2

    pattern = re.compile(
        r"\bnp\.(bool|int|float|complex|object|str|long|unicode)\b(?![_0-9(])|\bImage\.LINEAR\b"
    )
    root = os.path.dirname(detectron2.__file__)
    hits = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        if pattern.search(line):
                            hits.append(f"{os.path.relpath(path, root)}:{number}: {line.strip()}")
    assert hits == []


def test_class_histogram_counts_classes():
    # Detectron2 v0.6 used np.int here (removed in numpy 1.24)
    from detectron2.data.build import print_instances_class_histogram
    from detectron2.utils.logger import setup_logger

    dicts = [{"annotations": [{"category_id": c, "iscrowd": 0} for c in (0, 1, 1)]}]
    records = []

    class Keep(__import__("logging").Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = setup_logger(name="detectron2.data.build")
    handler = Keep()
    logger.addHandler(handler)
    try:
        print_instances_class_histogram(dicts, ["a", "b"])
    finally:
        logger.removeHandler(handler)
    table = "\n".join(records)
    assert "|     a      | 1 " in table and "|     b      | 2 " in table


def test_extent_transform_default_interp_is_bilinear():
    # Detectron2 v0.6 had interp=Image.LINEAR as a default argument (removed in Pillow 10)
    import numpy as np
    from detectron2.data import transforms as T

    img = np.tile(np.array([0, 100, 200, 250], dtype=np.uint8), (4, 1))[:, :, None]  # (4, 4, 1)
    out = T.ExtentTransform((0, 0, 4, 4), (4, 2)).apply_image(img)
    assert out.shape == (4, 2, 1)
    # output pixel centres fall at x = 1.0 and 3.0 of the input, halfway between input
    # pixel centres: bilinear gives (0 + 100) / 2 and (200 + 250) / 2 (nearest: 100, 250)
    assert out[:, :, 0].tolist() == [[50, 225]] * 4


def test_coco_evaluator_with_default_args(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    name = "fcos_d2_test_compat_tiny"
    records = [
        {
            "file_name": f"img{i}.jpg", "image_id": i, "height": 64, "width": 64,
            "annotations": [{"bbox": [4.0 + i, 4.0, 30.0, 40.0], "bbox_mode": BoxMode.XYXY_ABS,
                             "category_id": 0, "iscrowd": 0}],
        }
        for i in range(2)
    ]  # fmt: skip
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=["thing"])
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path))
    evaluator.reset()
    for r, box in zip(records, ([4.0, 4.0, 30.0, 40.0], [40.0, 40.0, 60.0, 60.0])):
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([box]))  # image 0: exact; image 1: no overlap
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([0])
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    # one of two objects found, first in the ranking: precision 1 up to recall 0.5 and
    # 101-point interpolation -> 51/101 at every IoU threshold
    assert results["bbox"]["AP"] == pytest.approx(100 * 51 / 101)
