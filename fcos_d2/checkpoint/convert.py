"""Convert FCOS checkpoints of the reference implementations to fcos_d2's module names.

Sources:

* ``"adelaidet"`` -- AdelaiDet (aim-uofa/AdelaiDet), Detectron2-based: a
  ``OneStageDetector`` whose backbone already has Detectron2's names, and whose FCOS is a
  proposal generator: ``proposal_generator.fcos_head.{cls,bbox,share}_tower.<i>``,
  ``.cls_logits``, ``.bbox_pred``, ``.ctrness``, ``.scales.<l>.scale``.
* ``"maskrcnn_benchmark"`` -- the original FCOS code (tianzhi0549/FCOS, ``fcos_core``):
  ``backbone.body.{stem,layer1..4}`` (ResNet with ``bn<i>`` / ``downsample``),
  ``backbone.fpn.fpn_inner<k>`` / ``fpn_layer<k>`` (k = 2, 3, 4 for C3, C4, C5 in the
  P3-P7 "RETINANET" FPN: its stage list starts at C2 with 0 channels, which is skipped),
  ``backbone.fpn.top_blocks.p6/p7`` and ``rpn.head.*`` (``centerness`` for ``ctrness``).
* ``"torchvision"`` -- ``torchvision.models.detection.fcos_resnet50_fpn``'s
  ``state_dict()``: ``backbone.body.{conv1,bn1,layer1..4}`` (torchvision's ResNet),
  ``backbone.fpn.inner_blocks.<k>`` / ``layer_blocks.<k>`` (k = 0, 1, 2 for C3, C4, C5;
  ``.0.`` inside since torchvision 0.13, absent in older files),
  ``backbone.fpn.extra_blocks.p6/p7`` and ``head.classification_head.{conv,cls_logits}``,
  ``head.regression_head.{conv,bbox_reg,bbox_ctrness}``. Its classifier has one output
  per COCO category id (91: id 0 and the unused ids included); by default the 80 real
  classes are kept in Detectron2's contiguous order (``COCO_CATEGORIES``).

In all three, a head tower is one ``nn.Sequential`` interleaving conv, norm and ReLU (convs at
0, 3, 6, 9 and norms at 1, 4, 7, 10 with a norm; convs at 0, 2, 4, 6 without); AdelaiDet's
BatchNorm towers hold one BatchNorm per level at the norm's index (``<i>.<level>.*``).
fcos_d2 keeps them apart: ``head.cls_tower.convs.<k>`` and ``head.cls_tower.norms.<level or
0>.<k>`` (``box_tower`` for ``bbox_tower``).

The result loads into ``fcos_d2.modeling.FCOS`` (``MODEL.META_ARCHITECTURE: "FCOS"``) with
the config that :attr:`ConversionSummary.hints` suggests.
"""
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SOURCES",
    "ConversionError",
    "ConversionSummary",
    "coco_contiguous_category_ids",
    "convert_reference_checkpoint",
    "load_reference_checkpoint",
    "save_converted_checkpoint",
]

SOURCES = ("adelaidet", "maskrcnn_benchmark", "torchvision")

# Summary groups, in display order.
G_RESNET = "backbone.bottom_up (ResNet)"
G_FPN = "backbone FPN (lateral + output convs)"
G_TOP = "backbone.top_block (P6, P7)"
G_TOWER_CONV = "head towers: convs"
G_TOWER_NORM = "head towers: norms"
G_PRED = "head: cls_logits, bbox_pred, ctrness"
G_SCALE = "head.scales"
GROUPS = (G_RESNET, G_FPN, G_TOP, G_TOWER_CONV, G_TOWER_NORM, G_PRED, G_SCALE)

# Source keys that carry no weights of the model (buffers of old Detectron2 versions).
_DROPPED = ("pixel_mean", "pixel_std")
# The FCOS modules that hold weights; the model's other state (e.g. the losses' running
# statistics) is no reference's and starts at its initial value when the weights load.
_WEIGHT_MODULES = ("backbone.", "head.")
_D2_FROZEN_BN_EPS = 1e-5  # detectron2.layers.FrozenBatchNorm2d's default eps

