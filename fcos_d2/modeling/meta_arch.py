"""The one-stage FCOS detector as a Detectron2 meta-architecture."""
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.structures import ImageList, Instances

from .fold_bn import FoldedBatchNormCache
from .head import FCOSHead
from .inference import FCOSPostProcessor
from .losses import FCOSLosses
from .outputs import check_strides, fcos_losses, level_locations, per_level_predictions
from .targets import FCOSTargetAssigner

__all__ = ["FCOS"]

# Detectron2 >= 0.6 ships a LazyConfig-only FCOS under the same registry name; ours
# replaces it so that ``MODEL.META_ARCHITECTURE: "FCOS"`` builds this implementation.
META_ARCH_REGISTRY._obj_map.pop("FCOS", None)


@META_ARCH_REGISTRY.register()
class FCOS(nn.Module):
    """FCOS: backbone -> FCOS head on P3-P7 -> per-location targets / detections."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        strides: List[int],
        target_assigner: FCOSTargetAssigner,
        losses: FCOSLosses,
        postprocessor: FCOSPostProcessor,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        channels_last: bool = False,
        fold_bn_at_test: bool = False,
    ):
        """
        Args:
            backbone: gives at least the ``head_in_features`` maps.
            head: maps those features to per-level (logits, box distances, centerness).
            head_in_features: e.g. ["p3", "p4", "p5", "p6", "p7"].
            strides: stride of each of those features.
            target_assigner, losses, postprocessor: see their classes.
            pixel_mean, pixel_std: per-channel input normalisation.
            channels_last: keep conv weights and activations in NHWC memory format
                (faster convolutions on CPU; same results up to float rounding).
            fold_bn_at_test: at inference without autograd, run a copy of the backbone
                with its BatchNorms folded into the preceding convolutions
                (:func:`fcos_d2.modeling.fold_bn.fold_batchnorm`); same results up to
                float rounding. The copy is rebuilt when the weights change.
        """
        super().__init__()
        check_strides(backbone.output_shape(), head_in_features, strides)
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.strides = [int(s) for s in strides]
        self.target_assigner = target_assigner
        self.losses = losses
        self.postprocessor = postprocessor
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.fold_bn_at_test = fold_bn_at_test
        self._folded_backbone = FoldedBatchNormCache()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = cfg.MODEL.FCOS.IN_FEATURES
        check_strides(shapes, in_features, cfg.MODEL.FCOS.FPN_STRIDES)
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, [shapes[f] for f in in_features]),
            "head_in_features": in_features,
            "strides": cfg.MODEL.FCOS.FPN_STRIDES,
            "target_assigner": FCOSTargetAssigner(cfg),
            "losses": FCOSLosses(cfg),
            "postprocessor": FCOSPostProcessor(cfg, is_train=False),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": cfg.MODEL.FCOS.CHANNELS_LAST,
            "fold_bn_at_test": cfg.MODEL.FCOS.FOLD_BN_AT_TEST,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        if mode:
            self._folded_backbone.clear()  # stale once training changes the weights
        return super().train(mode)

    def inference_backbone(self) -> Backbone:
        """The backbone to run: its BatchNorm-folded copy at inference without autograd,
        except while tracing (export, FLOP counting), where the real one is recorded."""
        inference = not self.training and not torch.is_grad_enabled()
        if self.fold_bn_at_test and inference and not torch.jit.is_tracing():
            return self._folded_backbone.get(self.backbone)
        return self.backbone

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalise and pad the batch's images to one tensor."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        Args:
            batched_inputs: Detectron2's format: per image a dict with "image" (C, H, W),
                "instances" (training) and optionally "height"/"width" for the output size.
        Returns:
            training: dict of losses; inference: per image {"instances": Instances}.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.inference_backbone()(images.tensor)
        features = [features[f] for f in self.head_in_features]
        logits, box_dists, ctrness = self.head(features)
        locations = level_locations(features, self.strides)

        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return fcos_losses(
                self.target_assigner, self.losses, locations, logits, box_dists, ctrness,
                gt_instances,
            )

        results = self.postprocessor(
            locations,
            self.strides,
            *per_level_predictions(logits, box_dists, ctrness),
            images.image_sizes,
        )
        return self.postprocess_to_original(results, batched_inputs, images.image_sizes)

    @staticmethod
    def postprocess_to_original(
        results: List[Instances],
        batched_inputs: List[Dict[str, Tensor]],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        """Rescale detections to each image's requested output size, Detectron2's way."""
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
