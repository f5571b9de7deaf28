"""Raw-graph TorchScript and ONNX export of the one-stage FCOS: raw outputs and detections
match eager (the end-to-end graph: test_end_to_end.py)."""
import json

import pytest
import torch

import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from helpers import load_script, spread_model, tiny_cfg
from fcos_d2.export import (
    FCOSRawOutputs,
    export_onnx,
    export_torchscript,
    output_names,
    preprocess,
    run_exported,
)

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    model = spread_model()  # livelier head than the initialisation: varied boxes and scores
    model.postprocessor.pre_nms_topk = 50
    return model


def inputs(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, h, w, generator=gen) * 255, "height": 2 * h, "width": 2 * w}
            for h, w in sizes]


def assert_outputs_close(outputs, reference):
    assert len(outputs) == len(reference)
    for out, ref in zip(outputs, reference):
        out = torch.as_tensor(out)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def assert_detections_equal(results, reference):
    for res, ref in zip(results, reference):
        res, ref = res["instances"], ref["instances"]
        assert res.image_size == ref.image_size and len(ref) > 0
        assert len(res) == len(ref)
        # pixels of the original size: float rounding of distances scaled by strides
        # up to 128 and by the output size (ONNX Runtime's convolutions round otherwise)
        torch.testing.assert_close(res.pred_boxes.tensor, ref.pred_boxes.tensor, atol=0.01, rtol=0)
        torch.testing.assert_close(res.scores, ref.scores, atol=ATOL, rtol=0)
        assert torch.equal(res.pred_classes, ref.pred_classes)


def reference(model, batched_inputs):
    """Eager raw outputs on the preprocessed batch, and eager detections."""
    images = preprocess(model, batched_inputs)
    with torch.no_grad():
        return images, FCOSRawOutputs(model).eval()(images.tensor), model(batched_inputs)


def test_output_names(model):
    names = output_names(model)
    assert names[:2] == ["logits_p3", "logits_p4"] and names[5] == "box_p3"
    assert names[-1] == "ctrness_p7" and len(names) == 15


def test_torchscript_matches_eager_on_other_sizes(model, tmp_path):
    sample = preprocess(model, inputs([(96, 128)])).tensor
    path = str(tmp_path / "model.ts")
    export_torchscript(model, sample, path)
    traced = torch.jit.load(path)
    # another batch size and other image sizes (padded to 128 x 160) than traced
    batch = inputs([(100, 150), (70, 90)], seed=1)
    images, raw, detections = reference(model, batch)
    assert tuple(images.tensor.shape[-2:]) == (128, 160)
    with torch.no_grad():
        assert_outputs_close(traced(images.tensor), raw)
        assert_detections_equal(run_exported(traced, model, batch), detections)


def test_onnx_matches_eager_on_other_sizes(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    sample = preprocess(model, inputs([(96, 128)])).tensor
    path = str(tmp_path / "model.onnx")
    names = export_onnx(model, sample, path)
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names

    def run(tensor):
        return session.run(None, {"images": tensor.contiguous().numpy()})

    batch = inputs([(100, 150), (70, 90)], seed=2)
    images, raw, detections = reference(model, batch)
    assert_outputs_close(run(images.tensor), raw)
    assert_detections_equal(run_exported(run, model, batch), detections)


def load_cli():
    return load_script("tools/export_model.py")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli(tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(tiny_cfg().dump())
    out = tmp_path / "export"
    args = ["--config-file", str(cfg_path), "--format", fmt, "--output", str(out)]
    assert load_cli().main(args) == 0
    printed = capsys.readouterr().out
    difference = float(printed.split("max |difference|: ")[1].split()[0])
    assert difference < ATOL
    info = json.loads((out / "export_info.json").read_text())
    assert (out / info["file"]).is_file() and info["format"] == fmt
    assert info["strides"] == [8, 16, 32, 64, 128] and len(info["outputs"]) == 15
    assert info["input"]["size_divisibility"] == 32 and info["num_classes"] == 3