_Rule = Tuple[str, Callable[[re.Match], str], str]


def _stage(m: re.Match, i: int = 1) -> int:
    """maskrcnn-benchmark's ``layerN`` / ``fpn_*N`` -> Detectron2's stage N + 1."""
    return int(m[i]) + 1


_RULES: Dict[str, List[_Rule]] = {
    "maskrcnn_benchmark": [
        (r"backbone\.body\.stem\.conv1\.weight",
         lambda m: "backbone.bottom_up.stem.conv1.weight", G_RESNET),
        (r"backbone\.body\.stem\.bn1\.(\w+)",
         lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.conv{m[3]}.weight", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.conv{m[3]}.norm.{m[4]}", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.shortcut.weight", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.shortcut.norm.{m[3]}", G_RESNET),
        # FPN without norm: plain convs; with GroupNorm: Sequential(conv, GN).
        (r"backbone\.fpn\.fpn_inner(\d)\.(weight|bias)",
         lambda m: f"backbone.fpn_lateral{_stage(m)}.{m[2]}", G_FPN),
        (r"backbone\.fpn\.fpn_inner(\d)\.0\.weight",
         lambda m: f"backbone.fpn_lateral{_stage(m)}.weight", G_FPN),
        (r"backbone\.fpn\.fpn_inner(\d)\.1\.(weight|bias)",
         lambda m: f"backbone.fpn_lateral{_stage(m)}.norm.{m[2]}", G_FPN),
        (r"backbone\.fpn\.fpn_layer(\d)\.(weight|bias)",
         lambda m: f"backbone.fpn_output{_stage(m)}.{m[2]}", G_FPN),
        (r"backbone\.fpn\.fpn_layer(\d)\.0\.weight",
         lambda m: f"backbone.fpn_output{_stage(m)}.weight", G_FPN),
        (r"backbone\.fpn\.fpn_layer(\d)\.1\.(weight|bias)",
         lambda m: f"backbone.fpn_output{_stage(m)}.norm.{m[2]}", G_FPN),
        (r"backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)",
         lambda m: f"backbone.top_block.{m[1]}.{m[2]}", G_TOP),
        (r"rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)",
         lambda m: f"head.{m[1]}.{m[2]}", G_PRED),
        (r"rpn\.head\.centerness\.(weight|bias)", lambda m: f"head.ctrness.{m[1]}", G_PRED),
        (r"rpn\.head\.scales\.(\d+)\.scale", lambda m: f"head.scales.{m[1]}.scale", G_SCALE),
    ],
    "torchvision": [
        (r"backbone\.body\.conv1\.weight",
         lambda m: "backbone.bottom_up.stem.conv1.weight", G_RESNET),
        (r"backbone\.body\.bn1\.(weight|bias|running_mean|running_var)",
         lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.conv{m[3]}.weight", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(weight|bias|running_mean|running_var)",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.conv{m[3]}.norm.{m[4]}", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.shortcut.weight", G_RESNET),
        (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\."
         r"(weight|bias|running_mean|running_var)",
         lambda m: f"backbone.bottom_up.res{_stage(m)}.{m[2]}.shortcut.norm.{m[3]}", G_RESNET),
        # inner/layer block k reads layer k + 2 = Detectron2's res(k + 3)
        (r"backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?(weight|bias)",
         lambda m: f"backbone.fpn_lateral{int(m[1]) + 3}.{m[2]}", G_FPN),
        (r"backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?(weight|bias)",
         lambda m: f"backbone.fpn_output{int(m[1]) + 3}.{m[2]}", G_FPN),
        (r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)",
         lambda m: f"backbone.top_block.{m[1]}.{m[2]}", G_TOP),
        (r"head\.classification_head\.cls_logits\.(weight|bias)",
         lambda m: f"head.cls_logits.{m[1]}", G_PRED),
        (r"head\.regression_head\.bbox_reg\.(weight|bias)",
         lambda m: f"head.bbox_pred.{m[1]}", G_PRED),
        (r"head\.regression_head\.bbox_ctrness\.(weight|bias)",
         lambda m: f"head.ctrness.{m[1]}", G_PRED),
    ],
    "adelaidet": [
        (r"backbone\.(bottom_up\..+)", lambda m: f"backbone.{m[1]}", G_RESNET),
        (r"backbone\.(fpn_(?:lateral|output)\d\..+)", lambda m: f"backbone.{m[1]}", G_FPN),
        (r"backbone\.top_block\.(p6|p7)\.(weight|bias)",
         lambda m: f"backbone.top_block.{m[1]}.{m[2]}", G_TOP),
        (r"proposal_generator\.fcos_head\.(cls_logits|bbox_pred|ctrness)\.(weight|bias)",
         lambda m: f"head.{m[1]}.{m[2]}", G_PRED),
        (r"proposal_generator\.fcos_head\.scales\.(\d+)\.scale",
         lambda m: f"head.scales.{m[1]}.scale", G_SCALE),
    ],
}

