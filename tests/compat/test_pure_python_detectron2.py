"""The Detectron2 fcos_d2 runs on: the pure-Python v0.6 of tools/install_detectron2.py (its
install-time fixes, one test each) or a compiled build; the CPU multi-process launch."""
import json
import os
import textwrap

import pytest
import torch
import torch.nn.functional as F

from helpers import load_script
from fcos_d2 import compat
from fcos_d2.engine.trainer import create_ddp_model
from fcos_d2.engine.launch import launch

pure_python_only = pytest.mark.skipif(
    not compat.pure_python_detectron2(),
    reason="tests the pure-Python Detectron2 of tools/install_detectron2.py; the installed "
    "one is a compiled build",
)


def _out_hw(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


# ---------------------------------------------------------------------------------------
# tools/install_detectron2.py: the patch and its applier
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installer():
    return load_script("tools/install_detectron2.py")


_DIFF = textwrap.dedent(
    """\
    A description, ignored.
    --- a/pkg/mod.py
    +++ b/pkg/mod.py
    @@ -1,3 +1,3 @@
     one
    -two
    +TWO
     three
    @@ -6,2 +6,3 @@
     six
    +six and a half
     seven
    """
)


def test_unified_diff_applier_applies_hunks_in_order(installer, tmp_path):
    (tmp_path / "pkg").mkdir()
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    (tmp_path / "pkg" / "mod.py").write_text("\n".join(words) + "\n")
    installer.apply_unified_diff(_DIFF, str(tmp_path))
    assert (tmp_path / "pkg" / "mod.py").read_text().splitlines() == [
        "one", "TWO", "three", "four", "five", "six", "six and a half", "seven",
    ]  # fmt: skip


def test_unified_diff_applier_refuses_a_mismatch(installer, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("one\nzwei\nthree\nfour\nfive\nsix\nseven\n")
    with pytest.raises(SystemExit, match=r"pkg/mod.py, hunk at line 1 does not match"):
        installer.apply_unified_diff(_DIFF, str(tmp_path))


def test_patch_lists_the_reviewed_files(installer):
    with open(installer.PATCH_FILE) as f:
        files = [path for path, _ in installer.parse_unified_diff(f.read())]
    assert files == [
        "detectron2/data/build.py",
        "detectron2/data/datasets/pascal_voc.py",
        "detectron2/data/transforms/transform.py",
        "detectron2/evaluation/coco_evaluation.py",
        "detectron2/evaluation/pascal_voc_evaluation.py",
        "detectron2/evaluation/sem_seg_evaluation.py",
        "detectron2/layers/deform_conv.py",
        "detectron2/layers/nms.py",
        "detectron2/structures/masks.py",
        "detectron2/utils/comm.py",
        "detectron2/utils/video_visualizer.py",
        "detectron2/utils/visualizer.py",
        "setup.py",
    ]


def _fake_detectron2(root, c_module=None, dist=False):
    """A stand-in ``detectron2`` package under ``root`` (nothing in it is executed but
    its empty ``__init__``); ``c_module``: the file name and text of its ``_C``."""
    pkg = root / "detectron2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if c_module is not None:
        name, text = c_module
        (pkg / name).write_text(text)
    if dist:
        info = root / "pb1_detectron2-0.6.dist-info"
        info.mkdir()
        metadata = "Metadata-Version: 2.1\nName: pb1-detectron2\nVersion: 0.6\n"
        (info / "METADATA").write_text(metadata)
    return str(root)


@pytest.mark.parametrize(
    "c_module,dist,state",
    [
        (("_C.cpython-311-x86_64-linux-gnu.so", ""), False, "compiled"),
        (("_C.py", 'FCOS_D2_PATCH = "{current}"\n'), True, "current"),
        (("_C.py", 'FCOS_D2_PATCH = "detectron2-0.6-pure-python/0"\n'), True, "outdated"),
        (None, True, "outdated"),  # an install of this script before the patch existed
        (None, False, "foreign"),  # somebody else's Detectron2 without _C: not replaced
    ],
    ids=["compiled", "current", "older-patch", "unpatched", "foreign"],
)
def test_installer_tells_what_is_installed(installer, tmp_path, monkeypatch, c_module, dist, state):
    with open(installer.C_MODULE) as f:
        current = installer.patch_revision(f.read())
    if c_module is not None:
        c_module = (c_module[0], c_module[1].format(current=current))
    monkeypatch.setenv("PYTHONPATH", _fake_detectron2(tmp_path, c_module, dist))
    assert installer.installed_state()[0] == state


def test_import_fcos_d2_names_the_fix_for_a_detectron2_without_c(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=_fake_detectron2(tmp_path, None, True))
    res = subprocess.run([sys.executable, "-c", "import fcos_d2"], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=300)  # fmt: skip
    assert res.returncode == 1
    assert "has no detectron2._C module" in res.stderr
    assert "tools/install_detectron2.py --force" in res.stderr


@pure_python_only
def test_installed_detectron2_has_the_current_patch(installer):
    state, info = installer.installed_state()
    assert state == "current", info


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


# ---------------------------------------------------------------------------------------
# launch and DDP on CPU
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
    # fcos_d2's DDP wrapper, as its Trainer uses it, on a CPU model
    model = create_ddp_model(torch.nn.Linear(2, 1, bias=False), broadcast_buffers=False)
    result["wrapped"] = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    with torch.no_grad():
        getattr(model, "module", model).weight.zero_()
    model(torch.tensor([[float(rank + 1), 0.0]])).sum().backward()
    result["grad"] = getattr(model, "module", model).weight.grad.tolist()  # mean over ranks
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
        assert res["wrapped"] is True
        assert res["grad"] == [[pytest.approx(1.5), 0.0]]  # mean of 1 and 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU launch path only used without CUDA")
def test_launch_single_cpu_process_runs_in_process(tmp_path):
    res = launch(_dist_main, 1, args=(str(tmp_path), 1.0))
    assert res["world_size"] == 1 and res["rank"] == 0 and res["all_reduce"] == 1.0
    assert res["wrapped"] is False and res["grad"] == [[1.0, 0.0]]
