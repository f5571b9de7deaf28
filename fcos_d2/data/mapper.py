"""Detectron2's DatasetMapper with FCOS's needs: crowd boxes kept, bad records named."""
import logging
from typing import Any, Dict

import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

__all__ = ["FCOSDatasetMapper", "BadImageError"]

logger = logging.getLogger(__name__)


class BadImageError(RuntimeError):
    """An image of the dataset cannot be read; the message names the file and record."""


class FCOSDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that

    * keeps crowd annotations (``iscrowd=1``) as instances flagged ``gt_is_crowd``, so
      the FCOS target assigner can ignore locations inside them (``keep_crowd``);
    * drops boxes that are empty after clipping to the image, counting them in the log;
    * turns an unreadable image into a :class:`BadImageError` naming the file and the
      record's ``image_id``.
    """

    @configurable
    def __init__(self, is_train: bool, *, keep_crowd: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.keep_crowd = keep_crowd
        self.num_dropped_boxes = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        args["keep_crowd"] = cfg.MODEL.META_ARCHITECTURE == "FCOS"
        return args

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises on bad files
            if "file_name" not in dataset_dict or isinstance(e, BadImageError):
                raise
            raise BadImageError(
                f"Cannot read image {dataset_dict['file_name']!r} "
                f"(dataset record image_id={dataset_dict.get('image_id')}): {e}"
            ) from e

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        for anno in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in dataset_dict.pop("annotations")
            if self.keep_crowd or obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        if self.keep_crowd:
            instances.gt_is_crowd = torch.tensor(
                [bool(obj.get("iscrowd", 0)) for obj in annos], dtype=torch.bool
            )
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances, kept = utils.filter_empty_instances(instances, return_mask=True)
        dropped = int((~kept).sum())
        if dropped:
            self.num_dropped_boxes += dropped
            logger.warning(
                "Dropped %d empty or degenerate box(es) of image_id=%s (%d so far in this worker)",
                dropped, dataset_dict.get("image_id"), self.num_dropped_boxes,
            )
        dataset_dict["instances"] = instances
