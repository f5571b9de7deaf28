"""The end-to-end graph (uint8 image -> boxes, scores, classes): its resize equals
Detectron2's (Pillow's) exactly, its detections equal the eager model's in ONNX Runtime
and TorchScript, and the exported files run without torch (ONNX) or without fcos_d2 and
Detectron2 (TorchScript)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fcos_d2  # noqa: F401  (registers the model and the demo datasets)
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from helpers import (
    BOX_ATOL,
    REPO,
    SCORE_ATOL,
    assert_same_detections,
    eager_detections,
    end_to_end_runner,
    export_demo_model_with_tool,
    load_script,
    random_image,
    spread_model,
    tiny_cfg,
)
from fcos_d2.data.synthetic import DEMO_CLASSES
from fcos_d2.export import FCOSEndToEnd, export_end_to_end, resize_bilinear, resized_size

pytestmark = pytest.mark.usefixtures("one_thread")

# (min size, max size) of tiny_cfg's test-time resize
RESIZE = (96, 160)


def crafted_model(regime: str):
    """A tiny FCOS whose detections are many: "dense" -- every score passes the threshold
    (eager inference takes the dense top-k on P3, the sparse path elsewhere); "sparse" --
    some scores pass (eager gathers them, the traced graph takes a dense top-k)."""
    dense = regime == "dense"
    return spread_model(cls_bias=0.0 if dense else -1.0, score_thresh=None if dense else 0.2)


@pytest.fixture(scope="module", params=["dense", "sparse"])
def model(request):
    return crafted_model(request.param)


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "size, short, longest",
    [((480, 640), 800, 1333), ((640, 480), 800, 1333), ((333, 333), 800, 1333),
     ((1080, 1920), 800, 1333), ((3000, 4000), 800, 1333), ((427, 640), 800, 1333),
     ((100, 150), 96, 160), ((70, 90), 96, 160), ((1, 999), 256, 256)],
)  # fmt: skip
def test_resized_size_is_detectron2s(size, short, longest):
    expected = T.ResizeShortestEdge.get_output_shape(*size, short, longest)
    new_h, new_w = resized_size(torch.tensor([size[0]]), torch.tensor([size[1]]), short, longest)
    assert (int(new_h), int(new_w)) == expected


def test_resized_size_is_detectron2s_on_random_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        short = int(rng.integers(1, 1500))
        longest = int(rng.integers(short, 3000))
        new_h, new_w = resized_size(torch.tensor([h]), torch.tensor([w]), short, longest)
        expected = T.ResizeShortestEdge.get_output_shape(h, w, short, longest)
        assert (int(new_h), int(new_w)) == expected


# (input size, output size): up, down (by up to 3.3x), one axis, unchanged, odd ratios
RESIZES = [((37, 53), (80, 107)), ((120, 90), (64, 48)), ((50, 200), (15, 60)),
           ((64, 64), (64, 64)), ((33, 45), (10, 7)), ((29, 41), (41, 29)), ((7, 300), (90, 91)),
           ((60, 80), (60, 50))]  # fmt: skip


@pytest.mark.parametrize("size, new_size", RESIZES)
def test_resize_equals_pillow(size, new_size):
    """Detectron2's ResizeTransform resizes uint8 images with Pillow's bilinear filter;
    the graph's resize gives the same pixels, exactly."""
    image = random_image(*size, seed=sum(size))
    expected = T.ResizeTransform(*size, *new_size, Image.BILINEAR).apply_image(image)
    new_h, new_w = torch.tensor([new_size[0]]), torch.tensor([new_size[1]])
    out = resize_bilinear(torch.from_numpy(image), new_h, new_w)
    assert out.shape == expected.shape
    assert torch.equal(out, torch.from_numpy(expected).double())


def test_resize_equals_pillow_on_test_time_sizes():
    """Random images and ResizeShortestEdge settings (aspect ratios up to 1.6 tall)."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        w = int(rng.integers(2, 200))
        h = int(rng.integers(2, int(1.6 * w) + 3))
        short = int(rng.integers(2, 200))
        resize = T.ResizeShortestEdge(short, int(rng.integers(short, 300)))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = resize.get_transform(image).apply_image(image)
        new_h, new_w = expected.shape[:2]
        out = resize_bilinear(torch.from_numpy(image), torch.tensor([new_h]), torch.tensor([new_w]))
        assert torch.equal(out, torch.from_numpy(expected).double()), (h, w, new_h, new_w)


class _Resize(torch.nn.Module):
    def forward(self, image):
        size = torch.onnx.operators.shape_as_tensor(image)
        new_h, new_w = resized_size(size[0:1], size[1:2], 64, 100)
        return resize_bilinear(image, new_h, new_w).to(torch.uint8)


def test_resize_in_onnx_runtime_equals_pillow(tmp_path):
    """The float64 size and filter arithmetic survives ONNX export (0-dim tensors would be
    cast to float32 by the exporter, and sizes and pixels would then differ)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "resize.onnx")
    torch.onnx.export(_Resize(), (torch.from_numpy(random_image(40, 50, 0)),), path,
                      dynamo=False, input_names=["image"], opset_version=17,
                      dynamic_axes={"image": {0: "height", 1: "width"}})  # fmt: skip
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size in [(199, 300), (41, 77), (64, 64), (30, 1000), (100, 64)]:
        image = random_image(*size, seed=size[0])
        new_size = T.ResizeShortestEdge.get_output_shape(*size, 64, 100)
        expected = T.ResizeTransform(*size, *new_size, Image.BILINEAR).apply_image(image)
        np.testing.assert_array_equal(session.run(None, {"image": image})[0], expected)


