"""Reading reference checkpoint files and writing converted ones."""
import pickle
from typing import Dict, Mapping, Union

import numpy as np
import torch
from torch import Tensor

from .convert import ConversionError

__all__ = ["load_reference_checkpoint", "save_converted_checkpoint"]


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
