"""The config values that converted FCOS weights imply (yacs keys), read off their names
and shapes."""
import re
from collections import Counter
from typing import Any, Dict, Mapping

from torch import Tensor

__all__ = ["implied_config"]


def _norm_kind(state: Mapping[str, Tensor], prefix: str) -> str:
    """"GN", "BN", "FrozenBN" or "" for the norm whose keys start with ``prefix``."""
    if f"{prefix}.running_mean" in state:
        return "BN" if f"{prefix}.num_batches_tracked" in state else "FrozenBN"
    return "GN" if f"{prefix}.weight" in state else ""


def implied_config(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """Config values implied by the converted weights (yacs keys): ResNet, FPN, head."""
    return {**_resnet_config(state), **_fpn_config(state), **_head_config(state)}


def _resnet_config(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """Depth (blocks per stage), widths, groups and norm of ``backbone.bottom_up``."""
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
    return hints


def _fpn_config(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """FPN inputs, width and norm, and where P6 reads from."""
    hints: Dict[str, Any] = {}
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
    return hints


def _head_config(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """Classes, tower depths and norm, and the per-level scales of the FCOS head."""
    hints: Dict[str, Any] = {}
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
