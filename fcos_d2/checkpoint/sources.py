"""The checkpoint formats of the reference FCOS implementations, as data.

One :class:`SourceFormat` per source, in :data:`SOURCE_FORMATS`:

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

In all three, a head tower is one ``nn.Sequential`` interleaving conv, norm and ReLU (convs
at 0, 3, 6, 9 and norms at 1, 4, 7, 10 with a norm; convs at 0, 2, 4, 6 without);
AdelaiDet's BatchNorm towers hold one BatchNorm per level at the norm's index
(``<i>.<level>.*``). fcos_d2 keeps them apart: ``head.cls_tower.convs.<k>`` and
``head.cls_tower.norms.<level or 0>.<k>`` (``box_tower`` for ``bbox_tower``).

A new source is one more :class:`SourceFormat` given to :func:`register_source`.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "GROUPS",
    "ClassMap",
    "Rule",
    "SOURCE_FORMATS",
    "SourceFormat",
    "TowerLayout",
    "coco_contiguous_category_ids",
    "recognise_source",
    "register_source",
]

# Groups of the converted tensors, in display order.
G_RESNET = "backbone.bottom_up (ResNet)"
G_FPN = "backbone FPN (lateral + output convs)"
G_TOP = "backbone.top_block (P6, P7)"
G_TOWER_CONV = "head towers: convs"
G_TOWER_NORM = "head towers: norms"
G_PRED = "head: cls_logits, bbox_pred, ctrness"
G_SCALE = "head.scales"
GROUPS = (G_RESNET, G_FPN, G_TOP, G_TOWER_CONV, G_TOWER_NORM, G_PRED, G_SCALE)

D2_FROZEN_BN_EPS = 1e-5  # detectron2.layers.FrozenBatchNorm2d's default eps


@dataclass(frozen=True)
class Rule:
    """One rename: a source key that fully matches ``pattern`` becomes ``target`` formatted
    with the pattern's named groups, after adding ``shift`` to the numeric ones it names
    (a stage numbered from 1 in the source is Detectron2's ``res<stage + 1>``)."""

    pattern: str
    target: str
    group: str
    shift: Mapping[str, int] = field(default_factory=dict)

    def rename(self, key: str) -> Optional[str]:
        """The new name of ``key``, or None when the rule does not apply to it."""
        m = re.fullmatch(self.pattern, key)
        if m is None:
            return None
        values: Dict[str, Any] = m.groupdict()
        for name, offset in self.shift.items():
            values[name] = int(values[name]) + offset
        return self.target.format(**values)


@dataclass(frozen=True)
class TowerLayout:
    """Where a source keeps its head towers: ``pattern`` matches one key inside a tower,
    with groups ``tower`` (the source's tower name), ``index`` (position in its
    ``nn.Sequential``) and ``rest``; ``prefix`` is a tower's module name with ``{}`` for
    the tower; ``names`` gives fcos_d2's tower for each of the source's."""

    pattern: str
    prefix: str
    names: Mapping[str, str]


@dataclass(frozen=True)
class ClassMap:
    """A classifier with one output per dataset category id: ``num_outputs`` outputs, of
    which ``ids()`` lists the ones kept (in Detectron2's contiguous class order)."""

    num_outputs: int
    ids: Callable[[], List[int]]
    mapped_note: str
    kept_note: str


@dataclass(frozen=True)
class SourceFormat:
    """Everything the converter knows about one source's checkpoints."""

    name: str
    rules: Tuple[Rule, ...]
    towers: TowerLayout
    signature: str  # pattern of a key that only this source's FCOS checkpoints have
    # (pattern, label): keys left out with a count instead of one by one
    dropped: Tuple[Tuple[str, str], ...] = ()
    fixups: Tuple[Callable, ...] = ()  # run in order on the renamed weights (see fixups.py)
    class_map: Optional[ClassMap] = None
    hints: Mapping[str, Any] = field(default_factory=dict)  # config its architecture implies
    notes: Tuple[str, ...] = ()

    def matches(self, key: str) -> bool:
        """Whether ``key`` has one of this source's names (renamed or dropped)."""
        patterns = [self.towers.pattern] + [pattern for pattern, _ in self.dropped]
        if any(re.fullmatch(pattern, key) for pattern in patterns):
            return True
        return any(rule.rename(key) is not None for rule in self.rules)


def coco_contiguous_category_ids() -> List[int]:
    """The COCO category ids of Detectron2's 80 contiguous COCO classes, in that order
    (class 0 is id 1 "person", class 79 is id 90 "toothbrush")."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1]


# ---- rule sets shared by several sources -------------------------------------------------
_NORM_STAT = r"(?P<stat>\w+)"  # weight, bias, running_mean, running_var
_PARAM = r"(?P<param>weight|bias)"


def torch_resnet_rules(stem: str) -> Tuple[Rule, ...]:
    """A ResNet in torchvision's naming (``layer<N>.<block>.conv<i>`` / ``bn<i>`` /
    ``downsample.0`` / ``.1``) under ``backbone.body.``, its stem conv and norm at
    ``<stem>conv1`` / ``<stem>bn1``, onto Detectron2's ``backbone.bottom_up``."""
    body, res = r"backbone\.body\.", "backbone.bottom_up.res{stage}.{block}"
    block = r"layer(?P<stage>\d)\.(?P<block>\d+)\."
    stage = {"stage": 1}
    return (
        Rule(rf"{body}{stem}conv1\.weight", "backbone.bottom_up.stem.conv1.weight", G_RESNET),
        Rule(rf"{body}{stem}bn1\.{_NORM_STAT}", "backbone.bottom_up.stem.conv1.norm.{stat}",
             G_RESNET),
        Rule(rf"{body}{block}conv(?P<i>\d)\.weight", res + ".conv{i}.weight", G_RESNET, stage),
        Rule(rf"{body}{block}bn(?P<i>\d)\.{_NORM_STAT}", res + ".conv{i}.norm.{stat}",
             G_RESNET, stage),
        Rule(rf"{body}{block}downsample\.0\.weight", res + ".shortcut.weight", G_RESNET, stage),
        Rule(rf"{body}{block}downsample\.1\.{_NORM_STAT}", res + ".shortcut.norm.{stat}",
             G_RESNET, stage),
    )


