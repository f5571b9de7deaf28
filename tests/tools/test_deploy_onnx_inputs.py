"""tools/deploy_onnx.py on bad and unusual image files: a message per failed file naming it,
the other files still processed (with the detections of the equivalent 8-bit colour image),
and exit status 1 when any failed."""
import json

import numpy as np
import pytest
import torch

from helpers import eager_detections, load_script, random_image, spread_model
from detectron2.data import transforms as T
from fcos_d2.export import export_end_to_end, resize_bilinear, resized_size

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")

RESIZE = (96, 160)  # tiny_cfg's test-time resize


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An end-to-end ONNX graph of a tiny model with many detections (BGR input)."""
    root = tmp_path_factory.mktemp("deploy_inputs")
    model = spread_model()
    sample = torch.from_numpy(random_image(96, 128, seed=0))
    export_end_to_end(model, sample, str(root / "model.onnx"), "onnx", RESIZE)
    info = {"end_to_end": True, "input": {"channel_order": "BGR"}, "class_names": None}
    (root / "export_info.json").write_text(json.dumps(info))
    return root / "model.onnx", model


def write_files(folder):
    """The files, and for each one expected to work the 8-bit BGR image it stands for."""
    rng = np.random.default_rng(5)
    colour = random_image(70, 90, seed=1)
    gray = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    rgba = rng.integers(0, 256, (60, 84, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (66, 88, 3), dtype=np.uint16)
    tiny = random_image(1, 1, seed=2)
    tall = random_image(10000, 100, seed=3)
    cv2.imwrite(str(folder / "a_colour.png"), colour)
    cv2.imwrite(str(folder / "b_gray.png"), gray)
    cv2.imwrite(str(folder / "c_rgba.png"), rgba)
    cv2.imwrite(str(folder / "d_16bit.png"), deep)
    cv2.imwrite(str(folder / "e_1x1.png"), tiny)
    cv2.imwrite(str(folder / "f_10000x100.png"), tall)
    cv2.imwrite(str(folder / "full.jpg"), colour)
    data = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / "g_truncated.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(folder / "full.png"), colour)
    data = (folder / "full.png").read_bytes()
    (folder / "full.png").unlink()
    (folder / "h_truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "i_text.jpg").write_text("not an image\n")
    (folder / "readme.txt").write_text("skipped: not an image extension\n")
    return {
        "a_colour.png": colour,
        "b_gray.png": np.repeat(gray[:, :, None], 3, axis=2),
        "c_rgba.png": rgba[:, :, :3],
        "d_16bit.png": np.round(deep / 257.0).astype(np.uint8),
        "e_1x1.png": tiny,
        "f_10000x100.png": tall,
    }


def test_bad_files_are_reported_and_the_others_processed(exported, tmp_path, capsys):
    model_path, model = exported
    folder = tmp_path / "images"
    folder.mkdir()
    expected = write_files(folder)
    runner = load_script("tools/deploy_onnx.py")
    out = tmp_path / "results.json"
    status = runner.main(["--model", str(model_path), "--input", str(folder),
                          "--output", str(out), "--confidence-threshold", "0"])  # fmt: skip
    assert status == 1
    captured = capsys.readouterr()
    results = json.loads(out.read_text())

    failed = {f["file"]: f["error"] for f in results["failed"]}
    assert sorted(failed) == ["g_truncated.jpg", "h_truncated.png", "i_text.jpg"]
    assert "JPEG data ends early (truncated file)" in failed["g_truncated.jpg"]
    assert "not an image OpenCV can decode" in failed["h_truncated.png"]
    assert "not an image OpenCV can decode" in failed["i_text.jpg"]
    for name, error in failed.items():
        assert str(folder / name) in error and f"FAILED {error}" in captured.err
    assert "3 of 9 files failed" in captured.err

    assert [r["file"] for r in results["images"]] == sorted(expected)
    detector = runner.Detector(str(model_path), threads=1)
    for entry in results["images"]:
        image = expected[entry["file"]]
        assert (entry["height"], entry["width"]) == image.shape[:2]
        boxes, scores, classes = detector(image)
        assert len(entry["detections"]) == len(scores) > 0
        np.testing.assert_allclose([d["box"] for d in entry["detections"]], boxes, atol=1e-3)
        assert [d["class"] for d in entry["detections"]] == classes.tolist()
    tiny = np.array([d["box"] for d in results["images"][4]["detections"]])  # e_1x1.png
    assert np.all((tiny >= 0) & (tiny <= 1))  # clipped to the one pixel
    notes = {r["file"]: r["notes"] for r in results["images"]}
    assert notes["d_16bit.png"] == ["16-bit image scaled to 8 bits"] and notes["a_colour.png"] == []


def graph_resized_detections(model, image):
    """The eager model on the pixels of the graph's own resize, rescaled to the image."""
    height, width = (torch.tensor([s]) for s in image.shape[:2])
    new_h, new_w = resized_size(height, width, *RESIZE)
    pixels = resize_bilinear(torch.from_numpy(image), new_h, new_w).float().permute(2, 0, 1)
    inputs = {"image": pixels, "height": image.shape[0], "width": image.shape[1]}
    with torch.no_grad():
        instances = model([inputs])[0]["instances"]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


@pytest.mark.parametrize("size", [(2, 3), (10000, 100), (100, 10000)])
def test_extreme_sizes_give_eager_detections(exported, size):
    """A 2x3 image and 100:1 aspect ratios run through the graph's resize and give the eager
    model's detections: boxes within 0.01 px of the resized image, i.e. 0.01 px times the
    rescale factor in the file's pixels. (A 1x1 image, processed in the test above, becomes
    one grey level everywhere, where GroupNorm divides by a variance near 0 and float
    rounding differs between ONNX Runtime and PyTorch. For the tall image the reference
    runs on the graph's resize: Pillow resizes such images vertical pass first, see
    fcos_d2/export/resize.py.)"""
    model_path, model = exported
    runner = load_script("tools/deploy_onnx.py")
    image = random_image(*size, seed=7)
    boxes, scores, classes = runner.Detector(str(model_path), threads=1)(image)
    if size == (10000, 100):
        ref_boxes, ref_scores, ref_classes = graph_resized_detections(model, image)
    else:
        ref_boxes, ref_scores, ref_classes = eager_detections(model, image, RESIZE)
    assert len(ref_scores) > 0 and len(scores) == len(ref_scores)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    assert classes.tolist() == ref_classes.tolist()
    new_size = T.ResizeShortestEdge.get_output_shape(*size, *RESIZE)
    scale = max(size[0] / new_size[0], size[1] / new_size[1], 1.0)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=0.01 * scale)


def test_all_good_files_exit_zero(exported, tmp_path):
    model_path, _ = exported
    image = tmp_path / "ok.png"
    cv2.imwrite(str(image), random_image(50, 60, seed=4))
    runner = load_script("tools/deploy_onnx.py")
    out = tmp_path / "r.json"
    assert runner.main(["--model", str(model_path), "--input", str(image),
                        "--output", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["failed"] == []
