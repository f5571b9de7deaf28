"""The benchmarked detectors: fcos_d2's FCOS (as configured by default and with each speed-up
off), its two-stage use, Detectron2's RetinaNet and Faster R-CNN and torchvision's FCOS, all
ResNet-50-FPN with random weights (stem and first stage frozen, three trainable stages,
FrozenBatchNorm throughout the ResNet, its statistics calibrated on random images), each at
float32 or under autocast.

Under autocast, fcos_d2's FCOS is built with its own config keys (``TEST.AMP`` and
``SOLVER.AMP`` with the same ``PRECISION``: the model runs its network under autocast,
its targets, losses and post-processing in float32); every other model is wrapped in a
plain ``torch.autocast`` (:func:`precision_context`).
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn
from torchvision.models.detection import FCOS as TorchvisionFCOSModel
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import fcos_d2
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d as D2FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHVISION_FCOS = "FCOS (torchvision)"
BASELINES = (TORCHVISION_FCOS, "RetinaNet (D2)", "Faster R-CNN (D2)")
# the same network as "FCOS", run the way Detectron2 runs its own models
PLAIN_FCOS = "FCOS (NCHW, BN not folded)"
# not run by default: each speed-up alone, and NHWC in both modes
OPTIONAL_FCOS = (
    "FCOS (NHWC, BN not folded)", "FCOS (NCHW, BN folded)", "FCOS (NHWC, BN folded)"
)
D2_MODELS = ("FCOS", PLAIN_FCOS, *OPTIONAL_FCOS, "FCOS-RPN Faster R-CNN", *BASELINES[1:])
MODELS = (*D2_MODELS, TORCHVISION_FCOS)
DEFAULT_MODELS = tuple(name for name in MODELS if name not in OPTIONAL_FCOS)
PRECISIONS = ("fp32", "amp")


@dataclass(frozen=True)
class Variant:
    """One benchmarked model at one precision: "fp32", or "amp" (autocast to ``dtype``)."""

    model: str
    precision: str
    dtype: Optional[torch.dtype] = None  # the autocast dtype of "amp"

    @property
    def label(self) -> str:
        return f"{self.model} [{self.precision}]"


def default_amp_dtype(device: str) -> torch.dtype:
    """bfloat16 on CPUs (AMX / AVX-512 units), float16 on CUDA (tensor cores)."""
    return torch.float16 if device.startswith("cuda") else torch.bfloat16


def variants(names: List[str], precisions: List[str], amp_dtype: torch.dtype) -> List[Variant]:
    """Every model at every precision, models first."""
    return [
        Variant(name, p, amp_dtype if p == "amp" else None) for name in names for p in precisions
    ]


def d2_model_zoo_file(name: str) -> str:
    import detectron2.model_zoo

    return os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs", name)


def _precision_name(dtype: Optional[torch.dtype]) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def model_configs(device: str, amp_dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """The Detectron2 detectors' configs, ResNet-50-FPN, 80 classes, no weights; fcos_d2's
    FCOS with ``TEST.AMP`` / ``SOLVER.AMP`` on for ``amp_dtype`` (None: float32)."""

    def make(path: str):
        cfg = fcos_d2.setup_cfg(path, freeze=False)
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RESNETS.DEPTH = 50
        # FrozenBatchNorm everywhere in the ResNet, as when training from ImageNet or
        # COCO weights (Detectron2's default; torchvision's FCOS with weights); its
        # statistics come from calibrate_frozen_batchnorm.
        cfg.MODEL.RESNETS.NORM = "FrozenBN"
        return cfg

    def fcos(memory_format: str = "auto", fold_bn: bool = True):
        # The same network with or without fcos_d2's speed-ups; "auto" is the default:
        # per mode the faster format on this machine (fcos_d2/modeling/execution.py).
        cfg = make(os.path.join(ROOT, "configs/COCO-Detection/FCOS_R_50_1x.yaml"))
        cfg.MODEL.FCOS.MEMORY_FORMAT = memory_format
        cfg.MODEL.FCOS.FOLD_BN_AT_TEST = fold_bn
        cfg.MODEL.FCOS.FOLD_FROZEN_BN = fold_bn
        for node in (cfg.TEST.AMP, cfg.SOLVER.AMP):
            node.ENABLED = amp_dtype is not None
            node.PRECISION = _precision_name(amp_dtype) if amp_dtype is not None else "auto"
        return cfg

    return {
        "FCOS": fcos(),
        PLAIN_FCOS: fcos("nchw", fold_bn=False),
        OPTIONAL_FCOS[0]: fcos("nhwc", fold_bn=False),
        OPTIONAL_FCOS[1]: fcos("nchw"),
        OPTIONAL_FCOS[2]: fcos("nhwc"),
        "FCOS-RPN Faster R-CNN": make(
            os.path.join(ROOT, "configs/FCOS-RPN/faster_rcnn_R_50_FPN_1x.yaml")
        ),
        "RetinaNet (D2)": make(d2_model_zoo_file("Base-RetinaNet.yaml")),
        "Faster R-CNN (D2)": make(d2_model_zoo_file("Base-RCNN-FPN.yaml")),
    }


def amp_by_config(name: str) -> bool:
    """Whether the model runs autocast itself from its config (fcos_d2's one-stage FCOS)."""
    return name == "FCOS" or name == PLAIN_FCOS or name in OPTIONAL_FCOS


def precision_context(variant: Variant, device: str):
    """What the benchmark wraps a model's forward in: a plain ``torch.autocast`` for an
    "amp" variant of a model that does not autocast itself, else nothing."""
    if variant.dtype is None or amp_by_config(variant.model):
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=variant.dtype)


