"""What training puts into Detectron2's event storage (fcos_d2.modeling.visualize); the
curves of tools/plot_metrics.py: tests/tools/test_plot_metrics.py."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import make_inputs, tiny_cfg
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
