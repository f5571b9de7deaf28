"""Every export mode equals eager inference for every option that changes the detections.

Raw graph (TorchScript, ONNX) + Python post-processing, and end-to-end graph (TorchScript,
ONNX), with the default config and with the torchvision config's options
(configs/COCO-Detection/FCOS_R_50_torchvision.yaml on a tiny ResNet-18), on padded sizes
divisible by 128, by 32 only, and (after the end-to-end graph's resize) by neither; and,
one option at a time, a change that moves the eager detections moves the exported ones
the same way (the test fails if the exported path drops the option).
"""
import inspect
import json

import numpy as np
import pytest
import torch

import fcos_d2
from detectron2.data import transforms as T

from helpers import (
    assert_same_detections,
    detection_tensors,
    eager_detections,
    end_to_end_runner,
    load_script,
    random_image,
    spread_model,
    tiny_cfg,
)
from fcos_d2.export import (
    export_onnx,
    export_torchscript,
    output_options,
    preprocess,
    run_exported,
)
from fcos_d2.modeling.inference import FCOSPostProcessor

pytestmark = pytest.mark.usefixtures("one_thread")

TORCHVISION_CONFIG = "configs/COCO-Detection/FCOS_R_50_torchvision.yaml"
RESIZE = (128, 256)  # INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST of these tests
# raw graph inputs (no resize): padded to 128x256 (divisible by 128), 96x160 (by 32 only),
# 128x160 from 100x150 (unpadded size divisible by neither)
RAW_SIZES = [(128, 256), (96, 160), (100, 150)]
# end-to-end inputs, resized in the graph to 128x256, 128x160 and 128x171 (padded 128x192)
E2E_SIZES = [(64, 128), (160, 200), (150, 200)]


def torchvision_options(cfg):
    """The torchvision config's MODEL.FCOS options, input format and normalisation on
    ``cfg`` (its architecture stays the tiny one)."""
    tv = fcos_d2.setup_cfg(TORCHVISION_CONFIG)
    for key, value in tv.MODEL.FCOS.items():
        if key not in ("NUM_CLASSES",) and value != cfg.MODEL.FCOS[key]:
            cfg.MODEL.FCOS[key] = value
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = tv.MODEL.PIXEL_MEAN, tv.MODEL.PIXEL_STD
    cfg.INPUT.FORMAT = tv.INPUT.FORMAT
    return cfg


def lively_model(config: str):
    """A tiny FCOS with spread head outputs, so that images get many detections (the
    config's score threshold; the graphs compute in float32, as tiny_cfg's inference)."""
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = RESIZE
    if config == "torchvision":
        torchvision_options(cfg)
        assert cfg.MODEL.FCOS.SPACING_FROM_INPUT and cfg.MODEL.FCOS.LOCATION_OFFSET == 0.0
    return spread_model(cfg, score_thresh=None)


