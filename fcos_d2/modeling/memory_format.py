"""Which memory format (NCHW or NHWC) the FCOS detector runs in, per mode."""
from typing import Tuple

__all__ = ["channels_last_modes"]


def channels_last_modes(cfg) -> Tuple[bool, bool]:
    """(NHWC in training, NHWC at inference) for the config ``cfg``."""
    channels_last = bool(cfg.MODEL.FCOS.CHANNELS_LAST)
    return channels_last, channels_last
