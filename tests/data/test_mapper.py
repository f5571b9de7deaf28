"""The dataset mapper (fcos_d2.data.mapper) on bad input: empty, crowd-only, degenerate
and outside boxes, grayscale, RGBA, 16-bit and float images, missing and corrupt files."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.modeling import build_model

from helpers import dataset_record as record
from helpers import tiny_cfg
from fcos_d2.data.mapper import BadImageError, FCOSDatasetMapper


def write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


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


# 2. boxes outside the image -----------------------------------------------------------------


def test_boxes_outside_the_image_are_clipped_or_dropped(rgb_png, seeded):
    mapper = FCOSDatasetMapper(mapper_cfg(), True)
    out = mapper(record(rgb_png, [([-10, -20, 30, 40], 0, 0), ([70, 70, 90, 90], 1, 0)]))
    assert out["instances"].gt_boxes.tensor.tolist() == [[0, 0, 30, 40]]
    model = build_model(tiny_cfg()).train()
    losses = model([out, out])
    assert all(torch.isfinite(v) for v in losses.values())


# 3. grayscale, RGBA and 16-bit images ---------------------------------------------------------


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


# 4. missing or corrupt files ------------------------------------------------------------------


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