def top_block_rules(prefix: str) -> Tuple[Rule, ...]:
    """P6 / P7 convs at ``<prefix>p6`` / ``p7``."""
    return (Rule(rf"{prefix}(?P<p>p6|p7)\.{_PARAM}", "backbone.top_block.{p}.{param}", G_TOP),)


def predictor_rules(prefix: str, names: Mapping[str, str]) -> Tuple[Rule, ...]:
    """The head's prediction convs: source module ``<prefix><name>`` -> ``head.<ours>``."""
    return tuple(
        Rule(rf"{prefix}{re.escape(theirs)}\.{_PARAM}", f"head.{ours}.{{param}}", G_PRED)
        for theirs, ours in names.items()
    )


def scale_rules(prefix: str) -> Tuple[Rule, ...]:
    """The learnable per-level scales of the box distances."""
    return (Rule(rf"{prefix}scales\.(?P<level>\d+)\.scale", "head.scales.{level}.scale",
                 G_SCALE),)


def mb_fpn_rules() -> Tuple[Rule, ...]:
    """maskrcnn-benchmark's FPN: ``fpn_inner<k>`` / ``fpn_layer<k>`` read C(k + 1), which is
    Detectron2's ``fpn_lateral<k + 1>`` / ``fpn_output<k + 1>``; plain convs without a
    norm, ``Sequential(conv, GN)`` with GroupNorm."""
    rules = []
    for theirs, ours in (("fpn_inner", "fpn_lateral"), ("fpn_layer", "fpn_output")):
        module, target = rf"backbone\.fpn\.{theirs}(?P<k>\d)\.", f"backbone.{ours}{{k}}"
        k = {"k": 1}
        rules += [
            Rule(rf"{module}{_PARAM}", target + ".{param}", G_FPN, k),
            Rule(rf"{module}0\.weight", target + ".weight", G_FPN, k),
            Rule(rf"{module}1\.{_PARAM}", target + ".norm.{param}", G_FPN, k),
        ]
    return tuple(rules)


