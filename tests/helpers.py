"""What the tests share: the repository root, a small config and its inputs, the repository's
scripts as modules, and the spread-weight model and detection checks of the export tests.

Every test file, in any folder of tests/, imports these with ``from helpers import ...``:
tests/conftest.py is imported first, from tests/, which puts tests/ on ``sys.path``.
The fixtures (``one_thread``, ``seeded``) are in tests/conftest.py.
"""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

import fcos_d2  # registers modules; setup_cfg
from PIL import Image, ImageDraw

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from fcos_d2.compat import pure_python_detectron2

#: The repository's root folder (tests/..).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BOX_ATOL = 0.01  # pixels: exported boxes against eager ones
SCORE_ATOL = 1e-4

#: The devices of a test that runs on each: the CPU, and CUDA where PyTorch sees a GPU
#: (marked ``cuda``: ``pytest -m cuda`` runs only those; without a GPU they are skipped).
DEVICES = (
    "cpu",
    pytest.param(
        "cuda",
        marks=(
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable"),
        ),
    ),
)

#: The reduced precision each device's hardware has units for: bfloat16 on CPUs
#: (AMX, avx512_bf16), float16 on CUDA (tensor cores; Detectron2's AMP dtype).
REDUCED_PRECISION = {"cpu": torch.bfloat16, "cuda": torch.float16}


def tiny_cfg(two_stage: bool = False, num_classes: int = 3, device: str = "cpu"):
    """A small ResNet-18 FCOS (or FCOS-RPN Faster R-CNN) config that runs fast on CPU."""
    two_stage_base = "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml"
    base = two_stage_base if two_stage else "configs/Base-FCOS.yaml"
    cfg = fcos_d2.setup_cfg(base, freeze=False)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 64  # GroupNorm(32) needs >1 value per group on 1x1 P7
    cfg.MODEL.FPN.NORM = "GN"  # from-scratch two-stage training diverges without it
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 160
    # float32 inference on every machine kind: tests compare detections exactly (against
    # exports, torchvision, ...); tests/modeling/test_execution.py runs TEST.AMP.
    cfg.TEST.AMP.ENABLED = False
    return cfg


def make_inputs(boxes_per_image, size=(96, 128), seed=0, classes=None):
    """Detectron2 training inputs: random images with the given XYXY boxes."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for i, boxes in enumerate(boxes_per_image):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        cls = classes[i] if classes is not None else [j % 3 for j in range(len(boxes))]
        inst.gt_classes = torch.tensor(cls, dtype=torch.int64)
        image = torch.rand(3, *size, generator=gen) * 255
        inputs.append({"image": image, "instances": inst, "height": size[0], "width": size[1]})
    return inputs


def dataset_record(file_name, annotations, height=64, width=64, image_id=7):
    """A Detectron2 dataset dict; ``annotations``: (XYXY box, category id, iscrowd)."""
    return {
        "file_name": file_name, "height": height, "width": width, "image_id": image_id,
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": crowd}
            for b, c, crowd in annotations
        ],
    }


def load_script(relative_path: str):
    """Import a repository script (e.g. "tools/export_model.py") as a module."""
    path = os.path.join(REPO, relative_path)
    name = os.path.splitext(os.path.basename(relative_path))[0] + "_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Skips a test where the installed Detectron2 is a compiled build, not the pure-Python one.
pure_python_only = pytest.mark.skipif(
    not pure_python_detectron2(),
    reason="tests the pure-Python Detectron2 of tools/install_detectron2.py; the installed "
    "one is a compiled build",
)


def training_step(cfg, image_size=64):
    """One training step (forward, backward) of a model built from ``cfg`` on two square
    images of ``image_size``: (model, head outputs, losses)."""
    model = build_model(cfg)
    model.train()
    captured = {}
    model.head.register_forward_hook(lambda m, i, out: captured.setdefault("out", out))
    boxes = [[[8, 8, 40, 40], [20, 10, 60, 50]], [[0, 0, 30, 30]]]
    inputs = make_inputs(boxes, size=(image_size, image_size))
    losses = model(inputs)
    sum(losses.values()).backward()
    return model, captured["out"], losses


def conv_output_dtypes(model):
    """The dtypes of the FCOS head's class-logit conv outputs, appended at every forward."""
    seen = []
    model.head.cls_logits.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


# ---- a dataset folder of the user's: COCO json and images ---------------------------------

#: The user's category ids are not 1..K on purpose: contiguous indices 0, 1.
COCO_CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]


