"""Bad input and faults: clear errors, finite losses, nothing lost."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from helpers import REPO, make_inputs, tiny_cfg
from fcos_d2 import add_fcos_config
from fcos_d2.data.checks import check_dataset_classes
from fcos_d2.data.mapper import BadImageError, FCOSDatasetMapper
from fcos_d2.modeling.targets import FCOSTargetAssigner, compute_locations


def write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def record(file_name, annotations, height=64, width=64, image_id=7):
    return {
        "file_name": file_name, "height": height, "width": width, "image_id": image_id,
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": crowd}
            for b, c, crowd in annotations
        ],
    }


def mapper_cfg(**overrides):
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.RANDOM_FLIP = "none"
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


@pytest.fixture
def rgb_png(tmp_path):
    return write_png(tmp_path / "rgb.png", np.full((64, 64, 3), 120, np.uint8))


# 1. empty, crowd-only and degenerate annotations ------------------------------------------


def test_degenerate_boxes_are_dropped_and_counted(rgb_png, caplog):
    mapper = FCOSDatasetMapper(mapper_cfg(), True)
    rec = record(rgb_png, [([5, 5, 5, 30], 0, 0), ([10, 10, 8, 20], 1, 0), ([4, 4, 40, 40], 2, 0)])
    with caplog.at_level(logging.WARNING):
        out = mapper(rec)
    assert out["instances"].gt_classes.tolist() == [2]
    assert "Dropped 2 empty or degenerate box(es) of image_id=7" in caplog.text


def test_crowd_only_image_trains_with_finite_losses(rgb_png):
    mapper = FCOSDatasetMapper(mapper_cfg(), True)
    out = mapper(record(rgb_png, [([0, 0, 64, 64], 1, 1)]))
    assert out["instances"].gt_is_crowd.tolist() == [True]
    model = build_model(tiny_cfg()).train()
    losses = model([out])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0  # a crowd box is never positive


def test_images_without_annotations_train(seeded):
    model = build_model(tiny_cfg()).train()
    losses = model(make_inputs([[], []]))
    assert all(torch.isfinite(v) for v in losses.values())


# 2. boxes outside the image -----------------------------------------------------------------


def test_boxes_outside_the_image_are_clipped_or_dropped(rgb_png, seeded):
    mapper = FCOSDatasetMapper(mapper_cfg(), True)
    out = mapper(record(rgb_png, [([-10, -20, 30, 40], 0, 0), ([70, 70, 90, 90], 1, 0)]))
    assert out["instances"].gt_boxes.tensor.tolist() == [[0, 0, 30, 40]]
    model = build_model(tiny_cfg()).train()
    losses = model([out, out])
    assert all(torch.isfinite(v) for v in losses.values())


# 3. many objects ------------------------------------------------------------------------------


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        return {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in f if ln.startswith("Vm")}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_assignment_of_1000_boxes_in_800x1333_has_bounded_memory():
    torch.manual_seed(0)
    strides = [8, 16, 32, 64, 128]
    locations = [compute_locations(-(-800 // s), -(-1344 // s), s) for s in strides]
    xy = torch.rand(1000, 2) * torch.tensor([1200.0, 700.0])
    boxes = torch.cat([xy, xy + torch.rand(1000, 2) * 120 + 4], dim=1)
    classes = torch.randint(0, 80, (1000,))
    assigner = FCOSTargetAssigner(num_classes=80)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS")
    before = _peak_rss_mb()["VmRSS"]
    labels, reg = assigner(locations, strides, [boxes], [classes])
    extra = _peak_rss_mb()["VmHWM"] - before
    num_pairs = sum(len(level) for level in locations) * 1000  # 22.4M location-box pairs
    # Unchunked, the (R, G, 4) distances alone would take num_pairs * 16 bytes (~360 MB).
    assert extra < 300, f"peak extra memory {extra:.0f} MB for {num_pairs} pairs"
    assert (labels < 80).sum() > 1000


# 4. tiny and odd-sized inputs -----------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (1, 500), (100, 75), (130, 257)])
def test_tiny_and_odd_sizes_train_and_infer(size, seeded):
    model = build_model(tiny_cfg())
    h, w = size
    box = [[0, 0, max(w / 2, 1), max(h / 2, 1)]]
    model.train()
    losses = model(make_inputs([box, box], size=size))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(make_inputs([[]], size=size))[0]["instances"]
    assert out.image_size == size


# 5. grayscale, RGBA and 16-bit images ---------------------------------------------------------


def test_grayscale_rgba_and_16bit_images_load(tmp_path):
    mapper = FCOSDatasetMapper(mapper_cfg(), False)
    gray = write_png(tmp_path / "gray.png", np.full((64, 64), 100, np.uint8))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba = write_png(tmp_path / "rgba.png", rgba)
    deep = write_png(tmp_path / "deep.png", np.full((64, 64), 40000, np.uint16))
    images = {name: mapper(record(f, []))["image"] for name, f in
              [("gray", gray), ("rgba", rgba), ("deep", deep)]}
    assert all(img.shape == (3, 64, 64) for img in images.values())
    assert images["gray"].unique().tolist() == [100]
    assert images["rgba"][:, 0, 0].tolist() == [0, 0, 200]  # BGR
    assert images["deep"].unique().tolist() == [round(40000 * 255 / 65535)]  # 156, not 255


def test_float_images_are_refused_with_the_file_name(tmp_path):
    path = str(tmp_path / "float.tiff")
    Image.fromarray(np.zeros((64, 64), np.float32)).save(path)
    with pytest.raises(BadImageError, match="float.tiff.*image_id=7.*floating-point"):
        FCOSDatasetMapper(mapper_cfg(), True)(record(path, []))


# 6. missing or corrupt files ------------------------------------------------------------------


def test_missing_and_corrupt_files_name_the_file_and_record(tmp_path):
    mapper = FCOSDatasetMapper(mapper_cfg(), True)
    with pytest.raises(BadImageError, match=r"nothere\.png'.*image_id=7"):
        mapper(record(str(tmp_path / "nothere.png"), []))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(BadImageError, match=r"corrupt\.png'.*image_id=7"):
        mapper(record(str(corrupt), []))


def test_bad_images_can_be_skipped_with_a_log_line(tmp_path, caplog):
    mapper = FCOSDatasetMapper(mapper_cfg(**{"DATALOADER.SKIP_BAD_IMAGES": True}), True)
    with caplog.at_level(logging.WARNING):
        assert mapper(record(str(tmp_path / "nothere.png"), [])) is None
    assert "nothere.png" in caplog.text and "skipped" in caplog.text


# 7. class ids that do not fit the model -------------------------------------------------------


def test_class_count_mismatch_is_refused_before_training():
    cfg = tiny_cfg(num_classes=3)
    MetadataCatalog.get("five_class_set").set(thing_classes=list("abcde"))
    message = "'five_class_set' has 5 classes.*MODEL.FCOS.NUM_CLASSES is 3"
    with pytest.raises(ValueError, match=message):
        check_dataset_classes(cfg, ["five_class_set"], [])


def test_category_id_outside_num_classes_is_refused():
    cfg = tiny_cfg(num_classes=3)
    dicts = [record("a.png", [([0, 0, 5, 5], 1, 0)], image_id=1),
             record("b.png", [([0, 0, 5, 5], 3, 0)], image_id=2)]
    with pytest.raises(ValueError, match=r"category_id=3 in image_id=2 \(b.png\).*\[0, 3\)"):
        check_dataset_classes(cfg, [], dicts)


# 8. NaN / Inf losses --------------------------------------------------------------------------


def test_nan_loss_stops_training_naming_iteration_and_term(tmp_path):
    from detectron2.engine import SimpleTrainer

    model = build_model(tiny_cfg()).train()
    with torch.no_grad():
        model.head.ctrness.bias.fill_(float("nan"))
    data = iter(lambda: make_inputs([[[10, 10, 60, 50]], [[0, 0, 40, 40]]]), None)
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.0))
    with EventStorage(start_iter=3) as storage:
        trainer.storage = storage
        trainer.iter = 3
        with pytest.raises(FloatingPointError, match=r"iteration=3(.|\n)*'loss_fcos_ctr': .*nan"):
            trainer.run_step()


# 10. fine-tuning with another number of classes -----------------------------------------------


def test_checkpoint_with_other_class_count_skips_only_the_classifier(tmp_path, caplog):
    source = build_model(tiny_cfg(num_classes=5))
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("five")
    target = build_model(tiny_cfg(num_classes=3))
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(target).load(str(tmp_path / "five.pth"))
    assert "head.cls_logits.weight" in caplog.text and "head.cls_logits.bias" in caplog.text
    assert torch.equal(target.head.bbox_pred.weight, source.head.bbox_pred.weight)
    stem_weight = source.backbone.bottom_up.stem.conv1.weight
    assert torch.equal(target.backbone.bottom_up.stem.conv1.weight, stem_weight)
    assert target.head.cls_logits.weight.shape[0] == 3


# 11. unknown config keys ----------------------------------------------------------------------


def test_mistyped_config_key_is_an_error(tmp_path):
    cfg = get_cfg()
    add_fcos_config(cfg)
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  FCOS:\n    NUM_CLASES: 3\n")
    with pytest.raises(KeyError, match="MODEL.FCOS.NUM_CLASES"):
        cfg.merge_from_file(str(path))
    with pytest.raises((KeyError, AssertionError), match="MODEL.FCOS.CENTER_SAMPLING"):
        cfg.merge_from_list(["MODEL.FCOS.CENTER_SAMPLING", "True"])


# 9. resumption after SIGKILL ------------------------------------------------------------------


def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    import signal
    import subprocess
    import sys

    job = os.path.join(REPO, "tests", "engine", "resume_job.py")
    data = str(tmp_path / "data")

    def run(out, *extra):
        return subprocess.run(
            [sys.executable, job, data, str(out), *extra], capture_output=True, text=True,
            timeout=300,
        )

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run(tmp_path / "killed", "--kill-after", "4")
    assert killed.returncode == -signal.SIGKILL
    # iterations 0-4 ran; checkpoints after iterations 1 and 3 exist, none after 5
    assert os.path.exists(tmp_path / "killed" / "model_0000003.pth")
    assert not os.path.exists(tmp_path / "killed" / "model_final.pth")

    resumed = run(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "START_ITER 4" in resumed.stdout  # continues after the last checkpoint (iter 3)

    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=False)
    b = torch.load(tmp_path / "killed" / "model_final.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == 7
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["trainer"]["hooks"] == b["trainer"]["hooks"]  # LR scheduler state
    opt_a, opt_b = a["trainer"]["_trainer"]["optimizer"], b["trainer"]["_trainer"]["optimizer"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and len(opt_a["state"]) > 0
    for key in opt_a["state"]:
        buffer_a, buffer_b = (o["state"][key]["momentum_buffer"] for o in (opt_a, opt_b))
        assert torch.equal(buffer_a, buffer_b)