def build_torchvision_fcos(device: str) -> nn.Module:
    """torchvision's FCOS with the backbone of the Detectron2 models here: ResNet-50-FPN
    (P3-P5 + P6/P7 from P5), random weights, FrozenBatchNorm throughout the ResNet, stem
    and first stage frozen, three trainable stages, 80 classes -- what
    ``fcos_resnet50_fpn`` builds when given weights.

    ``fcos_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=3)``
    is not this: without weights it makes every BatchNorm trainable and, with a warning,
    every stage trainable (5), so it is assembled from the same public parts here.
    """
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
        trainable_layers=3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256),
    )
    return TorchvisionDetector(TorchvisionFCOSModel(backbone, num_classes=80)).to(device)


class TorchvisionDetector(nn.Module):
    """Detectron2-format inputs in, for a torchvision detector.

    Images go in as the same pixels (0-255 -> 0-1 for torchvision's normalisation), and
    its transform's resize target is set to each batch's own size, so it resizes nothing
    (its interpolation at scale 1 copies the pixels). Returns torchvision's outputs: the
    loss dict in training, per image ``{"boxes", "scores", "labels"}`` at inference.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def torchvision_inputs(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Images (0-1) and, in training, targets; the transform set to keep the size."""
        images = [x["image"] / 255.0 for x in batched_inputs]
        height = max(im.shape[-2] for im in images)
        width = max(im.shape[-1] for im in images)
        self.model.transform.min_size = (min(height, width),)
        self.model.transform.max_size = max(height, width)
        if not self.training:
            return images, None
        targets = [
            {"boxes": x["instances"].gt_boxes.tensor, "labels": x["instances"].gt_classes}
            for x in batched_inputs
        ]
        return images, targets

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images, targets = self.torchvision_inputs(batched_inputs)
        return self.model(images, targets)


def build_models(chosen: List[Variant], device: str) -> Dict[Variant, nn.Module]:
    """The variants' models in inference mode, each from torch seed 0 (so the two
    precisions of one model have the same weights)."""
    configs = {None: model_configs(device)}
    calibration = random_images(2, 256, 320, device, with_boxes=False, seed=1)
    models = {}
    for variant in chosen:
        torch.manual_seed(0)
        if variant.model == TORCHVISION_FCOS:
            model = build_torchvision_fcos(device).eval()
            images = model.model.transform(model.torchvision_inputs(calibration)[0])[0]
            calibrate_frozen_batchnorm(model.model.backbone, images.tensors)
        else:
            dtype = variant.dtype if amp_by_config(variant.model) else None
            if dtype not in configs:
                configs[dtype] = model_configs(device, dtype)
            model = build_model(configs[dtype][variant.model]).eval()
            calibrate_frozen_batchnorm(model.backbone, model.preprocess_image(calibration).tensor)
        models[variant] = model
    return models


@torch.no_grad()
def calibrate_frozen_batchnorm(backbone: nn.Module, images: torch.Tensor) -> int:
    """Give each FrozenBatchNorm of a randomly initialised ``backbone`` the mean and
    variance of its input on ``images``, layer after layer in one float32 forward, as
    pretrained statistics would: every normalised map then has zero mean and unit
    variance, where identity statistics would let 50 random layers blow the activations
    up (and detectors' boxes overflow). Returns the number of norms calibrated."""

    def calibrate(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        scale = torch.rsqrt(var + norm.eps) * norm.weight
        return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    handles = []
    for module in backbone.modules():
        if isinstance(module, FrozenBatchNorm2d):  # torchvision's: called as a module
            handles.append(module.register_forward_hook(
                lambda norm, args, out: calibrate(norm, args[0])))
        elif isinstance(module, D2Conv2d) and isinstance(module.norm, D2FrozenBatchNorm2d):
            # Detectron2's: maybe never called (folded into the kernel), but fresh ones
            # are the identity, so the convolution's output is the norm's input
            assert module.activation is None, "calibration needs the norm's raw output"
            handles.append(module.register_forward_hook(
                lambda conv, args, out: calibrate(conv.norm, out)))
    backbone(images)
    for handle in handles:
        handle.remove()
    return len(handles)


def random_images(n: int, height: int, width: int, device: str, with_boxes: bool, seed: int = 0):
    """Detectron2 inputs: random 0-255 images, with 8 random boxes each for training."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(n):
        item = {"image": (torch.rand(3, height, width, generator=gen) * 255).to(device)}
        if with_boxes:
            xy = torch.rand(8, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
            wh = torch.rand(8, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3]) + 16
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
            inst.gt_classes = torch.randint(0, 80, (8,), generator=gen)
            item["instances"] = inst.to(device)
        inputs.append(item)
    return inputs


class TensorOutputs(torch.nn.Module):
    """Image tensor in, detection tensors out: what fvcore's tracer can follow."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([{"image": image}])[0]
        if "instances" not in out:  # torchvision
            return out["boxes"], out["scores"], out["labels"]
        inst = out["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes
