"""fcos_d2.compat: Detectron2 v0.6 without compiled ops, on current torch/numpy/Pillow."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fcos_d2  # noqa: F401  (applies the compatibility layer first)
from fcos_d2 import compat
from fcos_d2.engine.launch import launch

from detectron2.layers import DeformConv, ModulatedDeformConv  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_stub = pytest.mark.skipif(
    compat.compiled_ops_available(), reason="a compiled detectron2._C is installed"
)


def _out_hw(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,deformable_groups",
    [(1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1, 2, 2, 2, 1), (1, 1, 1, 1, 2)],
)
def test_deform_conv_zero_offset_is_conv(stride, padding, dilation, groups, deformable_groups):
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


def test_deform_conv_integer_offset_samples_shifted_input():
    torch.manual_seed(1)
    m = DeformConv(3, 5, 3)  # no padding
    x = torch.randn(1, 3, 8, 10)
    offset = torch.zeros(1, 18, 6, 8)
    offset[:, 1::2] = 1.0  # every kernel point moved one pixel to the right (x displacement)
    y = m(x, offset)
    ref = F.conv2d(x[..., 1:], m.weight)  # the same as convolving the shifted image
    torch.testing.assert_close(y[..., :-1], ref, rtol=1e-4, atol=1e-4)


def test_modulated_deform_conv_zero_offset_unit_mask_is_conv():
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


def test_deform_conv_checks_group_shapes():
    m = DeformConv(4, 6, 3, padding=1, deformable_groups=2)
    with pytest.raises(ValueError, match="offset"):
        m(torch.randn(1, 4, 5, 5), torch.zeros(1, 18, 5, 5))  # needs 36 offset channels


@needs_stub
def test_c_stub_deform_entry_points_follow_c_conventions():
    from detectron2 import _C

    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 7)
    w = torch.randn(5, 4, 3, 3)
    offset = torch.zeros(2, 18, 6, 7)
    out = x.new_empty(2, 5, 6, 7)
    # (input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW, padH, dilW, dilH,
    #  group, deformable_group, im2col_step)
    _C.deform_conv_forward(x, w, offset, out, x.new_empty(0), x.new_empty(0),
                           3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 64)  # fmt: skip
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)

    go = torch.randn_like(out)
    gw = torch.zeros_like(w)
    _C.deform_conv_backward_filter(x, offset, go, gw, x.new_empty(0), x.new_empty(0),
                                   3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1.0, 64)  # fmt: skip
    wr = w.clone().requires_grad_(True)
    (ref_gw,) = torch.autograd.grad(F.conv2d(x, wr, padding=1), wr, go)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-4)


@needs_stub
def test_rotated_ops_raise_a_clear_error():
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
        with pytest.raises(RuntimeError, match="compiled ops .* absent.*Rotated boxes need a compiled"):
            call()
    with pytest.raises(compat.CompiledOpsMissingError):
        calls[0]()


@needs_stub
def test_collect_env_works_with_the_stub():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "pure-Python Detectron2" in info


def test_coco_evaluation_with_default_fast_impl():
    """COCOEvaluator's default path (use_fast_impl=True) gives the official numbers."""
    from pycocotools.coco import COCO

    from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 30, 20, 24], "area": 480,
             "iscrowd": 0},
        ],
    }
    gt.createIndex()
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [30, 30, 20, 24], "score": 0.8},
    ]
    coco_eval = _evaluate_predictions_on_coco(gt, dets, "bbox")
    assert coco_eval.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]


def test_class_histogram_uses_numpy_aliases():
    # Detectron2 v0.6 uses np.int here (removed in numpy 1.24)
    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0, "iscrowd": 0}, {"category_id": 1, "iscrowd": 0}]}]
    print_instances_class_histogram(dicts, ["a", "b"])


def test_resize_transform_default_interp():
    # Detectron2 v0.6 has interp=Image.LINEAR as a default argument (removed in Pillow 10)
    import numpy as np
    from detectron2.data import transforms as T

    img = np.zeros((20, 30, 3), dtype=np.uint8)
    out = T.ExtentTransform((0, 0, 30, 20), (10, 15)).apply_image(img)
    assert out.shape == (10, 15, 3)


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
    for r in records:
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([r["annotations"][0]["bbox"]]))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([0])
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)


_PROBE = textwrap.dedent(
    """
    import importlib.machinery, importlib.util, json, sys, types, warnings

    # import fcos_d2.compat without running fcos_d2/__init__.py (which applies it itself)
    pkg = types.ModuleType("fcos_d2")
    pkg.__path__ = [sys.argv[1]]
    sys.modules["fcos_d2"] = pkg
    if sys.argv[2] == "compiled":  # pretend a compiled detectron2._C is installed
        real_find_spec = importlib.util.find_spec

        def find_spec(name, package=None):
            if name == "detectron2._C":
                return importlib.machinery.ModuleSpec(name, None, origin="/fake/_C.so")
            return real_find_spec(name, package)

        importlib.util.find_spec = find_spec
    import numpy as np
    from PIL import Image
    import fcos_d2.compat as compat

    first = compat.apply()
    second = compat.apply()
    from fcos_d2.compat import _import_hooks
    print(json.dumps({
        "first": first,
        "second": second,
        "stub": "detectron2._C" in sys.modules,
        "np_int": "int" in vars(np),
        "pil_linear": hasattr(Image, "LINEAR"),
        "hooks": _import_hooks.installed_finder() is not None,
        "patches": compat.applied_patches(),
    }))
    """
)


def _probe(mode):
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, os.path.join(REPO, "fcos_d2"), mode],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_apply_is_a_noop_with_compiled_detectron2():
    import PIL

    r = _probe("compiled")
    assert r["first"] is False and r["second"] is False
    assert r["patches"] == []
    assert not r["stub"] and not r["hooks"] and not r["np_int"]
    # Pillow untouched: LINEAR is there only if this Pillow (< 10) has it itself
    assert r["pil_linear"] == (int(PIL.__version__.split(".")[0]) < 10)


@needs_stub
def test_apply_is_idempotent_on_pure_python_detectron2():
    r = _probe("pure")
    assert r["first"] is True and r["second"] is False
    assert r["stub"] and r["hooks"] and r["pil_linear"]
    assert "detectron2._C stub" in r["patches"]
    assert len(r["patches"]) == len(set(r["patches"]))


# ---------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------


def _dist_main(out_dir, scale):
    """Runs in every launched process (must be a module-level function to be picklable)."""
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = comm.get_rank()
    t = torch.tensor([float(rank + 1) * scale])
    if comm.get_world_size() > 1:
        dist.all_reduce(t)  # sum over ranks
    result = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "all_reduce": t.item(),
        "all_gather": comm.all_gather(rank),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "is_main": comm.is_main_process(),
    }
    if comm.get_world_size() > 1:
        # Detectron2's DDP wrapper, as DefaultTrainer uses it, on a CPU model
        from detectron2.engine.defaults import create_ddp_model

        model = create_ddp_model(torch.nn.Linear(2, 1, bias=False), broadcast_buffers=False)
        model(torch.tensor([[float(rank + 1), 0.0]])).sum().backward()
        result["ddp_grad"] = model.module.weight.grad.tolist()  # averaged over ranks
    comm.synchronize()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    return result


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU launch path only used without CUDA")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_launch_two_cpu_processes_with_gloo(tmp_path):
    assert launch(_dist_main, 2, args=(str(tmp_path), 10.0)) is None
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["world_size"] == 2
        assert res["local_rank"] == r
        assert res["local_size"] == 2
        assert res["all_reduce"] == pytest.approx(30.0)  # 10 * (1 + 2)
        assert res["all_gather"] == [0, 1]
        assert res["backend"] == "gloo"
        assert res["is_main"] == (r == 0)
        assert res["ddp_grad"] == [[pytest.approx(1.5), 0.0]]  # mean of 1 and 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU launch path only used without CUDA")
def test_launch_single_cpu_process_runs_in_process(tmp_path):
    res = launch(_dist_main, 1, args=(str(tmp_path), 1.0))
    assert res["world_size"] == 1 and res["rank"] == 0 and res["all_reduce"] == 1.0