# A key inside one of the reference towers: (tower, Sequential index, rest of the key).
_TOWER_PATTERNS = {
    "maskrcnn_benchmark": r"rpn\.head\.(cls|bbox)_tower\.(\d+)\.(.+)",
    "adelaidet": r"proposal_generator\.fcos_head\.(cls|bbox|share)_tower\.(\d+)\.(.+)",
    "torchvision": r"head\.(classification|regression)_head\.conv\.(\d+)\.(.+)",
}
_TOWER_PREFIXES = {
    "maskrcnn_benchmark": "rpn.head.{}_tower",
    "adelaidet": "proposal_generator.fcos_head.{}_tower",
    "torchvision": "head.{}_head.conv",
}
_TOWER_NAMES = {
    "cls": "cls_tower", "bbox": "box_tower", "share": "share_tower",
    "classification": "cls_tower", "regression": "box_tower",
}
# Source keys dropped with a count rather than one by one: torchvision's ResNet built with
# nn.BatchNorm2d (``weights=None``) has BatchNorm counters; the converted ResNet is frozen.
_DROPPED_PATTERNS = {
    "torchvision": (
        r"backbone\.body\..+\.num_batches_tracked", "backbone.body.*.num_batches_tracked"
    ),
}

# Keys a usable FCOS checkpoint must give (after conversion), with what they are.
_REQUIRED = {
    "backbone.bottom_up.stem.conv1.weight": "ResNet stem",
    "backbone.top_block.p6.weight": "P6 conv",
    "backbone.top_block.p7.weight": "P7 conv",
    "head.cls_logits.weight": "class logits",
    "head.bbox_pred.weight": "box distances",
    "head.ctrness.weight": "centerness",
}

_NOTES = {
    "maskrcnn_benchmark": [
        "maskrcnn-benchmark normalises BGR 0-255 input with MODEL.PIXEL_MEAN "
        "[102.9801, 115.9465, 122.7717] and PIXEL_STD [1, 1, 1]: use the same values.",
        "Set MODEL.FCOS.CENTERNESS_ON_REG to the source's value (True for the 'imprv' "
        "models, False for the original FCOS); the weights do not say.",
        "fcos_d2 regresses distances in stride units with ReLU (the source's "
        "NORM_REG_TARGETS: True). Models trained without it (exp of pixel distances, "
        "the original FCOS) give other boxes after conversion.",
    ],
    "torchvision": [
        "torchvision normalises RGB input in [0, 1] with ImageNet's mean and std; on "
        "Detectron2's 0-255 pixels that is INPUT.FORMAT RGB, MODEL.PIXEL_MEAN [123.675, "
        "116.28, 103.53], MODEL.PIXEL_STD [58.395, 57.12, 57.375].",
        "torchvision places its locations at k * (padded input size // level size), "
        "thresholds the final score sqrt(cls * ctr) at 0.2 and keeps empty boxes (the "
        "MODEL.FCOS hints above); configs/COCO-Detection/FCOS_R_50_torchvision.yaml "
        "sets all of this: run the weights with it.",
    ],
    "adelaidet": [
        "AdelaiDet's defaults equal fcos_d2's (centerness on the box tower, ReLU "
        "distances in stride units, Detectron2's pixel mean); MODEL.FPN.USE_RELU is "
        "not supported by Detectron2's FPN.",
    ],
}


