"""What training puts into Detectron2's event storage (fcos_d2.modeling.visualize) and
tools/plot_metrics.py."""
import json

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import load_script, make_inputs, tiny_cfg
from fcos_d2.modeling.visualize import NUM_POS_KEY, VIS_NAME, log_positive_locations


class RecordingStorage(EventStorage):
    """An EventStorage that also keeps what put_image received."""

    def __init__(self, start_iter=0):
        super().__init__(start_iter)
        self.images = []

    def put_image(self, img_name, img_tensor):
        self.images.append((img_name, img_tensor))
        super().put_image(img_name, img_tensor)


def test_positive_locations_per_image():
    labels = torch.tensor([[3, 0, 1, 3, -1], [2, 3, 3, 3, 3]])  # background 3, ignored -1
    with EventStorage() as storage:
        log_positive_locations(labels, background=3)
        assert storage.history(NUM_POS_KEY).latest() == pytest.approx((2 + 1) / 2)
    log_positive_locations(labels, background=3)  # no storage: nothing, no error


def tiny_model(vis_period=0):
    cfg = tiny_cfg()
    cfg.VIS_PERIOD = vis_period
    cfg.MODEL.FCOS.INFERENCE_TH_TRAIN = cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # random model
    torch.manual_seed(0)
    return build_model(cfg).train()


def test_training_forward_logs_the_assigners_positives(one_thread):
    model = tiny_model()
    inputs = make_inputs([[[10, 10, 60, 50]], [[5, 20, 40, 90], [50, 30, 120, 80]]])
    images = model.preprocess_image(inputs)
    predictions = model.predict(model.backbone(images.tensor), tuple(images.tensor.shape[-2:]))
    gt = [x["instances"] for x in inputs]
    labels, _ = model.target_assigner(
        predictions.locations, predictions.strides, [g.gt_boxes.tensor for g in gt],
        [g.gt_classes for g in gt], [None, None],
    )  # fmt: skip
    expected = ((labels >= 0) & (labels != 3)).sum().item() / 2
    assert expected > 0
    with EventStorage() as storage:
        model(inputs)
        assert storage.history(NUM_POS_KEY).latest() == pytest.approx(expected)


@pytest.mark.parametrize("vis_period, iteration, drawn", [(2, 4, True), (2, 3, False),
                                                            (0, 0, False)])
def test_vis_period_draws_ground_truth_over_detections(one_thread, vis_period, iteration,
                                                       drawn):
    model = tiny_model(vis_period)
    inputs = make_inputs([[[10, 10, 60, 50]], [[5, 20, 40, 90]]])
    with RecordingStorage(start_iter=iteration) as storage:
        model(inputs)
    if not drawn:
        assert storage.images == []
        return
    [(name, picture)] = storage.images
    assert name == VIS_NAME
    height, width = inputs[0]["image"].shape[-2:]
    assert picture.shape == (3, 2 * height, width) and picture.dtype == np.uint8
    image = inputs[0]["image"].numpy()[::-1].astype(np.uint8)  # BGR input -> RGB
    top, bottom = picture[:, :height], picture[:, height:]
    assert (top != image).any(axis=0)[10, 10:60].all()  # the ground-truth box is drawn
    assert not (top != image).any(axis=0)[30:40, 25:45].any()  # inside it, the image
    assert (bottom != image).any()  # some detections of the random model are drawn


def test_plot_metrics(tmp_path):
    plot_metrics = load_script("tools/plot_metrics.py")
    metrics = tmp_path / "metrics.json"
    lines = [{"iteration": i, "total_loss": 3 - i / 10, "loss_fcos_cls": 1 - i / 30,
              NUM_POS_KEY: 20 + i, "lr": 0.01} for i in range(0, 20, 2)]
    lines.append({"iteration": 19, "bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP75": 8.0})
    lines.append({"iteration": 4, "total_loss": 0.5})  # a resumed run repeats iteration 4
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = plot_metrics.read_metrics(str(metrics))
    assert records[4]["total_loss"] == 0.5
    assert records[4]["loss_fcos_cls"] == pytest.approx(1 - 4 / 30)
    assert plot_metrics.series(records, "bbox/AP") == ([19], [12.5])
    assert plot_metrics.loss_keys(records) == ["total_loss", "loss_fcos_cls"]
    png = tmp_path / "out" / "curves.png"
    assert plot_metrics.main([str(metrics), "--output", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size == (int(4.2 * 3 * 80), int(3.4 * 80))  # three panels
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        plot_metrics.read_metrics(str(tmp_path / "nope.json"))
