"""The FCOS head's outputs laid out per level (:class:`FCOSPredictions`) and the levels'
locations: what the post-processor, the losses and the exported graphs read.

Both script (``torch.jit.script``): :class:`FCOSPredictions` is a TorchScript class, and
:func:`level_locations` computes the locations in a recorded or compiled graph instead of
taking them from its Python-side cache.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .recording import recording
from .targets import compute_locations

__all__ = ["FCOSPredictions", "level_locations"]


@torch.jit.unused  # a Python-side cache: never reached in a graph (see level_locations)
@lru_cache(maxsize=128)
def _cached_locations(
    height: int,
    width: int,
    stride: int,
    device: torch.device,
    offset: float,
    spacing: Optional[Tuple[int, int]],
) -> Tensor:
    return compute_locations(height, width, stride, device, offset, spacing)


def _spacing(input_size: Tuple[int, int], feature: Tensor, tracing: bool) -> Tuple[int, int]:
    """(H // Hi, W // Wi): Python ints, or while tracing the traced sizes' quotients, so
    that an exported graph computes the spacing of each input it is given."""
    if tracing:
        return input_size[0] // feature.shape[-2], input_size[1] // feature.shape[-1]
    return (
        int(input_size[0]) // int(feature.shape[-2]),
        int(input_size[1]) // int(feature.shape[-1]),
    )


def level_locations(
    features: List[Tensor],
    strides: List[int],
    offset: float = 0.5,
    input_size: Optional[Tuple[int, int]] = None,
) -> List[Tensor]:
    """Per level, the (Hi*Wi, 2) image coordinates of its locations (cached per size).

    ``offset``: see :func:`compute_locations`. With ``input_size`` (the padded input's
    (H, W)), the locations of a level are spaced by (H // Hi, W // Wi) instead of its
    stride, as torchvision's ``AnchorGenerator`` spaces its anchors.

    The returned tensors are shared between calls: do not modify them in place. While a
    graph is recorded or compiled (:func:`~fcos_d2.modeling.recording.recording`), they
    are computed from its shapes instead, so an exported graph follows the input size.
    """
    tracing = recording()
    locations: List[Tensor] = []
    for f, s in zip(features, strides):
        spacing = None if input_size is None else _spacing(input_size, f, tracing)
        height, width = f.shape[-2], f.shape[-1]
        if tracing:
            locations.append(
                compute_locations(height, width, int(s), f.device, float(offset), spacing)
            )
        else:
            locations.append(
                _cached_locations(height, width, int(s), f.device, float(offset), spacing)
            )
    return locations


def _per_level(maps: List[Tensor]) -> List[Tensor]:
    """Per-level (N, C, Hi, Wi) maps -> (N, Hi*Wi, C), row-major."""
    return [m.flatten(2).transpose(1, 2) for m in maps]


@dataclass(eq=False, repr=False)
class FCOSPredictions:
    """The head's outputs for one batch, per level ``l`` (``Rl`` = Hl * Wl locations).

    A dataclass (``dataclasses.replace`` works) whose ``__init__`` is written out and
    without generated ``__eq__`` / ``__repr__``: TorchScript compiles the class, but not
    the methods that ``dataclass`` generates."""

    locations: List[Tensor]  # (Rl, 2) image coordinates of the locations
    strides: List[int]
    logits: List[Tensor]  # (N, Rl, K) class logits
    box_dists: List[Tensor]  # (N, Rl, 4) (l, t, r, b) distances in stride units
    ctrness: List[Tensor]  # (N, Rl) centerness (box quality) logits

    def __init__(
        self,
        locations: List[Tensor],
        strides: List[int],
        logits: List[Tensor],
        box_dists: List[Tensor],
        ctrness: List[Tensor],
    ):
        self.locations = locations
        self.strides = strides
        self.logits = logits
        self.box_dists = box_dists
        self.ctrness = ctrness

    @staticmethod  # (a classmethod does not script)
    def from_head(
        features: List[Tensor],
        strides: List[int],
        head_outputs: Tuple[List[Tensor], List[Tensor], List[Tensor]],
        location_offset: float = 0.5,
        input_size: Optional[Tuple[int, int]] = None,
    ):  # -> FCOSPredictions (TorchScript infers it: it cannot read a quoted annotation)
        """From the feature maps (for their sizes) and the head's per-level
        (logits, box distances, centerness) maps of shape (N, C, Hl, Wl); the locations'
        ``location_offset`` and ``input_size`` as in :func:`level_locations`."""
        # Under autocast the head's maps may be float16 / bfloat16: everything after the
        # head (targets, losses, decoding, NMS) computes in float32.
        logits = [m.float() for m in head_outputs[0]]
        box_dists = [m.float() for m in head_outputs[1]]
        ctrness = [m.float() for m in head_outputs[2]]
        return FCOSPredictions(
            locations=level_locations(features, strides, location_offset, input_size),
            strides=list(strides),
            logits=_per_level(logits),
            box_dists=_per_level(box_dists),
            ctrness=[c.flatten(1) for c in ctrness],
        )
