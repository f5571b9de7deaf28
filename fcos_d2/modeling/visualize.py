"""What training shows in Detectron2's event storage (metrics.json, TensorBoard).

* :func:`log_positive_locations`: the positive locations per image of each iteration,
  as the scalar ``num_pos_anchors`` (the name Detectron2's FCOS and RetinaNet log);
* :func:`visualize_training`: every ``VIS_PERIOD`` iterations, one training image with
  its ground-truth boxes (top) and the model's 20 highest-scoring detections (bottom),
  as Detectron2's dense detectors draw them.

Both do nothing outside a Detectron2 trainer (no event storage), e.g. in a plain
``model(batched_inputs)`` call.
"""
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage, get_event_storage

__all__ = [
    "NUM_POS_KEY",
    "VIS_NAME",
    "current_storage",
    "log_positive_locations",
    "should_visualize",
    "training_image",
    "visualize_training",
]

#: The event-storage scalar of the positive locations per image.
NUM_POS_KEY = "num_pos_anchors"
#: The name of the training pictures in TensorBoard.
VIS_NAME = "Top: GT bounding boxes; Bottom: 20 Highest Scoring Results"
MAX_VIS_BOXES = 20


def current_storage() -> Optional[EventStorage]:
    """The trainer's event storage, or None outside a ``with EventStorage()`` block."""
    try:
        return get_event_storage()
    except AssertionError:  # Detectron2's way of saying there is none
        return None


def log_positive_locations(labels: Tensor, background: int) -> None:
    """Put the mean number of positive locations per image into the event storage.

    Args:
        labels: (N, R) assigned labels of N images' locations (``background`` for the
            background, -1 for ignored ones), from :class:`FCOSTargetAssigner`.
        background: the background label (the number of classes).
    """
    storage = current_storage()
    if storage is None:
        return
    positive = (labels >= 0) & (labels != background)
    storage.put_scalar(NUM_POS_KEY, positive.sum().item() / max(labels.shape[0], 1))


def should_visualize(vis_period: int) -> bool:
    """Whether this iteration draws (``VIS_PERIOD`` > 0, in a trainer, iteration % period)."""
    if vis_period <= 0:
        return False
    storage = current_storage()
    return storage is not None and storage.iter % vis_period == 0


def training_image(
    batched_input: Dict[str, Tensor], detections: Instances, input_format: str
) -> np.ndarray:
    """(3, 2H, W) uint8 RGB: the input image with its ground-truth boxes above the same
    image with the ``MAX_VIS_BOXES`` highest-scoring detections (both at input size)."""
    from detectron2.utils.visualizer import Visualizer

    image = convert_image_to_rgb(batched_input["image"].permute(1, 2, 0), input_format)
    gt_boxes = batched_input["instances"].gt_boxes.tensor.detach().cpu().numpy()
    ground_truth = Visualizer(image, None).overlay_instances(boxes=gt_boxes).get_image()
    order = detections.scores.argsort(descending=True)[:MAX_VIS_BOXES]
    boxes = detections.pred_boxes.tensor[order].detach().cpu().numpy()
    predicted = Visualizer(image, None).overlay_instances(boxes=boxes).get_image()
    return np.vstack((ground_truth, predicted)).transpose(2, 0, 1)


def visualize_training(model, predictions, batched_inputs: List[Dict], input_format: str):
    """Draw the first image of the batch (ground truth, top detections) into the event
    storage as ``VIS_NAME``. ``model`` is an :class:`FCOSPipeline` (its ``detect``);
    ``predictions`` its ``predict`` output for the batch."""
    storage = current_storage()
    if storage is None:
        return
    sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
    with torch.no_grad():
        detections = model.detect(predictions, sizes)[0]
    storage.put_image(VIS_NAME, training_image(batched_inputs[0], detections, input_format))
