"""Detectron2's own tools/deploy/export_model.py on fcos_d2 models, through
tools/detectron2_export_model.py: --export-method tracing and scripting for the one-stage
FCOS and for Faster R-CNN with FCOS proposals, detections equal to eager.

The tool comes from a Detectron2 source tree: $FCOS_D2_DETECTRON2_SOURCE, else
/tmp/d2src/detectron2, else the parts it needs unpacked from the source archive beside the
checkout (../shared/third_party/detectron2-*.tar.gz, the Makefile's D2_SOURCE); without
any of them the tests skip.
The tool needs a ``detectron2.export`` that imports without caffe2: when the installed
Detectron2's does not (v0.6), the tool runs in a subprocess on that source tree's Python
package, with fcos_d2's pure-Python ``_C.py`` stand-in copied in.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from helpers import REPO, spread_model, tiny_cfg

SOURCE = os.environ.get("FCOS_D2_DETECTRON2_SOURCE", "/tmp/d2src/detectron2")
ARCHIVES = os.path.join(os.path.dirname(REPO), "shared", "third_party", "detectron2-*.tar.gz")
TOOL = os.path.join("tools", "deploy", "export_model.py")  # in the source tree

pytestmark = pytest.mark.usefixtures("one_thread")


def installed_export_imports() -> bool:
    code = "import detectron2.export as e; e.STABLE_ONNX_OPSET_VERSION, e.scripting_with_instances"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def detectron2_source(tmp_path_factory) -> str:
    """A Detectron2 source tree with tools/deploy/export_model.py (see the module's doc)."""
    if os.path.isfile(os.path.join(SOURCE, TOOL)):
        return SOURCE
    archives = sorted(glob.glob(ARCHIVES))
    if not archives:
        pytest.skip(f"no Detectron2 source with {TOOL} at {SOURCE} and no {ARCHIVES} "
                    "(set FCOS_D2_DETECTRON2_SOURCE)")  # fmt: skip
    root = tmp_path_factory.mktemp("detectron2_archive")
    wanted = ("detectron2/detectron2/", f"detectron2/{TOOL}", "detectron2/projects/PointRend/")
    with tarfile.open(archives[-1]) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(wanted)]
        archive.extractall(root, members=members, filter="data")
    return str(root / "detectron2")


@pytest.fixture(scope="module")
def detectron2_path(detectron2_source, tmp_path_factory):
    """A PYTHONPATH entry for a Detectron2 the tool can import ('' for the installed one)."""
    if installed_export_imports():
        return ""
    root = tmp_path_factory.mktemp("detectron2_source")
    shutil.copytree(os.path.join(detectron2_source, "detectron2"), root / "detectron2")
    shutil.copy(os.path.join(REPO, "tools", "detectron2_pure_python", "_C.py"),
                root / "detectron2" / "_C.py")  # fmt: skip
    shutil.copytree(os.path.join(detectron2_source, "projects", "PointRend"),
                    root / "projects" / "PointRend")  # the tool imports point_rend
    return str(root)


def lively_weights(two_stage, path):
    cfg = tiny_cfg(two_stage=two_stage)
    if two_stage:
        torch.manual_seed(0)
        model = build_model(cfg).eval()
    else:
        model = spread_model(cfg, score_thresh=None)
    torch.save({"model": model.state_dict()}, path)
    return cfg, model


def run_tool(detectron2_source, detectron2_path, tmp_path, two_stage, method):
    cfg, model = lively_weights(two_stage, tmp_path / "weights.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    import cv2

    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "sample.png"), image)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (detectron2_path, REPO) if p))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "detectron2_export_model.py"),
         "--tool", os.path.join(detectron2_source, TOOL), "--export-method", method,
         "--format", "torchscript",
         "--config-file", str(tmp_path / "cfg.yaml"),
         "--sample-image", str(tmp_path / "sample.png"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env,
    )  # fmt: skip
    return proc, model


def assert_equal_to_eager(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = re.search(r"exported vs eager on the sample: (.*)", proc.stdout).group(1)
    count, eager = (int(v) for v in re.search(r"(\d+) detections \(eager: (\d+)\)", line).groups())
    assert count == eager >= 20, line
    assert "classes equal" in line, line
    differences = re.search(r"\|box\| (\S+) px, max \|score\| (\S+)", line).groups()
    box, score = (float(v) for v in differences)
    assert box <= 0.01 and score <= 1e-4, line


@pytest.mark.slow
@pytest.mark.parametrize("two_stage", [False, True], ids=["fcos", "faster_rcnn_fcos_rpn"])
def test_tracing_equals_eager(detectron2_source, detectron2_path, tmp_path, two_stage):
    proc, model = run_tool(detectron2_source, detectron2_path, tmp_path, two_stage, "tracing")
    assert_equal_to_eager(proc)
    assert (tmp_path / "out" / "model.ts").is_file()
    # another image size than the traced one, in this process: the tool's traced graph
    # returns the Instances fields in its logged order (pred_boxes, pred_classes, scores)
    assert "keys=['pred_boxes', 'pred_classes', 'scores']" in proc.stderr + proc.stdout
    traced = torch.jit.load(str(tmp_path / "out" / "model.ts"))
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 90, 150))).float()
    with torch.no_grad():
        boxes, classes, scores, _ = traced(image)  # and the image size
        if two_stage:
            expected = model.inference([{"image": image}], do_postprocess=False)[0]
        else:
            expected = model([{"image": image}])[0]["instances"]
    assert len(scores) == len(expected) >= 20
    assert torch.equal(classes, expected.pred_classes)
    torch.testing.assert_close(scores, expected.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, expected.pred_boxes.tensor, atol=0.01, rtol=0)


def test_head_scripts_and_equals_eager():
    """The FCOS head (ModuleLists iterated, not indexed by a variable) scripts."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    features = [torch.rand(2, 64, s, s + 3) for s in (16, 8, 4, 2, 1)]
    scripted = torch.jit.script(model.head)
    with torch.no_grad():
        for got, expected in zip(scripted(features), model.head(features)):
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_losses_module_scripts_for_inference():
    """A scripted model never computes losses: FCOSLosses.forward is left out of scripting
    (it calls comm.get_world_size), so the module scripts as a submodule."""
    model = build_model(tiny_cfg()).eval()
    torch.jit.script(model.losses)


@pytest.mark.slow
@pytest.mark.parametrize("two_stage", [False, True], ids=["fcos", "faster_rcnn_fcos_rpn"])
def test_scripting_equals_eager(detectron2_source, detectron2_path, tmp_path, two_stage):
    proc, model = run_tool(detectron2_source, detectron2_path, tmp_path, two_stage, "scripting")
    assert_equal_to_eager(proc)
    # another image size than the sample's, in this process: the scripted model takes
    # Detectron2's inputs and returns per image the Instances' fields
    scripted = torch.jit.load(str(tmp_path / "out" / "model.ts"))
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 90, 150))).float()
    with torch.no_grad():
        fields = scripted(({"image": image},))[0]
        if two_stage:
            expected = model.inference([{"image": image}], do_postprocess=False)[0]
        else:
            expected = model([{"image": image}])[0]["instances"]
    assert sorted(fields) == ["pred_boxes", "pred_classes", "scores"]
    assert len(fields["scores"]) == len(expected) >= 20
    assert torch.equal(fields["pred_classes"], expected.pred_classes)
    torch.testing.assert_close(fields["scores"], expected.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        fields["pred_boxes"], expected.pred_boxes.tensor, atol=0.01, rtol=0
    )
