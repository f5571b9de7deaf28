"""Convert an FCOS checkpoint of a reference implementation to fcos_d2's module names.

The formats are data (``sources.py``); every source goes through the same stages, in this
order: rename (the source's rules), towers (split each ``nn.Sequential`` tower into convs and
norms), fix-ups (the source's own, then its class map and the number of classes wanted),
validate (required weights, and with the target model: missing, unexpected and misshapen
keys). The result loads into ``fcos_d2.modeling.FCOS`` (``MODEL.META_ARCHITECTURE: "FCOS"``)
with the config that :attr:`ConversionSummary.hints` suggests.
"""
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .hints import implied_config
from .sources import G_PRED, G_TOWER_CONV, G_TOWER_NORM, GROUPS, SOURCE_FORMATS, SourceFormat
from .summary import ConversionSummary

__all__ = ["ConversionError", "ConversionSummary", "convert_reference_checkpoint"]

# Source keys that carry no weights of the model (buffers of old Detectron2 versions).
_DROPPED = ("pixel_mean", "pixel_std")
# The FCOS modules that hold weights; the model's other state (e.g. the losses' running
# statistics) is no reference's and starts at its initial value when the weights load.
_WEIGHT_MODULES = ("backbone.", "head.")
# Keys a usable FCOS checkpoint must give (after conversion), with what they are.
_REQUIRED = {
    "backbone.bottom_up.stem.conv1.weight": "ResNet stem",
    "backbone.top_block.p6.weight": "P6 conv",
    "backbone.top_block.p7.weight": "P7 conv",
    "head.cls_logits.weight": "class logits",
    "head.bbox_pred.weight": "box distances",
    "head.ctrness.weight": "centerness",
}
_CLASS_KEYS = ("head.cls_logits.weight", "head.cls_logits.bias")


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message lists the offending keys."""


class Conversion:
    """The weights converted so far and what became of each source key."""

    def __init__(self, fmt: SourceFormat):
        self.fmt = fmt
        self.summary = ConversionSummary(source=fmt.name, notes=list(fmt.notes))
        self.state: Dict[str, Tensor] = {}
        self.origin: Dict[str, str] = {}  # new key -> source key
        self.groups: Counter = Counter()
        self.unmapped: List[str] = []  # source keys no rule maps
        self.problems: List[str] = []  # structural problems
        self.missing: List[str] = []
        self.unexpected: List[str] = []
        self.misshapen: List[str] = []

    def put(self, old: str, new: str, group: str, value: Any) -> None:
        """Store ``value`` (a source tensor) as ``new``, counted in ``group``."""
        if new in self.state:
            self.problems.append(f"{old} and {self.origin[new]} both map to {new}")
            return
        self.state[new] = torch.as_tensor(value).clone()
        self.origin[new] = old
        self.groups[group] += 1

    def failed(self) -> bool:
        return any((self.unmapped, self.problems, self.missing, self.unexpected, self.misshapen))


# ---- stage 1: rename ------------------------------------------------------------------------
def rename(conv: Conversion, state_dict: Mapping[str, Any]) -> Dict[str, Dict[int, Dict]]:
    """Apply the source's rules to every key; returns the tower keys, set aside as
    {tower: {index: {rest: tensor}}} for :func:`split_towers`."""
    fmt, towers = conv.fmt, {}
    dropped: Counter = Counter()
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _DROPPED:
            conv.summary.dropped.append(key)
            continue
        label = next((lb for pattern, lb in fmt.dropped if re.fullmatch(pattern, key)), None)
        if label is not None:
            dropped[label] += 1
            continue
        m = re.fullmatch(fmt.towers.pattern, key)
        if m:
            modules = towers.setdefault(m["tower"], {}).setdefault(int(m["index"]), {})
            modules[m["rest"]] = torch.as_tensor(value)
            continue
        for rule in fmt.rules:
            new_key = rule.rename(key)
            if new_key is not None:
                conv.put(key, new_key, rule.group, value)
                break
        else:
            conv.unmapped.append(key)
    conv.summary.dropped += [f"{label} ({count})" for label, count in dropped.items()]
    return towers


# ---- stage 2: towers --------------------------------------------------------------------------
def split_towers(conv: Conversion, towers: Dict[str, Dict[int, Dict[str, Tensor]]]) -> None:
    """Each source tower -> ``head.<tower>.convs.<k>`` and ``head.<tower>.norms.<l>.<k>``."""
    for tower, modules in towers.items():
        prefix = conv.fmt.towers.prefix.format(tower)
        name = conv.fmt.towers.names[tower]
        for suffix, new, group, value in _tower_entries(prefix, modules, conv.problems):
            conv.put(f"{prefix}.{suffix}", f"head.{name}.{new}", group, value)


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


# ---- stage 3: fix-ups -------------------------------------------------------------------------
def apply_fixups(conv: Conversion, num_classes: Optional[int]) -> bool:
    """The source's fix-ups, its class map, then the classes wanted. Returns whether the
    class logits were left out (``num_classes`` differs from the checkpoint's)."""
    for fixup in conv.fmt.fixups:
        fixup(conv.state, conv.summary.notes)
    map_classes(conv, num_classes)
    return drop_other_class_logits(conv, num_classes)


def map_classes(conv: Conversion, num_classes: Optional[int]) -> None:
    """A classifier with one output per category id (torchvision's 91) -> Detectron2's
    contiguous classes, unless ``num_classes`` asks for all its outputs or other classes."""
    class_map = conv.fmt.class_map
    weight = conv.state.get("head.cls_logits.weight")
    if class_map is None or weight is None:
        return
    ids = class_map.ids()
    if weight.shape[0] != class_map.num_outputs or num_classes not in (None, len(ids)):
        if weight.shape[0] == num_classes == class_map.num_outputs:
            conv.summary.notes.append(class_map.kept_note)
        return
    index = torch.tensor(ids)
    for key in _CLASS_KEYS:
        conv.state[key] = conv.state[key][index].clone()
    conv.summary.notes.append(class_map.mapped_note)


def drop_other_class_logits(conv: Conversion, num_classes: Optional[int]) -> bool:
    """Leave out the class logits when ``num_classes`` differs from the checkpoint's.

    Returns whether they were left out.
    """
    weight = conv.state.get("head.cls_logits.weight")
    if num_classes is None or weight is None or weight.shape[0] == num_classes:
        return False
    for key in _CLASS_KEYS:
        if key in conv.state:
            conv.state.pop(key)
            conv.groups[G_PRED] -= 1
            conv.summary.dropped.append(f"{conv.origin[key]} ({weight.shape[0]} classes)")
    conv.summary.notes.append(
        f"The checkpoint has {weight.shape[0]} classes, the model {num_classes}: everything "
        "but the class logits is converted; the class logits start from the model's "
        "initialisation (fine-tuning)."
    )
    return True


# ---- stage 4: validate ------------------------------------------------------------------------
def validate(
    conv: Conversion, model_state: Optional[Mapping[str, Tensor]], new_classes: bool
) -> None:
    """Record required weights that are absent; with ``model_state``, fill in what the
    source cannot have and record missing, unexpected and misshapen keys."""
    conv.missing = [
        f"{key} ({what})" for key, what in _REQUIRED.items()
        if key not in conv.state and not (new_classes and key in _CLASS_KEYS)
    ]
    if not any(k.startswith("backbone.fpn_lateral") for k in conv.state):
        conv.missing.append("backbone.fpn_lateral* (FPN)")
    if model_state is None:
        return
    state, filled = conv.state, conv.summary.filled
    for key, value in model_state.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)  # BatchNorm where the source froze
            filled.append(key)
        elif key not in state and new_classes and key in _CLASS_KEYS:
            state[key] = value.clone()  # the model's initial class logits
            filled.append(key)
    conv.missing += [k for k in model_state if k not in state and k.startswith(_WEIGHT_MODULES)]
    conv.unexpected = [k for k in state if k not in model_state]
    conv.misshapen = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(model_state[k].shape)} "
        "in the model"
        for k in state
        if k in model_state and state[k].shape != model_state[k].shape
    ]


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
        source: a name in :data:`SOURCE_FORMATS` ("adelaidet", "maskrcnn_benchmark",
            "torchvision").
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
    if source not in SOURCE_FORMATS:
        raise ValueError(f"source must be one of {tuple(SOURCE_FORMATS)}, got {source!r}")
    conv = Conversion(SOURCE_FORMATS[source])
    split_towers(conv, rename(conv, state_dict))
    new_classes = apply_fixups(conv, num_classes)
    validate(conv, model_state, new_classes)
    if conv.failed():
        raise ConversionError(error_message(conv))
    summary = conv.summary
    summary.groups = {group: conv.groups[group] for group in GROUPS}
    summary.hints = implied_config(conv.state)
    if num_classes is not None:
        summary.hints["MODEL.FCOS.NUM_CLASSES"] = num_classes
    summary.hints.update(conv.fmt.hints)
    summary.renamed = [
        (new, conv.origin[new], tuple(value.shape))
        for new, value in conv.state.items() if new in conv.origin
    ]
    return conv.state, summary