# Config values the source's architecture and preprocessing imply that its weights do not
# show (yacs keys).
_SOURCE_HINTS = {
    "torchvision": {
        "MODEL.RESNETS.STRIDE_IN_1X1": False,  # torchvision's Bottleneck strides in conv2
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],  # 255 * (0.485, 0.456, 0.406)
        "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],  # 255 * (0.229, 0.224, 0.225)
        # torchvision's AnchorGenerator, FCOS.postprocess_detections
        "MODEL.FCOS.LOCATION_OFFSET": 0.0,
        "MODEL.FCOS.SPACING_FROM_INPUT": True,
        "MODEL.FCOS.INFERENCE_TH_TEST": 0.2,
        "MODEL.FCOS.THRESH_ON_FINAL_SCORE": True,
        "MODEL.FCOS.REMOVE_EMPTY_BOXES": False,
    },
}

_TV_NUM_OUTPUTS = 91  # torchvision's COCO classifier: one output per category id 0..90
_CLASS_KEYS = ("head.cls_logits.weight", "head.cls_logits.bias")


def coco_contiguous_category_ids() -> List[int]:
    """The COCO category ids of Detectron2's 80 contiguous COCO classes, in that order
    (class 0 is id 1 "person", class 79 is id 90 "toothbrush")."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1]


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message lists the offending keys."""