def raw_inputs(size, seed):
    """One Detectron2 input, asking for detections at 1.5x its size (rescaled)."""
    image = torch.from_numpy(random_image(*size, seed).transpose(2, 0, 1).copy()).float()
    return [{"image": image, "height": size[0] * 3 // 2, "width": size[1] * 3 // 2}]


def eager_end_to_end(model, image):
    """Detectron2's test-time path: ResizeShortestEdge, the model, rescaling."""
    return eager_detections(model, image, RESIZE)


def assert_same(outputs, reference, min_count=10):
    assert_same_detections(outputs, reference, min_count)


def raw_runner(model, fmt, path):
    """The raw graph exported on a 96x128 sample, as a function tensor -> outputs."""
    sample = preprocess(model, raw_inputs((96, 128), seed=0)).tensor
    if fmt == "torchscript":
        export_torchscript(model, sample, str(path))
        traced = torch.jit.load(str(path))

        def run(tensor):
            with torch.no_grad():
                return traced(tensor)

        return run
    onnxruntime = pytest.importorskip("onnxruntime")
    export_onnx(model, sample, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda tensor: session.run(None, {"images": tensor.contiguous().numpy()})


def e2e_runner(model, fmt, path):
    """The end-to-end graph (resize in the graph) traced on a 96x128 image."""
    return end_to_end_runner(model, fmt, RESIZE, path)


@pytest.fixture(scope="module", params=["default", "torchvision"])
def model(request):
    return lively_model(request.param)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_raw_graph_equals_eager(model, fmt, tmp_path):
    run = raw_runner(model, fmt, tmp_path / f"raw.{fmt}")
    for seed, size in enumerate(RAW_SIZES):
        batch = raw_inputs(size, seed=seed + 1)
        with torch.no_grad():
            expected = model(batch)[0]["instances"]
        result = run_exported(run, model, batch)[0]["instances"]
        assert result.image_size == expected.image_size
        assert_same(detection_tensors(result), detection_tensors(expected))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_end_to_end_graph_equals_eager(model, fmt, tmp_path):
    run = e2e_runner(model, fmt, tmp_path / f"e2e.{fmt}")
    for seed, size in enumerate(E2E_SIZES):
        image = random_image(*size, seed=seed + 10)
        assert_same(run(image), eager_end_to_end(model, image))


def test_sizes_cover_the_padding_cases():
    divisible = [(h % 128 == 0 and w % 128 == 0, h % 32 == 0 and w % 32 == 0)
                 for h, w in RAW_SIZES]  # fmt: skip
    assert divisible == [(True, True), (False, True), (False, False)]
    resized = [T.ResizeShortestEdge.get_output_shape(*s, *RESIZE) for s in E2E_SIZES]
    assert resized == [(128, 256), (128, 160), (128, 171)]


# --------------------------------------------------------------------------- each option

# option -> ({(module, attribute): value} for the option, the same for the baseline it is
# compared with); module "model" or "postprocessor". REMOVE_EMPTY_BOXES sets two of them:
# the rescaling's only matters once the post-processor keeps empty boxes.
OPTIONS = {
    "location_offset": ({("model", "location_offset"): 0.0}, {}),
    "spacing_from_input": ({("model", "spacing_from_input"): True}, {}),
    "score_thresh": ({("postprocessor", "score_thresh"): 0.35}, {}),
    "pre_nms_topk": ({("postprocessor", "pre_nms_topk"): 5}, {}),
    "post_nms_topk": ({("postprocessor", "post_nms_topk"): 30}, {}),
    "nms_thresh": ({("postprocessor", "nms_thresh"): 0.3}, {}),
    "thresh_with_ctr": ({("postprocessor", "thresh_with_ctr"): True}, {}),
    "score_sqrt": ({("postprocessor", "score_sqrt"): False}, {}),
    "min_box_size": ({("postprocessor", "min_box_size"): 4.0}, {}),
    "thresh_on_final_score": ({("postprocessor", "thresh_on_final_score"): True}, {}),
    "remove_empty_boxes": ({("postprocessor", "remove_empty_boxes"): False}, {}),
    "rescale_remove_empty_boxes": (
        {("postprocessor", "remove_empty_boxes"): False, ("model", "remove_empty_boxes"): False},
        {("postprocessor", "remove_empty_boxes"): False},
    ),
}


def configured(changes):
    model = lively_model("default")
    model.postprocessor.score_thresh = 0.3  # some pass, some not: thresholds matter
    model.postprocessor.pre_nms_topk = 100
    for (owner, name), value in changes.items():
        target = model if owner == "model" else model.postprocessor
        assert hasattr(target, name), (owner, name)
        setattr(target, name, value)
    return model


def test_options_cover_the_modules():
    """Every post-processor argument and every location / rescaling option is tested here
    and written to export_info.json."""
    parameters = inspect.signature(FCOSPostProcessor.__init__).parameters.values()
    post_args = {p.name for p in parameters if p.kind == inspect.Parameter.KEYWORD_ONLY}
    tested = {name for changes, _ in OPTIONS.values() for _, name in changes}
    assert post_args | {"location_offset", "spacing_from_input", "remove_empty_boxes"} == tested
    options = output_options(configured({}))
    assert set(options["postprocess"]) == post_args
    assert set(options["locations"]) == {"location_offset", "spacing_from_input"}
    assert set(options["rescale"]) == {"remove_empty_boxes"}


def differ(detections, others) -> bool:
    """Whether two detection sets differ in count, boxes (0.1 px) or scores (1e-3)."""
    if len(detections[0]) != len(others[0]):
        return True
    return not (torch.allclose(detections[0], others[0], atol=0.1)
                and torch.allclose(detections[1], others[1], atol=1e-3))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_reaches_the_exported_path(option, tmp_path):
    changes, baseline_changes = OPTIONS[option]
    model, baseline = configured({**baseline_changes, **changes}), configured(baseline_changes)
    raw = raw_runner(model, "torchscript", tmp_path / "raw.ts")
    e2e = e2e_runner(model, "onnx", tmp_path / "e2e.onnx")
    batch = raw_inputs((100, 150), seed=3)  # padded 128x160: P6/P7 spacing is not the stride
    image = random_image(160, 200, seed=4)  # resized to 128x160: P6/P7 spacing differs too
    with torch.no_grad():
        eager_raw, base_raw = (
            detection_tensors(m(batch)[0]["instances"]) for m in (model, baseline)
        )
    eager_e2e, base_e2e = eager_end_to_end(model, image), eager_end_to_end(baseline, image)
    for eager, base in ((eager_raw, base_raw), (eager_e2e, base_e2e)):  # the option matters
        assert differ(eager, base)
    exported_raw = run_exported(raw, model, batch)[0]["instances"]
    assert_same(detection_tensors(exported_raw), eager_raw, 1)
    assert_same(e2e(image), eager_e2e, 1)


@pytest.mark.parametrize("end_to_end", [False, True])
def test_export_info_lists_the_models_options(tmp_path, end_to_end):
    """tools/export_model.py writes the exported model's own option values (the
    torchvision ones here), and its check against eager passes."""
    cfg = torchvision_options(tiny_cfg())
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = RESIZE
    cfg_path = tmp_path / "tv.yaml"
    cfg_path.write_text(cfg.dump())
    out = tmp_path / "export"
    args = ["--config-file", str(cfg_path), "--format", "torchscript", "--output", str(out)]
    assert load_script("tools/export_model.py").main(args + (["--end-to-end"] * end_to_end)) == 0
    info = json.loads((out / "export_info.json").read_text())
    assert info["locations"] == {"location_offset": 0.0, "spacing_from_input": True}
    assert info["rescale"] == {"remove_empty_boxes": False}
    post = info["postprocess"]
    assert post["thresh_on_final_score"] is True and post["remove_empty_boxes"] is False
    assert post["score_thresh"] == 0.2 and post["nms_thresh"] == 0.6
    assert info["precision"] == "float32" and info["input"]["channel_order"] == "RGB"
    assert info["input"]["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53])


# --------------------------------------------------------------------------- rescaling


def test_rescale_boxes_is_detectron2s_detector_postprocess():
    """The one rescaling function (eager and graphs) gives detector_postprocess's boxes
    and keeps the same ones, bit for bit, on odd scales, boxes outside the image and empty
    boxes."""
    from detectron2.modeling import detector_postprocess
    from detectron2.structures import Boxes, Instances

    from fcos_d2.modeling.inference import rescale_boxes

    rng = np.random.default_rng(0)
    for _ in range(50):
        size = tuple(int(v) for v in rng.integers(20, 400, 2))
        out_size = tuple(int(v) for v in rng.integers(10, 1500, 2))
        xy = torch.from_numpy(rng.uniform(-20, 420, (200, 2, 2))).float()
        boxes = torch.cat([xy.min(dim=1).values, xy.max(dim=1).values], dim=1)  # XYXY
        boxes[::7, 2] = boxes[::7, 0]  # empty ones
        result = Instances(size, pred_boxes=Boxes(boxes.clone()), scores=torch.rand(200))
        expected = detector_postprocess(result, *out_size)
        ours, keep = rescale_boxes(boxes, size, out_size, remove_empty_boxes=True)
        assert torch.equal(ours[keep], expected.pred_boxes.tensor)
        graph, graph_keep = rescale_boxes(
            boxes, torch.tensor(size), torch.tensor(out_size), remove_empty_boxes=True
        )
        assert torch.equal(graph, ours) and torch.equal(graph_keep, keep)
        _, kept_all = rescale_boxes(boxes, size, out_size, remove_empty_boxes=False)
        assert bool(kept_all.all())