# --------------------------------------------------------------------------- detections


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_no_resize_graph_gives_eager_detections(model, fmt, tmp_path):
    """Input: the already-resized image the eager model receives; other sizes than the
    traced one."""
    run = end_to_end_runner(model, fmt, None, tmp_path / f"model.{fmt}")
    for seed, size in enumerate([(100, 150), (70, 90), (160, 96)]):
        image = random_image(*size, seed=seed + 1)
        expected = eager_detections(model, image, None)
        assert_same_detections(run(image), expected, min_count=50, check_dtypes=True)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_resized_graph_gives_eager_detections(model, fmt, tmp_path):
    """Images larger and smaller than the test size: in-graph resize and rescaling to the
    original pixels give what Detectron2's resize + eager model + rescaling give."""
    run = end_to_end_runner(model, fmt, RESIZE, tmp_path / f"model.{fmt}")
    for seed, size in enumerate([(200, 300), (61, 77), (301, 157), (96, 128)]):
        image = random_image(*size, seed=seed + 10)
        outputs = run(image)
        expected = eager_detections(model, image, RESIZE)
        assert_same_detections(outputs, expected, min_count=50, check_dtypes=True)
        boxes = np.asarray(outputs[0])
        assert boxes[:, 2].max() <= size[1] and boxes[:, 3].max() <= size[0]


def test_scores_sorted_and_bounded(tmp_path):
    run = end_to_end_runner(crafted_model("dense"), "onnx", RESIZE, tmp_path / "model.onnx")
    boxes, scores, classes = run(random_image(120, 100, seed=3))
    assert len(scores) == 100  # POST_NMS_TOPK_TEST
    assert np.all(np.diff(scores) <= 0) and classes.min() >= 0 and classes.max() < 3


@pytest.mark.parametrize(
    "option, value",
    [("THRESH_ON_FINAL_SCORE", True), ("REMOVE_EMPTY_BOXES", False), ("LOCATION_OFFSET", 0.0)],
)
def test_torchvision_options_are_exported(option, value, tmp_path):
    """The post-processing and location options of the torchvision config reach the graph."""
    cfg = tiny_cfg()
    setattr(cfg.MODEL.FCOS, option, value)
    model = spread_model(cfg, score_thresh=None)
    run = end_to_end_runner(model, "onnx", RESIZE, tmp_path / "model.onnx")
    for seed, size in enumerate([(200, 300), (61, 77)]):
        image = random_image(*size, seed=seed + 40)
        expected = eager_detections(model, image, RESIZE)
        assert_same_detections(run(image), expected, min_count=20, check_dtypes=True)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_spacing_from_input_follows_the_input_size(fmt, tmp_path):
    """torchvision's location spacing (padded size // level size) is computed in the graph:
    a graph traced on one size gives the eager detections on sizes whose P6/P7 spacing
    differs from the stride and from the traced sample's."""
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.SPACING_FROM_INPUT = True
    cfg.MODEL.FCOS.LOCATION_OFFSET = 0.0
    model = spread_model(cfg, score_thresh=None)
    run = end_to_end_runner(model, fmt, None, tmp_path / f"model.{fmt}")
    # padded 160x224: P6 3x4 -> spacing (53, 56); 96x96: P7 1x1 -> spacing (96, 96)
    for seed, size in enumerate([(150, 210), (96, 96)]):
        image = random_image(*size, seed=seed + 60)
        expected = eager_detections(model, image, None)
        assert_same_detections(run(image), expected, min_count=20, check_dtypes=True)


def test_graph_calls_the_models_detection_path(monkeypatch, tmp_path):
    """The graph's post-processing is the model's FCOSPostProcessor.detect_image (the one
    detection path), not a copy: tracing records the calls it makes."""
    from fcos_d2.modeling.inference import FCOSPostProcessor

    calls = []
    original = FCOSPostProcessor.detect_image

    def counting(self, predictions, n, image_size):
        calls.append(torch.jit.is_tracing())
        return original(self, predictions, n, image_size)

    monkeypatch.setattr(FCOSPostProcessor, "detect_image", counting)
    sample = torch.from_numpy(random_image(96, 128, seed=0))
    model = crafted_model("sparse")
    export_end_to_end(model, sample, str(tmp_path / "m.ts"), "torchscript", RESIZE)
    assert calls == [True]


