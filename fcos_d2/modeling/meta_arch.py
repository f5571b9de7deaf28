"""The one-stage FCOS detector as a Detectron2 meta-architecture."""
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, ImageList, Instances

from .deprecation import renamed_argument
from .fold_bn import FoldedBatchNormCache, fold_frozen_batchnorm_per_forward
from .head import FCOSHead
from .inference import FCOSPostProcessor, rescale_boxes
from .losses import FCOSLosses
from .execution import ExecutionPolicy, autocast
from .pipeline import FCOSPipeline, check_strides
from .targets import FCOSTargetAssigner
from .visualize import should_visualize, visualize_training

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(FCOSPipeline):
    """FCOS: backbone -> FCOS head on P3-P7 -> per-location targets / detections.

    The steps after the backbone are :class:`~fcos_d2.modeling.pipeline.FCOSPipeline`'s,
    shared with the FCOS proposal generator, the exported graph and TTA.

    ``MODEL.META_ARCHITECTURE: "FCOS"`` builds this class: Detectron2's registry names it
    after the class, as it does ``RetinaNet``. It is not Detectron2's own, unregistered
    ``detectron2.modeling.meta_arch.fcos.FCOS`` (a LazyConfig-only model), and
    ``PROPOSAL_GENERATOR.NAME: "FCOS"`` builds
    :class:`~fcos_d2.modeling.FCOSProposalGenerator` instead.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: torch.nn.Module,
        head_in_features: List[str],
        target_assigner: FCOSTargetAssigner,
        losses: FCOSLosses,
        postprocessor: FCOSPostProcessor,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        channels_last: Union[bool, Tuple[bool, bool]] = False,
        precision: Tuple[Optional[torch.dtype], Optional[torch.dtype]] = (None, None),
        fold_bn_at_test: bool = False,
        fold_frozen_bn: bool = False,
        location_offset: float = 0.5,
        spacing_from_input: bool = False,
        remove_empty_boxes: bool = True,
        vis_period: int = 0,
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone: gives at least the ``head_in_features`` maps; their strides are
                read from its ``output_shape()``.
            head: maps those features to per-level (logits, box distances, centerness).
            head_in_features: e.g. ["p3", "p4", "p5", "p6", "p7"].
            target_assigner, losses, postprocessor: see their classes.
            pixel_mean, pixel_std: per-channel input normalisation.
            channels_last: (in training, at inference), or one bool for both: keep conv
                weights and activations in NHWC memory format in that mode (same results
                up to float rounding; see :mod:`fcos_d2.modeling.execution` for which is
                faster where).
            precision: (in training, at inference) the dtype the backbone and head run
                in under autocast (``torch.float16`` / ``torch.bfloat16``), None for
                float32 (``SOLVER.AMP`` / ``TEST.AMP``, see
                :mod:`fcos_d2.modeling.execution`); targets, losses and post-processing
                compute in float32 either way.
            fold_bn_at_test: in inference mode, run a copy of the backbone
                with its BatchNorms folded into the preceding convolutions
                (:func:`fcos_d2.modeling.fold_bn.fold_batchnorm`); same results up to
                float rounding. The copy is rebuilt when the weights change.
            fold_frozen_bn: apply every FrozenBatchNorm of the backbone by scaling its
                convolution's kernel at each forward, training included
                (:class:`fcos_d2.modeling.fold_bn.FrozenBatchNormFoldedConv2d`): the same
                function and checkpoint keys, one pass over those feature maps less in
                forward and in backward.
            location_offset, spacing_from_input: where the locations sit (see
                :class:`FCOSPipeline`).
            remove_empty_boxes: drop detections whose box is empty after clipping (in
                the post-processor and when rescaling to the output size, as Detectron2's
                ``detector_postprocess``); False keeps them, as torchvision.
            vis_period, input_format: ``VIS_PERIOD`` (0: never) and ``INPUT.FORMAT``: in a
                trainer, every ``vis_period`` iterations one image with its ground truth
                and top detections goes to the event storage (TensorBoard).
        """
        super().__init__(
            head=head,
            in_features=head_in_features,
            strides=check_strides(backbone.output_shape(), head_in_features, None),
            target_assigner=target_assigner,
            losses=losses,
            postprocessor=postprocessor,
            location_offset=location_offset,
            spacing_from_input=spacing_from_input,
        )
        if fold_frozen_bn:
            fold_frozen_batchnorm_per_forward(backbone)
        self.backbone = backbone
        self.remove_empty_boxes = remove_empty_boxes
        self.vis_period = vis_period  # draw ground truth and detections every N iterations
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if isinstance(channels_last, bool):
            channels_last = (channels_last, channels_last)
        self.channels_last_modes = tuple(bool(x) for x in channels_last)
        self.precision = tuple(precision)
        self.fold_bn_at_test = fold_bn_at_test
        self._folded_backbone = FoldedBatchNormCache()
        self._apply_memory_format()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        policy = ExecutionPolicy.from_config(cfg)
        in_features = cfg.MODEL.FCOS.IN_FEATURES
        check_strides(shapes, in_features, cfg.MODEL.FCOS.FPN_STRIDES)
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, [shapes[f] for f in in_features]),
            "head_in_features": in_features,
            "target_assigner": FCOSTargetAssigner(cfg),
            "losses": FCOSLosses(cfg),
            "postprocessor": FCOSPostProcessor(cfg, is_train=False),
            "location_offset": cfg.MODEL.FCOS.LOCATION_OFFSET,
            "spacing_from_input": cfg.MODEL.FCOS.SPACING_FROM_INPUT,
            "remove_empty_boxes": cfg.MODEL.FCOS.REMOVE_EMPTY_BOXES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": policy.channels_last,
            "precision": policy.precision,
            "fold_bn_at_test": cfg.MODEL.FCOS.FOLD_BN_AT_TEST,
            "fold_frozen_bn": cfg.MODEL.FCOS.FOLD_FROZEN_BN,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def head_in_features(self) -> List[str]:
        return self.in_features

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def channels_last(self) -> bool:
        """Whether the current mode (training or inference) runs in NHWC."""
        return self.channels_last_modes[0 if self.training else 1]

    def train(self, mode: bool = True):
        if mode:
            self._folded_backbone.clear()  # stale once training changes the weights
        super().train(mode)
        self._apply_memory_format()
        return self

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype the network runs in under autocast in the current mode (None: float32)."""
        return self.precision[0 if self.training else 1]

    def _apply_memory_format(self) -> None:
        """Lay the conv weights out for the current mode (a no-op when they already are)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        weight = next((p for p in self.parameters() if p.dim() == 4), None)
        if weight is not None and not weight.is_contiguous(memory_format=memory_format):
            self.to(memory_format=memory_format)

    def inference_backbone(self) -> Backbone:
        """The backbone to run: its BatchNorm-folded copy in inference mode, except
        while tracing (export, FLOP counting), where the real one is recorded."""
        if self.fold_bn_at_test and not self.training and not torch.jit.is_tracing():
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
            Scripted (``torch.jit.script``, inference only): per image the Instances in
            the input image's coordinates, as Detectron2's scripted dense detectors.
        """
        images = self.preprocess_image(batched_inputs)
        input_size = (images.tensor.shape[-2], images.tensor.shape[-1])
        if torch.jit.is_scripting():
            # TorchScript has no autocast region: float32; the module's own backbone (the
            # BatchNorm-folded copy is no submodule, as while tracing); no rescaling
            predictions = self.predict(self.backbone(images.tensor), input_size)
            return self.detect(predictions, images.image_sizes)
        with autocast(self.device, self.autocast_dtype):  # the network; float32 after it
            features = self.inference_backbone()(images.tensor)
            predictions = self.predict(features, input_size)
        if self.training:
            return self.forward_training(predictions, batched_inputs)
        return self.forward_inference(predictions, images.image_sizes, batched_inputs)

    def forward_training(self, predictions, batched_inputs) -> Dict[str, Tensor]:
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        if should_visualize(self.vis_period):
            visualize_training(self, predictions, batched_inputs, self.input_format)
        return self.losses_of(predictions, gt_instances)

    def forward_inference(
        self, predictions, image_sizes: List[Tuple[int, int]], batched_inputs
    ) -> List[Dict[str, Instances]]:
        """Detections rescaled to each image's requested size; ``image_sizes``: the
        images' sizes before padding (the raw exported graph's outputs go through here)."""
        results = self.detect(predictions, image_sizes)
        return self.postprocess_to_original(
            results, batched_inputs, image_sizes, remove_empty_boxes=self.remove_empty_boxes
        )

    @staticmethod
    def postprocess_to_original(
        results: List[Instances],
        batched_inputs: List[Dict[str, Tensor]],
        image_sizes: List[Tuple[int, int]],
        remove_empty_boxes: bool = True,
        **renamed,
    ) -> List[Dict[str, Instances]]:
        """Rescale detections to each image's requested output size ("height"/"width",
        default: unchanged), Detectron2's way (``detector_postprocess``: scale, clip, drop
        empty boxes; :func:`~fcos_d2.modeling.inference.rescale_boxes`);
        ``remove_empty_boxes=False`` keeps the empty boxes (its deprecated form:
        ``keep_empty=True``)."""
        remove_empty_boxes = renamed_argument(
            "FCOS.postprocess_to_original", renamed, "keep_empty", "remove_empty_boxes",
            remove_empty_boxes, invert=True,
        )
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, image_sizes):
            size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            boxes, keep = rescale_boxes(
                result.pred_boxes.tensor, result.image_size, size, remove_empty_boxes
            )
            rescaled = Instances(size, **result.get_fields())
            rescaled.pred_boxes = Boxes(boxes)
            processed.append({"instances": rescaled[keep]})
        return processed
