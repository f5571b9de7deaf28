"""Test-time augmentation for the one-stage FCOS: multi-scale + horizontal flip, NMS-merged.

Configured by Detectron2's own keys: ``TEST.AUG.ENABLED`` (off by default),
``TEST.AUG.MIN_SIZES`` (short sides), ``TEST.AUG.MAX_SIZE`` and ``TEST.AUG.FLIP``.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from detectron2.modeling import DatasetMapperTTA, GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.structures import Instances

from .inference import FCOSPostProcessor, to_instances

__all__ = ["FCOSWithTTA", "with_tta", "maybe_add_tta"]


class FCOSWithTTA(nn.Module):
    """An FCOS detector that runs every image at several scales (and flipped), maps all
    detections back to the image's output size and merges them with class-aware NMS.

    Each augmented image is built from the input by Detectron2's ``DatasetMapperTTA``
    (``len(MIN_SIZES) * (2 if FLIP else 1)`` versions); the model's detections on it, in
    that image's coordinates, go through the inverse of its transforms (resize, flip);
    then ``batched_nms`` at ``MODEL.FCOS.NMS_TH`` and the ``POST_NMS_TOPK_TEST`` best.
    Same interface and output as :class:`~fcos_d2.modeling.FCOS` in eval mode.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        tta_mapper: Optional[DatasetMapperTTA] = None,
        batch_size: int = 4,
    ):
        """
        Args:
            cfg: a config with ``TEST.AUG.*`` and ``MODEL.FCOS.*``.
            model: the FCOS detector (in eval mode when called).
            tta_mapper: makes the augmented inputs; default ``DatasetMapperTTA(cfg)``.
            batch_size: augmented images per forward pass.
        """
        super().__init__()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        # The merge is the post-processor's last step (FCOSPostProcessor.final_detections):
        # clipping, dropping non-finite and empty boxes, class-aware NMS, top-k.
        self.merger = FCOSPostProcessor(
            nms_thresh=cfg.MODEL.FCOS.NMS_TH, post_nms_topk=cfg.MODEL.FCOS.POST_NMS_TOPK_TEST
        )

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Per image ``{"instances": Instances}`` at its "height" x "width" (or its size)."""
        if self.model.training:
            raise RuntimeError("FCOSWithTTA is for inference: call model.eval() first")
        return [{"instances": self.inference_one_image(x)} for x in batched_inputs]

    def inference_one_image(self, inputs: Dict) -> Instances:
        inputs = dict(inputs)
        inputs.setdefault("height", inputs["image"].shape[-2])
        inputs.setdefault("width", inputs["image"].shape[-1])
        out_size = (inputs["height"], inputs["width"])
        augmented = self.tta_mapper(inputs)
        boxes, scores, classes = [], [], []
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start: start + self.batch_size]
            for aug, result in zip(chunk, self.detect_in_input_coordinates(chunk)):
                pred = result.pred_boxes.tensor.detach().cpu().numpy()
                original = aug["transforms"].inverse().apply_box(pred)
                boxes.append(torch.as_tensor(original, dtype=torch.float32))
                scores.append(result.scores)
                classes.append(result.pred_classes)
        return self.merge(torch.cat(boxes), torch.cat(scores), torch.cat(classes), out_size)

    def detect_in_input_coordinates(self, augmented: List[Dict]) -> List[Instances]:
        """The model's detections on each augmented image, in that image's coordinates."""
        inputs = []
        for aug in augmented:
            height, width = aug["image"].shape[-2:]
            inputs.append({"image": aug["image"], "height": height, "width": width})
        with torch.no_grad():
            return [out["instances"].to("cpu") for out in self.model(inputs)]

    def merge(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, image_size
    ) -> Instances:
        """Class-aware NMS over the detections of all augmentations (clipped to the image,
        empty boxes dropped)."""
        merged = self.merger.final_detections(boxes, scores, classes, image_size)
        return to_instances(*merged, image_size)


def with_tta(cfg, model: nn.Module) -> nn.Module:
    """``model`` with test-time augmentation: :class:`FCOSWithTTA`, or Detectron2's
    ``GeneralizedRCNNWithTTA`` for a two-stage model (e.g. with FCOS proposals)."""
    if isinstance(model, GeneralizedRCNN):
        return GeneralizedRCNNWithTTA(cfg, model)
    return FCOSWithTTA(cfg, model)


def maybe_add_tta(cfg, model: nn.Module) -> nn.Module:
    """:func:`with_tta` when ``TEST.AUG.ENABLED``, otherwise ``model`` itself."""
    return with_tta(cfg, model) if cfg.TEST.AUG.ENABLED else model