def test_two_stage_models_are_rejected():
    model = build_model(tiny_cfg(two_stage=True)).eval()
    with pytest.raises(TypeError, match="FCOS-RPN two-stage"):
        FCOSEndToEnd(model, RESIZE)


def test_bad_sample_is_rejected(tmp_path):
    model = crafted_model("sparse")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        export_end_to_end(model, torch.zeros(3, 96, 128), str(tmp_path / "m.onnx"), "onnx", None)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_end_to_end(model, torch.zeros(96, 128, 3, dtype=torch.uint8),
                          str(tmp_path / "m"), "tflite", None)  # fmt: skip


# --------------------------------------------------------------------------- CLI and runner

BLOCKER = """
import importlib.abc, runpy, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

BLOCKED = set(sys.argv[1].split(","))
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_blocked(tmp_path, blocked, script, *args):
    """Run ``script`` in a fresh interpreter where importing any of ``blocked`` raises."""
    blocker = tmp_path / "run_blocked.py"
    blocker.write_text(BLOCKER)
    return subprocess.run(
        [sys.executable, str(blocker), ",".join(blocked), str(script), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tools/export_model.py --end-to-end (ONNX and TorchScript) of a crafted 5-class
    model tested on fcos_demo_val (so export_info.json lists the demo classes)."""
    root = tmp_path_factory.mktemp("e2e")
    model = export_demo_model_with_tool(root, ("onnx", "torchscript"))
    return root, model


def test_cli_writes_graph_and_info(exported):
    root, _ = exported
    info = json.loads((root / "onnx" / "export_info.json").read_text())
    assert info["end_to_end"] is True and info["file"] == "model.onnx" and info["opset"] == 17
    assert info["class_names"] == list(DEMO_CLASSES)
    assert info["input"]["channel_order"] == "BGR" and info["input"]["resize_test"] == [96, 160]
    assert info["outputs"] == ["boxes", "scores", "classes"]
    assert (root / "torchscript" / "model.ts").is_file()
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(root / "onnx" / "model.onnx"))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17
    image = graph.graph.input[0].type.tensor_type
    assert image.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.shape.dim] == ["height", "width", 3]


def test_cli_no_resize_needs_end_to_end(tmp_path):
    with pytest.raises(SystemExit):
        load_script("tools/export_model.py").main(
            ["--config-file", "x.yaml", "--format", "onnx", "--no-resize",
             "--output", str(tmp_path)]
        )  # fmt: skip


