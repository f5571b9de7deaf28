from .defaults import add_fcos_config
from .setup import setup_cfg

__all__ = ["add_fcos_config", "setup_cfg"]