def torchvision_fpn_rules() -> Tuple[Rule, ...]:
    """torchvision's FPN: inner / layer block k reads layer k + 2, Detectron2's res(k + 3);
    a ``.0.`` (Conv2dNormActivation) inside since torchvision 0.13."""
    return tuple(
        Rule(rf"backbone\.fpn\.{theirs}_blocks\.(?P<k>\d)\.(?:0\.)?{_PARAM}",
             f"backbone.{ours}{{k}}.{{param}}", G_FPN, {"k": 3})
        for theirs, ours in (("inner", "fpn_lateral"), ("layer", "fpn_output"))
    )


# ---- the registry ---------------------------------------------------------------------------
SOURCE_FORMATS: Dict[str, SourceFormat] = {}


def register_source(fmt: SourceFormat) -> SourceFormat:
    """Add a checkpoint format to :data:`SOURCE_FORMATS` (its name must be new)."""
    if fmt.name in SOURCE_FORMATS:
        raise ValueError(f"checkpoint source {fmt.name!r} is already registered")
    SOURCE_FORMATS[fmt.name] = fmt
    return fmt


def recognise_source(keys) -> Optional[str]:
    """The registered source whose FCOS checkpoints have one of ``keys`` (a leading
    ``module.`` ignored), or None (e.g. a checkpoint already in fcos_d2's names)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    for name, fmt in SOURCE_FORMATS.items():
        if any(re.fullmatch(fmt.signature, k) for k in keys):
            return name
    return None


# ---- fix-ups: source-specific changes of the renamed weights, (state, notes) -> None -------
def lower_frozen_bn_var(state, notes: List[str]) -> None:
    """maskrcnn-benchmark's FrozenBatchNorm2d divides by sqrt(var), Detectron2's by
    sqrt(var + eps): lower every frozen-BatchNorm ``running_var`` by eps so that the product
    stays the same."""
    keys = [k for k in state if k.endswith(".norm.running_var")]
    for key in keys:
        state[key] = state[key] - D2_FROZEN_BN_EPS
    if keys:
        notes.insert(0, (
            f"{len(keys)} frozen-BatchNorm running_var lowered by {D2_FROZEN_BN_EPS:g}: "
            "maskrcnn-benchmark's FrozenBatchNorm2d uses sqrt(var), Detectron2's "
            "sqrt(var + eps)."
        ))


# ---- the three reference implementations ---------------------------------------------------
_MB_HEAD = r"rpn\.head\."
_ADET_HEAD = r"proposal_generator\.fcos_head\."

register_source(SourceFormat(
    name="adelaidet",
    rules=(
        Rule(r"backbone\.(?P<rest>bottom_up\..+)", "backbone.{rest}", G_RESNET),
        Rule(r"backbone\.(?P<rest>fpn_(?:lateral|output)\d\..+)", "backbone.{rest}", G_FPN),
        *top_block_rules(r"backbone\.top_block\."),
        *predictor_rules(_ADET_HEAD, {n: n for n in ("cls_logits", "bbox_pred", "ctrness")}),
        *scale_rules(_ADET_HEAD),
    ),
    towers=TowerLayout(
        pattern=_ADET_HEAD + r"(?P<tower>cls|bbox|share)_tower\.(?P<index>\d+)\.(?P<rest>.+)",
        prefix="proposal_generator.fcos_head.{}_tower",
        names={"cls": "cls_tower", "bbox": "box_tower", "share": "share_tower"},
    ),
    signature=_ADET_HEAD + r"ctrness\.weight",
    notes=(
        "AdelaiDet's defaults equal fcos_d2's (centerness on the box tower, ReLU "
        "distances in stride units, Detectron2's pixel mean); MODEL.FPN.USE_RELU is "
        "not supported by Detectron2's FPN.",
    ),
))

register_source(SourceFormat(
    name="maskrcnn_benchmark",
    rules=(
        *torch_resnet_rules(stem=r"stem\."),
        *mb_fpn_rules(),
        *top_block_rules(r"backbone\.fpn\.top_blocks\."),
        *predictor_rules(_MB_HEAD, {"cls_logits": "cls_logits", "bbox_pred": "bbox_pred",
                                    "centerness": "ctrness"}),
        *scale_rules(_MB_HEAD),
    ),
    towers=TowerLayout(
        pattern=_MB_HEAD + r"(?P<tower>cls|bbox)_tower\.(?P<index>\d+)\.(?P<rest>.+)",
        prefix="rpn.head.{}_tower",
        names={"cls": "cls_tower", "bbox": "box_tower"},
    ),
    signature=_MB_HEAD + r"centerness\.weight",
    fixups=(lower_frozen_bn_var,),
    notes=(
        "maskrcnn-benchmark normalises BGR 0-255 input with MODEL.PIXEL_MEAN "
        "[102.9801, 115.9465, 122.7717] and PIXEL_STD [1, 1, 1]: use the same values.",
        "Set MODEL.FCOS.CENTERNESS_ON_REG to the source's value (True for the 'imprv' "
        "models, False for the original FCOS); the weights do not say.",
        "fcos_d2 regresses distances in stride units with ReLU (the source's "
        "NORM_REG_TARGETS: True). Models trained without it (exp of pixel distances, "
        "the original FCOS) give other boxes after conversion.",
    ),
))

register_source(SourceFormat(
    name="torchvision",
    rules=(
        *torch_resnet_rules(stem=""),
        *torchvision_fpn_rules(),
        *top_block_rules(r"backbone\.fpn\.extra_blocks\."),
        *predictor_rules(r"head\.", {"classification_head.cls_logits": "cls_logits",
                                     "regression_head.bbox_reg": "bbox_pred",
                                     "regression_head.bbox_ctrness": "ctrness"}),
    ),
    towers=TowerLayout(
        pattern=r"head\.(?P<tower>classification|regression)_head\.conv\.(?P<index>\d+)\."
                r"(?P<rest>.+)",
        prefix="head.{}_head.conv",
        names={"classification": "cls_tower", "regression": "box_tower"},
    ),
    signature=r"head\.regression_head\.bbox_ctrness\.weight",
    # its ResNet built with nn.BatchNorm2d (weights=None) has BatchNorm counters; the
    # converted ResNet is frozen
    dropped=((r"backbone\.body\..+\.num_batches_tracked", "backbone.body.*.num_batches_tracked"),),
    class_map=ClassMap(
        num_outputs=91,  # one output per COCO category id 0..90
        ids=coco_contiguous_category_ids,
        mapped_note=(
            "Class logits: torchvision's 91 outputs (indexed by COCO category id) -> the 80 "
            "COCO classes in Detectron2's contiguous order (output 0, background, and the 10 "
            "unused ids are left out)."
        ),
        kept_note=(
            "Class logits kept as torchvision's 91 outputs: class k is COCO category "
            "id k (0 is background, 10 ids are unused)."
        ),
    ),
    hints={
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
    notes=(
        "torchvision normalises RGB input in [0, 1] with ImageNet's mean and std; on "
        "Detectron2's 0-255 pixels that is INPUT.FORMAT RGB, MODEL.PIXEL_MEAN [123.675, "
        "116.28, 103.53], MODEL.PIXEL_STD [58.395, 57.12, 57.375].",
        "torchvision places its locations at k * (padded input size // level size), "
        "thresholds the final score sqrt(cls * ctr) at 0.2 and keeps empty boxes (the "
        "MODEL.FCOS hints above); configs/COCO-Detection/FCOS_R_50_torchvision.yaml "
        "sets all of this: run the weights with it.",
    ),
))