def _likely_source(keys: List[str], source: str) -> Optional[str]:
    """Another source whose names fit most of the keys that ``source`` could not map."""
    for name, fmt in SOURCE_FORMATS.items():
        if name != source and keys:
            if sum(fmt.matches(k) for k in keys) > len(keys) // 2:
                return name
    return None


def error_message(conv: Conversion) -> str:
    """What went wrong, by kind, with up to 20 keys each."""
    source = conv.fmt.name
    lines = [f"Cannot convert this {source} checkpoint to fcos_d2's FCOS:"]
    other = _likely_source(conv.unmapped, source)
    if other:
        lines.append(f"  The keys look like a {other!r} checkpoint: try source {other!r} "
                     f"(--source {other}).")
    sections = [
        (conv.unmapped, "source key(s) that map to no fcos_d2 weight (another architecture?)"),
        (conv.problems, "structural problem(s)"),
        (conv.missing, "missing weight(s)"),
        ([f"{k} (from {conv.origin.get(k, '?')})" for k in conv.unexpected],
         "converted key(s) the model does not have (config mismatch? see the hints)"),
        (conv.misshapen, "shape mismatch(es) (config mismatch?)"),
    ]
    for keys, what in sections:
        if keys:
            lines.append(f"  {len(keys)} {what}:")
            lines += [f"    {k}" for k in keys[:20]]
            if len(keys) > 20:
                lines.append(f"    ... and {len(keys) - 20} more")
    return "\n".join(lines)