@dataclass
class ConversionSummary:
    """What :func:`convert_reference_checkpoint` did, and the config it implies."""

    source: str
    groups: Dict[str, int] = field(default_factory=dict)  # converted tensors per group
    dropped: List[str] = field(default_factory=list)  # source keys left out on purpose
    filled: List[str] = field(default_factory=list)  # target keys given initial values
    hints: Dict[str, Any] = field(default_factory=dict)  # config key -> implied value
    notes: List[str] = field(default_factory=list)

    @property
    def num_converted(self) -> int:
        return sum(self.groups.values())

    def hint_opts(self) -> List[str]:
        """The hints as Detectron2 command-line opts (``KEY VALUE`` pairs)."""
        opts = []
        for key, value in self.hints.items():
            if isinstance(value, list):
                value = "[" + ",".join(repr(v) for v in value) + "]"
            opts += [key, str(value)]
        return opts

    def format(self) -> str:
        width = max(len(g) for g in GROUPS)
        lines = [f"Converted {self.num_converted} tensors from {self.source}:"]
        lines += [f"  {group:<{width}}  {self.groups.get(group, 0):5d}" for group in GROUPS]
        if self.dropped:
            lines.append(f"  dropped (not model weights): {', '.join(self.dropped)}")
        if self.filled:
            lines.append(f"  filled with initial values: {_short_list(self.filled)}")
        lines.append("Config implied by the weights:")
        lines += [f"  {key}: {value}" for key, value in self.hints.items()]
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _short_list(keys: List[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _tower_entries(
    tower: str, modules: Dict[int, Dict[str, Tensor]], problems: List[str]
) -> List[Tuple[str, str, str, Tensor]]:
    """One reference tower (index -> {rest: tensor}) -> (source suffix, new key, group,
    tensor) tuples: the k-th conv becomes ``convs.k``, the norm after it ``norms.*.k``."""
    out = []
    num_convs = 0
    for index in sorted(modules):
        params = modules[index]
        names = set(params)
        weight = params.get("weight")
        if names & {"offset.weight", "conv.weight"}:
            problems.append(
                f"{tower}.{index}: deformable tower convs (USE_DEFORMABLE / "
                "USE_DCN_IN_TOWER) are not supported by the converter"
            )
        elif weight is not None and weight.dim() == 4 and names <= {"weight", "bias"}:
            for rest, value in params.items():
                out.append((f"{index}.{rest}", f"convs.{num_convs}.{rest}", G_TOWER_CONV, value))
            num_convs += 1
        elif num_convs == 0:
            problems.append(f"{tower}.{index}: a norm before the tower's first conv")
        elif all(re.fullmatch(r"\d+\.\w+", name) for name in names):  # one BN per level
            for rest, value in params.items():
                level, stat = rest.split(".", 1)
                new = f"norms.{level}.{num_convs - 1}.{stat}"
                out.append((f"{index}.{rest}", new, G_TOWER_NORM, value))
        elif names <= {"weight", "bias"}:  # GroupNorm, shared by the levels
            for rest, value in params.items():
                new = f"norms.0.{num_convs - 1}.{rest}"
                out.append((f"{index}.{rest}", new, G_TOWER_NORM, value))
        else:
            problems.append(f"{tower}.{index}: unknown module with {sorted(names)}")
    return out


def _norm_kind(state: Mapping[str, Tensor], prefix: str) -> str:
    """"GN", "BN", "FrozenBN" or "" for the norm whose keys start with ``prefix``."""
    if f"{prefix}.running_mean" in state:
        return "BN" if f"{prefix}.num_batches_tracked" in state else "FrozenBN"
    return "GN" if f"{prefix}.weight" in state else ""


def _hints(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """Config values implied by the converted weights (yacs keys)."""
    hints: Dict[str, Any] = {}
    blocks = Counter()
    for key in state:
        m = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.", key)
        if m:
            blocks[int(m[1])] = max(blocks[int(m[1])], int(m[2]) + 1)
    bottleneck = any(".conv3." in k for k in state if k.startswith("backbone.bottom_up."))
    counts = tuple(blocks[s] for s in (2, 3, 4, 5))
    depths = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34} if not bottleneck else {
        (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152
    }
    if counts in depths:
        hints["MODEL.RESNETS.DEPTH"] = depths[counts]
    last_conv = "conv3" if bottleneck else "conv2"
    res2_out = state.get(f"backbone.bottom_up.res2.0.{last_conv}.weight")
    if res2_out is not None:
        hints["MODEL.RESNETS.RES2_OUT_CHANNELS"] = int(res2_out.shape[0])
    if bottleneck and "backbone.bottom_up.res2.0.conv2.weight" in state:
        conv2 = state["backbone.bottom_up.res2.0.conv2.weight"]  # (mid, mid / groups, 3, 3)
        hints["MODEL.RESNETS.NUM_GROUPS"] = int(conv2.shape[0] // conv2.shape[1])
        hints["MODEL.RESNETS.WIDTH_PER_GROUP"] = int(conv2.shape[1])
    stem = state.get("backbone.bottom_up.stem.conv1.weight")
    if stem is not None:
        hints["MODEL.RESNETS.STEM_OUT_CHANNELS"] = int(stem.shape[0])
    resnet_norm = _norm_kind(state, "backbone.bottom_up.stem.conv1.norm")
    if resnet_norm:
        hints["MODEL.RESNETS.NORM"] = resnet_norm

    laterals = (re.fullmatch(r"backbone\.fpn_lateral(\d)\.weight", k) for k in state)
    levels = sorted(int(m[1]) for m in laterals if m)
    if levels:
        hints["MODEL.FPN.IN_FEATURES"] = [f"res{i}" for i in levels]
        hints["MODEL.RESNETS.OUT_FEATURES"] = [f"res{i}" for i in levels]
        out_channels = int(state[f"backbone.fpn_output{levels[0]}.weight"].shape[0])
        hints["MODEL.FPN.OUT_CHANNELS"] = out_channels
        hints["MODEL.FPN.NORM"] = _norm_kind(state, f"backbone.fpn_lateral{levels[0]}.norm")
        p6 = state.get("backbone.top_block.p6.weight")
        if p6 is not None:
            from_p5 = p6.shape[1] == out_channels
            hints["MODEL.FCOS.TOP_BLOCK_IN_FEATURE"] = "p5" if from_p5 else "res5"

    logits = state.get("head.cls_logits.weight")
    if logits is not None:
        hints["MODEL.FCOS.NUM_CLASSES"] = int(logits.shape[0])
    towers = (("cls", "NUM_CLS_CONVS"), ("box", "NUM_BOX_CONVS"), ("share", "NUM_SHARE_CONVS"))
    for tower, key in towers:
        hints[f"MODEL.FCOS.{key}"] = sum(
            1 for k in state if re.fullmatch(rf"head\.{tower}_tower\.convs\.\d+\.weight", k)
        )
    norms = (re.match(r"head\.\w+_tower\.norms\.(\d+)\.", k) for k in state)
    norm_levels = {int(m[1]) for m in norms if m}
    hints["MODEL.FCOS.NORM"] = "BN" if len(norm_levels) > 1 else ("GN" if norm_levels else "")
    hints["MODEL.FCOS.USE_SCALE"] = any(k.startswith("head.scales.") for k in state)
    return hints


def convert_reference_checkpoint(
    state_dict: Mapping[str, Any],
    source: str,
    model_state: Optional[Mapping[str, Tensor]] = None,
    num_classes: Optional[int] = None,
) -> Tuple[Dict[str, Tensor], ConversionSummary]:
    """Rename a reference FCOS state dict to fcos_d2's ``FCOS`` module names.

    Args:
        state_dict: the source model's weights (``checkpoint["model"]``); a leading
            ``module.`` (DistributedDataParallel) is ignored.
        source: "adelaidet", "maskrcnn_benchmark" or "torchvision".
        model_state: optionally the target model's ``state_dict()``: the result is then
            checked against it (no missing weight of the backbone or head, no unexpected
            key, equal shapes), and BatchNorm counters the source lacks are filled in.
        num_classes: the classes the result is for (``MODEL.FCOS.NUM_CLASSES``); None:
            the source's own (for "torchvision", its 91 outputs become the 80 COCO
            classes). When it differs from the source's, everything but the class logits
            is converted (fine-tuning on another dataset): the logits take
            ``model_state``'s initial values, or are left out without ``model_state``.

    Returns:
        the converted state dict and a :class:`ConversionSummary`.

    Raises:
        ConversionError: listing source keys that map to nothing, required weights that
            are absent, and (with ``model_state``) missing/unexpected/misshapen keys.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    summary = ConversionSummary(source=source, notes=list(_NOTES[source]))
    converted: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}  # new key -> source key
    groups: Counter = Counter()
    unmapped: List[str] = []
    problems: List[str] = []
    towers: Dict[str, Dict[int, Dict[str, Tensor]]] = {}
    eps_adjusted = 0

    def put(old: str, new: str, group: str, value: Any) -> None:
        if new in converted:
            problems.append(f"{old} and {origin[new]} both map to {new}")
            return
        converted[new] = torch.as_tensor(value).clone()
        origin[new] = old
        groups[group] += 1

    dropped_by_pattern: Counter = Counter()
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _DROPPED:
            summary.dropped.append(key)
            continue
        if source in _DROPPED_PATTERNS and re.fullmatch(_DROPPED_PATTERNS[source][0], key):
            dropped_by_pattern[_DROPPED_PATTERNS[source][1]] += 1
            continue
        m = re.fullmatch(_TOWER_PATTERNS[source], key)
        if m:
            towers.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = torch.as_tensor(value)
            continue
        for pattern, rename, group in _RULES[source]:
            m = re.fullmatch(pattern, key)
            if m:
                new_key = rename(m)
                if source == "maskrcnn_benchmark" and new_key.endswith(".norm.running_var"):
                    # its FrozenBatchNorm2d divides by sqrt(var), Detectron2's by
                    # sqrt(var + eps): keep the product the same
                    value = torch.as_tensor(value) - _D2_FROZEN_BN_EPS
                    eps_adjusted += 1
                put(key, new_key, group, value)
                break
        else:
            unmapped.append(key)
    if eps_adjusted:
        summary.notes.insert(0, (
            f"{eps_adjusted} frozen-BatchNorm running_var lowered by {_D2_FROZEN_BN_EPS:g}: "
            "maskrcnn-benchmark's FrozenBatchNorm2d uses sqrt(var), Detectron2's "
            "sqrt(var + eps)."
        ))
    summary.dropped += [f"{name} ({count})" for name, count in dropped_by_pattern.items()]
    for tower, modules in towers.items():
        name = _TOWER_NAMES[tower]
        prefix = _TOWER_PREFIXES[source].format(tower)
        for suffix, new, group, value in _tower_entries(prefix, modules, problems):
            put(f"{prefix}.{suffix}", f"head.{name}.{new}", group, value)

    if source == "torchvision":
        _torchvision_classes(converted, summary, num_classes)
    new_classes = _drop_other_class_logits(converted, origin, groups, summary, num_classes)
    missing = [
        f"{key} ({what})" for key, what in _REQUIRED.items()
        if key not in converted and not (new_classes and key in _CLASS_KEYS)
    ]
    if not any(k.startswith("backbone.fpn_lateral") for k in converted):
        missing.append("backbone.fpn_lateral* (FPN)")
    unexpected, misshapen = [], []
    if model_state is not None:
        for key, value in model_state.items():
            if key not in converted and key.endswith("num_batches_tracked"):
                converted[key] = torch.zeros_like(value)  # BatchNorm where the source froze
                summary.filled.append(key)
            elif key not in converted and new_classes and key in _CLASS_KEYS:
                converted[key] = value.clone()  # the model's initial class logits
                summary.filled.append(key)
        missing += [k for k in model_state if k not in converted and k.startswith(_WEIGHT_MODULES)]
        unexpected = [k for k in converted if k not in model_state]
        misshapen = [
            f"{k}: {tuple(converted[k].shape)} in the checkpoint, {tuple(model_state[k].shape)} "
            "in the model"
            for k in converted
            if k in model_state and converted[k].shape != model_state[k].shape
        ]
    if unmapped or problems or missing or unexpected or misshapen:
        raise ConversionError(
            _error_message(source, unmapped, problems, missing, unexpected, misshapen, origin)
        )
    summary.groups = {group: groups[group] for group in GROUPS}
    summary.hints = _hints(converted)
    if num_classes is not None:
        summary.hints["MODEL.FCOS.NUM_CLASSES"] = num_classes
    summary.hints.update(_SOURCE_HINTS.get(source, {}))
    return converted, summary


def _torchvision_classes(
    converted: Dict[str, Tensor], summary: ConversionSummary, num_classes: Optional[int]
) -> None:
    """torchvision's 91 outputs (one per COCO category id) -> Detectron2's 80 contiguous
    COCO classes, unless ``num_classes`` asks for 91 or for other classes."""
    weight = converted.get("head.cls_logits.weight")
    if weight is None or weight.shape[0] != _TV_NUM_OUTPUTS or num_classes not in (None, 80):
        if weight is not None and weight.shape[0] == num_classes == _TV_NUM_OUTPUTS:
            summary.notes.append(
                "Class logits kept as torchvision's 91 outputs: class k is COCO category "
                "id k (0 is background, 10 ids are unused)."
            )
        return
    ids = torch.tensor(coco_contiguous_category_ids())  # (80,)
    for key in _CLASS_KEYS:
        converted[key] = converted[key][ids].clone()
    summary.notes.append(
        "Class logits: torchvision's 91 outputs (indexed by COCO category id) -> the 80 "
        "COCO classes in Detectron2's contiguous order (output 0, background, and the 10 "
        "unused ids are left out)."
    )


def _drop_other_class_logits(
    converted: Dict[str, Tensor],
    origin: Dict[str, str],
    groups: Counter,
    summary: ConversionSummary,
    num_classes: Optional[int],
) -> bool:
    """Leave out the class logits when ``num_classes`` differs from the checkpoint's.

    Returns whether they were left out.
    """
    weight = converted.get("head.cls_logits.weight")
    if num_classes is None or weight is None or weight.shape[0] == num_classes:
        return False
    for key in _CLASS_KEYS:
        if key in converted:
            converted.pop(key)
            groups[G_PRED] -= 1
            summary.dropped.append(f"{origin[key]} ({weight.shape[0]} classes)")
    summary.notes.append(
        f"The checkpoint has {weight.shape[0]} classes, the model {num_classes}: everything "
        "but the class logits is converted; the class logits start from the model's "
        "initialisation (fine-tuning)."
    )
    return True


def _matches_source(key: str, source: str) -> bool:
    patterns = [rule[0] for rule in _RULES[source]] + [_TOWER_PATTERNS[source]]
    return any(re.fullmatch(pattern, key) for pattern in patterns)


def _likely_source(keys: List[str], source: str) -> Optional[str]:
    """Another source whose names fit most of the keys that ``source`` could not map."""
    for other in SOURCES:
        if other != source and keys:
            if sum(_matches_source(k, other) for k in keys) > len(keys) // 2:
                return other
    return None


def _error_message(source, unmapped, problems, missing, unexpected, misshapen, origin) -> str:
    lines = [f"Cannot convert this {source} checkpoint to fcos_d2's FCOS:"]
    other = _likely_source(unmapped, source)
    if other:
        lines.append(f"  The keys look like a {other!r} checkpoint: try source {other!r} "
                     f"(--source {other}).")
    sections = [
        (unmapped, "source key(s) that map to no fcos_d2 weight (another architecture?)"),
        (problems, "structural problem(s)"),
        (missing, "missing weight(s)"),
        ([f"{k} (from {origin.get(k, '?')})" for k in unexpected],
         "converted key(s) the model does not have (config mismatch? see the hints)"),
        (misshapen, "shape mismatch(es) (config mismatch?)"),
    ]
    for keys, what in sections:
        if keys:
            lines.append(f"  {len(keys)} {what}:")
            lines += [f"    {k}" for k in keys[:20]]
            if len(keys) > 20:
                lines.append(f"    ... and {len(keys) - 20} more")
    return "\n".join(lines)


def load_reference_checkpoint(path: str, allow_pickle: bool = False) -> Dict[str, Tensor]:
    """The model weights of a reference checkpoint file (``.pth``).

    Unwraps ``{"model": ...}`` (both references) or ``{"state_dict": ...}``. The file is
    read with ``torch.load(weights_only=True)`` unless ``allow_pickle`` (arbitrary Python
    objects, e.g. an old optimizer or scheduler state: only for files you trust).
    """
    try:
        if path.endswith(".pkl"):
            if not allow_pickle:
                raise pickle.UnpicklingError("a .pkl file is an arbitrary pickle")
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
        else:
            data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path} holds Python objects besides tensors ({e}). If you trust the file, "
            "pass allow_pickle=True (--allow-pickle)."
        ) from e
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    return {k: torch.as_tensor(v) for k, v in data.items() if isinstance(v, (Tensor, np.ndarray))}


def save_converted_checkpoint(
    state_dict: Mapping[str, Tensor], path: str, source: str
) -> Dict[str, Union[str, bool, Dict]]:
    """Write a file that ``DetectionCheckpointer(model).load(path)`` loads as is.

    ``.pkl``: Detectron2's pickle format (numpy arrays, ``__author__``,
    ``matching_heuristics: False`` so names are used as they are); anything else: a
    ``torch.save`` of ``{"model": tensors, ...}`` that loads with ``weights_only=True``.
    """
    checkpoint: Dict[str, Union[str, bool, Dict]] = {
        "__author__": f"fcos_d2 convert_weights (from {source})",
        "matching_heuristics": False,
    }
    if path.endswith(".pkl"):
        checkpoint["model"] = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f)
    else:
        checkpoint["model"] = {k: v.detach().cpu() for k, v in state_dict.items()}
        torch.save(checkpoint, path)
    return checkpoint
