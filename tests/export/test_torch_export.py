"""torch.export graphs (fcos_d2.export.torch_export): the end-to-end graph (without the
in-graph resize) and the raw graph recorded once with symbolic height and width, run as an
ExportedProgram, as ONNX from the torch.export-based exporter in ONNX Runtime, and as an
AOTInductor package -- the last in an interpreter where fcos_d2 and Detectron2 cannot be
imported -- each giving the eager model's detections at other sizes than the recorded one,
with the default options and with torchvision's."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fcos_d2  # noqa: F401  (registers the model)

from helpers import (
    assert_same_detections as assert_detections,
    detection_tensors,
    eager_detections,
    load_script,
    random_image,
    spread_model,
    tiny_cfg,
)
from fcos_d2.export import run_exported
from fcos_d2.export.torch_export import (
    export_graph,
    export_program,
    load_runner,
    min_image_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE_SIZE = (160, 200)  # recorded on this; checked on the sizes below
# (150, 210) pads to 160x224: P6 is 3x4, spaced (53, 56) with SPACING_FROM_INPUT;
# (333, 257) pads to 352x288: every level differs from the sample's
SIZES = [(150, 210), (333, 257)]

TORCHVISION_OPTIONS = {"LOCATION_OFFSET": 0.0, "SPACING_FROM_INPUT": True,
                       "THRESH_ON_FINAL_SCORE": True, "REMOVE_EMPTY_BOXES": False}  # fmt: skip


def fcos_model(options=None):
    """A tiny FCOS with spread head weights (helpers.spread_model) and the MODEL.FCOS
    ``options``: tens of detections of varied scores."""
    cfg = tiny_cfg()
    for key, value in (options or {}).items():
        setattr(cfg.MODEL.FCOS, key, value)
    return spread_model(cfg)


def assert_same_detections(outputs, reference, min_count=20):
    """Same count, classes, scores within 1e-4, boxes within 0.01 px; at least min_count."""
    assert_detections(outputs, reference, min_count)


def check_end_to_end(run, model):
    for seed, size in enumerate(SIZES):
        image = random_image(*size, seed=seed + 1)
        with torch.no_grad():
            outputs = run(torch.from_numpy(image))
        assert_same_detections(outputs, eager_detections(model, image))


def export_and_load(model, fmt, graph, folder):
    if graph == "end_to_end":
        sample = torch.from_numpy(random_image(*SAMPLE_SIZE, seed=0))
    else:
        sample = raw_batch(model, [SAMPLE_SIZE]).tensor
    path = str(folder / (graph + {"pt2": ".pt2", "onnx-dynamo": ".onnx", "aoti": "_aoti.pt2"}[fmt]))
    export_graph(model, sample, path, fmt, graph)
    return load_runner(path, fmt), path


def raw_batch(model, sizes, seed=0):
    from fcos_d2.export import preprocess

    return preprocess(model, raw_inputs(sizes, seed))


def raw_inputs(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, *s, generator=gen) * 255} for s in sizes]


def check_raw(run, model):
    """A batch of two sizes (other than the sample's batch of one) through the graph and
    the model's own post-processing equals eager inference."""
    inputs = raw_inputs([(150, 210), (200, 170)], seed=3)
    exported = run_exported(lambda x: run(x.contiguous()), model, inputs)
    with torch.no_grad():
        eager = model(inputs)
    for got, expected in zip(exported, eager):
        got, expected = got["instances"], expected["instances"]
        assert_same_detections(detection_tensors(got), detection_tensors(expected))


OPTIONS = [pytest.param(None, id="default"), pytest.param(TORCHVISION_OPTIONS, id="torchvision")]


# --------------------------------------------------------------------------- ExportedProgram


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_exported_program_end_to_end_equals_eager(options, tmp_path):
    """torch.export.save / load round trip, from an NHWC model (recorded from an NCHW copy;
    the model itself is left as it was)."""
    model = fcos_model(options)
    model.channels_last_modes = (True, True)
    model.to(memory_format=torch.channels_last)
    run, _ = export_and_load(model, "pt2", "end_to_end", tmp_path)
    assert model.channels_last
    assert model.head.cls_logits.weight.is_contiguous(memory_format=torch.channels_last)
    check_end_to_end(run, model)


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_exported_program_raw_equals_eager(options, tmp_path):
    model = fcos_model(options)
    run, _ = export_and_load(model, "pt2", "raw", tmp_path)
    check_raw(run, model)


@pytest.mark.slow
def test_exported_program_with_one_and_no_detections(tmp_path):
    """NMS of 0 or 1 candidates (torchvision's NMS declares >= 2 kept boxes to torch.export,
    and the recorded program asserts it): the threshold passes exactly one (location, class)
    pair of one image, none of another."""
    model = fcos_model()
    image = random_image(*SIZES[0], seed=1)
    chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    with torch.no_grad():
        padded = model.preprocess_image([{"image": chw}]).tensor
        predictions = model.predict(model.backbone(padded), tuple(padded.shape[-2:]))
    probs = torch.cat([logits[0].flatten() for logits in predictions.logits]).sigmoid()
    first, second = probs.topk(2).values.tolist()
    model.postprocessor.score_thresh = (first + second) / 2
    run, _ = export_and_load(model, "pt2", "end_to_end", tmp_path)
    assert_same_detections(run(torch.from_numpy(image)), eager_detections(model, image), 1)
    assert len(eager_detections(model, image)[0]) == 1
    for seed in range(20, 40):  # an image where nothing passes
        other = random_image(*SIZES[1], seed=seed)
        if len(eager_detections(model, other)[0]) == 0:
            assert len(run(torch.from_numpy(other))[0]) == 0
            break
    else:
        raise AssertionError("no test image without detections")


def test_small_or_wrong_samples_are_clear_errors():
    model = fcos_model()
    assert min_image_size(model) == 129  # P7's stride + 1: every level at least 2x2
    with pytest.raises(ValueError, match="at least 129x129"):
        export_program(model, torch.from_numpy(random_image(96, 128, seed=0)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        export_program(model, torch.zeros(3, 160, 200))
    with pytest.raises(ValueError, match="padded to multiples of 32"):
        export_program(model, torch.zeros(1, 3, 150, 200), graph="raw")
    with pytest.raises(ValueError, match="unknown graph 'full'"):
        export_program(model, torch.zeros(160, 200, 3, dtype=torch.uint8), graph="full")


# --------------------------------------------------------------------------- ONNX (dynamo)


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_dynamo_onnx_end_to_end_equals_eager(options, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = fcos_model(options)
    run, path = export_and_load(model, "onnx-dynamo", "end_to_end", tmp_path)
    graph = onnx.load(path)
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["boxes", "scores", "classes"]
    assert graph.opset_import[0].version >= 18
    check_end_to_end(run, model)


@pytest.mark.slow
def test_dynamo_onnx_raw_equals_eager(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = fcos_model(TORCHVISION_OPTIONS)
    run, _ = export_and_load(model, "onnx-dynamo", "raw", tmp_path)
    check_raw(run, model)


# --------------------------------------------------------------------------- AOTInductor

BLOCKED_RUN = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fcos_d2", "detectron2"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
sys.path = [p for p in sys.path if p not in ("", ".")]

import numpy as np
import torch
import torchvision  # registers the NMS kernel the package calls

package_path, fmt, images_path, out_path = sys.argv[1:]
if fmt == "aoti":
    model = torch._inductor.aoti_load_package(package_path)
else:
    model = torch.export.load(package_path).module()
results = {}
with np.load(images_path) as images, torch.no_grad():
    for name in images.files:
        boxes, scores, classes = model(torch.from_numpy(images[name]))
        results.update({f"{name}_boxes": boxes.numpy(), f"{name}_scores": scores.numpy(),
                        f"{name}_classes": classes.numpy()})
np.savez(out_path, **results)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("fcos_d2", "detectron2")))
"""


def run_without_fcos_d2(tmp_path, package_path, fmt):
    """Run a package in a fresh interpreter that cannot import fcos_d2 or Detectron2;
    returns a function of an image giving the outputs computed there."""
    images = {f"image{i}": random_image(*size, seed=i + 1) for i, size in enumerate(SIZES)}
    np.savez(tmp_path / "images.npz", **images)
    script = tmp_path / "blocked_run.py"
    script.write_text(BLOCKED_RUN)
    proc = subprocess.run(
        [sys.executable, str(script), str(package_path), fmt, str(tmp_path / "images.npz"),
         str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # nothing of fcos_d2 / detectron2
    out = np.load(tmp_path / "out.npz")
    return {n: tuple(out[f"{n}_{k}"] for k in ("boxes", "scores", "classes")) for n in images}, \
        images  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_aoti_package_equals_eager_without_fcos_d2(options, tmp_path):
    """Compiled with g++ (minutes on 2 cores); loaded and run where only torch, torchvision
    and numpy can be imported."""
    model = fcos_model(options)
    sample = torch.from_numpy(random_image(*SAMPLE_SIZE, seed=0))
    path = tmp_path / "model_aoti.pt2"
    export_graph(model, sample, str(path), "aoti", "end_to_end")
    outputs, images = run_without_fcos_d2(tmp_path, path, "aoti")
    for name, image in images.items():
        assert_same_detections(outputs[name], eager_detections(model, image))


@pytest.mark.slow
def test_exported_program_runs_without_fcos_d2(tmp_path):
    model = fcos_model()
    _, path = export_and_load(model, "pt2", "end_to_end", tmp_path)
    outputs, images = run_without_fcos_d2(tmp_path, path, "pt2")
    for name, image in images.items():
        assert_same_detections(outputs[name], eager_detections(model, image))


# --------------------------------------------------------------------------- tools/export_model.py


@pytest.mark.slow
def test_cli_writes_a_program_and_its_info(tmp_path):
    model = fcos_model(TORCHVISION_OPTIONS)
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = tiny_cfg()
    for key, value in TORCHVISION_OPTIONS.items():
        setattr(cfg.MODEL.FCOS, key, value)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.2
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 224
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(cfg.dump())
    cli = load_script("tools/export_model.py")
    base = ["--config-file", str(cfg_path), "--format", "pt2", "--end-to-end"]
    with pytest.raises(SystemExit):  # the in-graph resize cannot be recorded: --no-resize
        cli.main(base + ["--output", str(tmp_path / "x")])
    out = tmp_path / "pt2"
    args = ["--no-resize", "--output", str(out), "MODEL.WEIGHTS", str(weights)]
    assert cli.main(base + args) == 0
    info = json.loads((out / "export_info.json").read_text())
    assert info["format"] == "pt2" and info["file"] == "model.pt2"
    assert info["input"]["resize_in_graph"] is False
    assert info["torch_export"]["min_image_size"] == 129
    run = load_runner(str(out / "model.pt2"), "pt2")
    check_end_to_end(run, model)