def draw_shapes_image(rng, size: int):
    """A noisy grey image with 1-3 objects; returns it and [(category id, XYWH box)]."""
    pixels = rng.normal(120, 20, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(rng.integers(1, 4)):
        w, h = rng.integers(size // 6, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        square = rng.random() < 0.5
        shape = draw.rectangle if square else draw.ellipse
        shape([x, y, x + w - 1, y + h - 1], fill=(230, 40, 40) if square else (40, 60, 230))
        objects.append((3 if square else 7, [int(x), int(y), int(w), int(h)]))
    return image, objects


def write_coco_folder(root, split: str, num_images: int, size: int = 96, seed: int = 0):
    """``root/<split>/`` images and ``root/<split>.json``, as a user would have them (the
    categories COCO_CATEGORIES); returns the json file and the image folder."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, objects = draw_shapes_image(rng, size)
        file_name = f"img_{i:03d}.jpg"
        image.save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": 100 + i, "file_name": file_name, "width": size, "height": size})
        for category, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                "category_id": category, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": 0})
    json_file = os.path.join(root, f"{split}.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}, f)
    return json_file, image_dir


def coco_spec(name, json_file, image_dir):
    """The command line's dataset spec of a COCO folder."""
    return f"name={name},json={json_file},images={image_dir}"


def unique_name(name, tmp_path):
    """A dataset name per test (the catalogs are global to the test process)."""
    return f"{name}_{abs(hash(str(tmp_path))) % 10**8}"


# ---- export: a model with many detections, images, and detections compared with eager -----


def spread_model(cfg=None, cls_bias: float = -1.0, score_thresh=0.2):
    """A tiny FCOS (of ``cfg``, else ``tiny_cfg()``) in eval mode whose prediction convs
    have spread weights (std 0.05, seed 0), so that scores and boxes vary from location to
    location: with the class bias -1 and the score threshold 0.2, tens of detections of
    varied scores per image (an exported graph takes the dense top-k where eager inference
    gathers the passing pairs); with the bias 0 every score passes the default threshold.
    ``score_thresh=None`` keeps the config's threshold."""
    cfg = tiny_cfg() if cfg is None else cfg
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    head = model.head
    with torch.no_grad():
        for conv in (head.cls_logits, head.bbox_pred, head.ctrness):
            conv.weight.normal_(std=0.05)
        head.cls_logits.bias.fill_(cls_bias)
    if score_thresh is not None:
        model.postprocessor.score_thresh = score_thresh
    return model


def random_image(height, width, seed):
    """A random (H, W, 3) uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def detection_tensors(instances):
    """(boxes, scores, classes) of Detectron2 ``Instances``."""
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def eager_detections(model, image, resize=None):
    """The eager model's (boxes, scores, classes) on an (H, W, 3) uint8 image; with
    ``resize`` (min size, max size), Detectron2's test-time path: ResizeShortestEdge
    (Pillow), the model, boxes rescaled to the image."""
    height, width = image.shape[:2]
    if resize is not None:
        image = T.ResizeShortestEdge(*resize).get_transform(image).apply_image(image)
    inputs = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()}
    if resize is not None:
        inputs.update(height=height, width=width)
    with torch.no_grad():
        instances = model([inputs])[0]["instances"]
    return detection_tensors(instances)


def assert_same_detections(outputs, reference, min_count=1, check_dtypes=False):
    """Exported ``outputs`` (boxes, scores, classes; tensors or arrays) against eager
    ``reference``: same count, classes, scores within 1e-4, boxes within 0.01 px; at least
    ``min_count`` detections; with ``check_dtypes``, float32 boxes and int64 classes."""
    boxes, scores, classes = (torch.as_tensor(np.asarray(o)) for o in outputs)
    ref_boxes, ref_scores, ref_classes = reference
    assert len(ref_boxes) >= min_count
    assert len(boxes) == len(ref_boxes)
    if check_dtypes:
        assert boxes.dtype == torch.float32 and classes.dtype == torch.int64
    assert torch.equal(classes, ref_classes)
    torch.testing.assert_close(scores, ref_scores, atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(boxes, ref_boxes, atol=BOX_ATOL, rtol=0)


def end_to_end_runner(model, fmt, resize, path):
    """The end-to-end graph of ``model`` (``fmt`` "onnx" or "torchscript", in-graph resize
    ``resize`` or none) exported to ``path`` on a 96x128 sample image and loaded again: a
    function (H, W, 3) uint8 image -> (boxes, scores, classes)."""
    from fcos_d2.export import export_end_to_end

    sample = torch.from_numpy(random_image(96, 128, seed=0))
    export_end_to_end(model, sample, str(path), fmt, resize)
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "classes"]
        return lambda image: session.run(None, {"image": image})
    traced = torch.jit.load(str(path))

    def run(image):
        with torch.no_grad():
            return traced(torch.from_numpy(image))

    return run


def export_demo_model_with_tool(root, formats):
    """tools/export_model.py --end-to-end, for each of ``formats``, of a spread-weight model
    of the demo dataset's 5 classes whose config tests on fcos_demo_val (so export_info.json
    lists the demo classes), with the score threshold 0.2: writes ``root/<format>/``;
    returns the model."""
    from fcos_d2.data.synthetic import DEMO_CLASSES

    model = spread_model(tiny_cfg(num_classes=len(DEMO_CLASSES)))
    weights = root / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = tiny_cfg(num_classes=len(DEMO_CLASSES))
    cfg.DATASETS.TEST = ("fcos_demo_val",)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.2
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(cfg.dump())
    cli = load_script("tools/export_model.py")
    for fmt in formats:
        args = ["--config-file", str(cfg_path), "--format", fmt, "--end-to-end",
                "--output", str(root / fmt), "MODEL.WEIGHTS", str(weights)]  # fmt: skip
        assert cli.main(args) == 0
    return model
