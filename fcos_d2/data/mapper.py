"""Detectron2's DatasetMapper with FCOS's needs: crowd boxes kept, bad records named."""
import copy
import logging
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = ["FCOSDatasetMapper", "BadImageError", "read_image"]

logger = logging.getLogger(__name__)


class BadImageError(RuntimeError):
    """An image of the dataset cannot be read; the message names the file and record."""


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Like Detectron2's ``read_image``, for 8-bit images of any channel layout
    (grayscale, RGB, RGBA, palette) and also 16-bit ones, which are scaled to 8 bits
    (Pillow's own conversion would clip them at 255). Float images are refused."""
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        image.load()
    if image.mode in _HIGH_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise ValueError("floating-point images are not supported; store 8- or 16-bit images")
    return utils.convert_PIL_to_numpy(image, format)


def _has_positive_size(annotation: Dict[str, Any]) -> bool:
    x0, y0, x1, y1 = BoxMode.convert(
        list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS
    )
    return x1 > x0 and y1 > y0


class FCOSDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that

    * keeps crowd annotations (``iscrowd=1``) as instances flagged ``gt_is_crowd``, so
      the FCOS target assigner can ignore locations inside them (``keep_crowd``);
    * drops boxes that are empty after clipping to the image, counting them in the log;
    * reads grayscale, RGBA and 16-bit images (:func:`read_image`);
    * turns an unreadable image into a :class:`BadImageError` naming the file and the
      record's ``image_id`` -- or, with ``skip_bad_images`` (training only), logs it and
      returns None, so Detectron2's loader takes another image.
    """

    @configurable
    def __init__(
        self, is_train: bool, *, keep_crowd: bool = False, skip_bad_images: bool = False, **kwargs
    ):
        super().__init__(is_train, **kwargs)
        self.keep_crowd = keep_crowd
        self.skip_bad_images = skip_bad_images and is_train
        self.num_dropped_boxes = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        args["keep_crowd"] = cfg.MODEL.META_ARCHITECTURE == "FCOS"
        args["skip_bad_images"] = cfg.DATALOADER.SKIP_BAD_IMAGES
        return args

    def load_image(self, dataset_dict: Dict[str, Any]) -> Optional[np.ndarray]:
        """The record's image, or None when it is bad and ``skip_bad_images`` is set."""
        try:
            image = read_image(dataset_dict["file_name"], format=self.image_format)
            utils.check_image_size(dataset_dict, image)
            return image
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises on bad files
            message = (
                f"Cannot read image {dataset_dict['file_name']!r} "
                f"(dataset record image_id={dataset_dict.get('image_id')}): {e}"
            )
            if self.skip_bad_images:
                logger.warning("%s -- skipped (DATALOADER.SKIP_BAD_IMAGES)", message)
                return None
            raise BadImageError(message) from e

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = self.load_image(dataset_dict)
        if image is None:
            return None
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        for anno in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        annos = [
            obj for obj in dataset_dict.pop("annotations")
            if self.keep_crowd or obj.get("iscrowd", 0) == 0
        ]
        # Boxes of zero or negative size are dropped before the transforms (which would
        # otherwise turn an inverted box into a valid one).
        proper = [_has_positive_size(obj) for obj in annos]
        dropped = proper.count(False)
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj, ok in zip(annos, proper)
            if ok
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
        dropped += int((~kept).sum())  # and those empty once clipped to the image
        if dropped:
            self.num_dropped_boxes += dropped
            logger.warning(
                "Dropped %d empty or degenerate box(es) of image_id=%s (%d so far in this worker)",
                dropped, dataset_dict.get("image_id"), self.num_dropped_boxes,
            )
        dataset_dict["instances"] = instances