def test_runner_without_torch_gives_eager_detections(exported, tmp_path):
    """tools/deploy_onnx.py in an interpreter where importing torch, detectron2 or
    fcos_d2 raises: its results.json holds the eager pipeline's detections (above the
    confidence threshold, in original pixels, with class names), and it draws them."""
    pytest.importorskip("onnxruntime")
    cv2 = pytest.importorskip("cv2")
    root, model = exported
    folder = tmp_path / "images"
    folder.mkdir()
    images = {"a.png": random_image(200, 300, seed=21), "b.png": random_image(77, 61, seed=22)}
    for name, image in images.items():
        cv2.imwrite(str(folder / name), image)  # BGR on disk = the config's INPUT.FORMAT
    out = tmp_path / "results.json"
    proc = run_blocked(
        tmp_path, ["torch", "detectron2", "fcos_d2"], os.path.join(REPO, "tools", "deploy_onnx.py"),
        "--model", root / "onnx" / "model.onnx", "--input", folder, "--output", out,
        "--draw", tmp_path / "drawn", "--confidence-threshold", 0.3,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["classes"] == list(DEMO_CLASSES)
    assert [r["file"] for r in results["images"]] == ["a.png", "b.png"]
    for entry in results["images"]:
        image = images[entry["file"]]  # read back as BGR, the model's format
        boxes, scores, classes = eager_detections(model, image, RESIZE)
        keep = scores >= 0.3
        dets = entry["detections"]
        assert (entry["height"], entry["width"]) == image.shape[:2]
        assert len(dets) == int(keep.sum()) > 0
        assert [d["class"] for d in dets] == classes[keep].tolist()
        assert [d["class_name"] for d in dets] == [DEMO_CLASSES[c] for c in classes[keep]]
        np.testing.assert_allclose(
            [d["score"] for d in dets], scores[keep].numpy(), atol=SCORE_ATOL
        )
        np.testing.assert_allclose([d["box"] for d in dets], boxes[keep].numpy(), atol=BOX_ATOL)
        drawn = cv2.imread(str(tmp_path / "drawn" / entry["file"]))
        assert drawn.shape == image.shape and not np.array_equal(drawn, image)


def test_runner_rejects_raw_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    model_dir = tmp_path / "raw"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(b"")
    (model_dir / "export_info.json").write_text(json.dumps({"end_to_end": False}))
    runner = load_script("tools/deploy_onnx.py")
    with pytest.raises(SystemExit, match="raw graph"):
        runner.main(["--model", str(model_dir / "model.onnx"), "--input", str(tmp_path),
                     "--output", str(tmp_path / "r.json")])  # fmt: skip


TORCHSCRIPT_RUN = """
import sys
import numpy as np
import torch
import torchvision  # registers the torchvision::nms operator the graph calls

model = torch.jit.load(sys.argv[1])
with torch.no_grad():
    outputs = model(torch.from_numpy(np.load(sys.argv[2])))
np.savez(sys.argv[3], *[o.numpy() for o in outputs])
"""


@pytest.mark.slow
def test_torchscript_runs_without_fcos_d2_and_detectron2(exported, tmp_path):
    root, model = exported
    image = random_image(150, 110, seed=31)
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "run_ts.py"
    script.write_text(TORCHSCRIPT_RUN)
    proc = run_blocked(
        tmp_path, ["detectron2", "fcos_d2"], script,
        root / "torchscript" / "model.ts", tmp_path / "image.npy", tmp_path / "out.npz",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out.npz")
    outputs = [out[f"arr_{i}"] for i in range(3)]
    expected = eager_detections(model, image, RESIZE)
    assert_same_detections(outputs, expected, min_count=10, check_dtypes=True)


# --------------------------------------------------------------------------- demo AP

DEMO_CONFIG = os.path.join(REPO, "configs", "FCOS-Demo", "fcos_R_18_demo.yaml")


def demo_weights():
    """A trained demo model: $FCOS_D2_DEMO_WEIGHTS, else make demo's final checkpoint."""
    default = os.path.join(REPO, "output", "fcos_R_18_demo", "model_final.pth")
    path = os.environ.get("FCOS_D2_DEMO_WEIGHTS", default)
    return path if os.path.isfile(path) else None


def coco_ap(json_file, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(json_file)
    evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return 100.0 * evaluation.stats[0]


def coco_results(image_id, boxes, scores, classes):
    """XYXY detections -> COCO results (XYWH, dataset category ids = class + 1)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return [
        {"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for b, s, c in zip(boxes.tolist(), np.asarray(scores).tolist(),
                           np.asarray(classes).tolist())
    ]  # fmt: skip


@pytest.mark.skipif(
    demo_weights() is None,
    reason="slow check: needs a trained demo model (make demo, or $FCOS_D2_DEMO_WEIGHTS)",
)
@pytest.mark.parametrize("test_size", [256, 320, 192])
def test_runner_box_ap_equals_eager_on_demo_val(tmp_path, test_size):
    """COCO box AP on fcos_demo_val of the runner's ONNX Runtime detections (images read
    by OpenCV, resized in the graph) and of eager inference (images read by Detectron2,
    resized by Pillow) -- at the demo's 256 test size (256x256 images: no resize) and
    resizing up (320) and down (192)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("pycocotools")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, detection_utils

    from fcos_d2.data.synthetic import ensure_demo_dataset

    weights = demo_weights()
    size = str(test_size)
    cfg = fcos_d2.setup_cfg(DEMO_CONFIG, [
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size,
    ])  # fmt: skip
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    resize = (test_size, test_size)
    path = str(tmp_path / "model.onnx")
    dicts = DatasetCatalog.get("fcos_demo_val")
    sample = detection_utils.read_image(dicts[0]["file_name"], format=cfg.INPUT.FORMAT)
    export_end_to_end(model, torch.from_numpy(np.ascontiguousarray(sample)), path, "onnx", resize)
    runner = load_script("tools/deploy_onnx.py")
    detector = runner.Detector(path, threads=1)
    eager, deployed = [], []
    for d in dicts:
        image = detection_utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        eager += coco_results(d["image_id"], *eager_detections(model, image, resize))
        image, _ = runner.read_image(d["file_name"], cfg.INPUT.FORMAT)
        deployed += coco_results(d["image_id"], *detector(image))
    json_file = ensure_demo_dataset(splits=("val",))["val"].json_file
    ap_eager, ap_deployed = coco_ap(json_file, eager), coco_ap(json_file, deployed)
    print(f"test size {test_size}: box AP eager {ap_eager:.3f}, "
          f"ONNX Runtime runner {ap_deployed:.3f}")
    assert abs(ap_deployed - ap_eager) <= 0.2
