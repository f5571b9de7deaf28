"""Whether the code runs in a graph being recorded or compiled, where counts and sizes are
symbolic: the FCOS inference code then skips its Python-side caches, logs and branches."""
import torch

__all__ = ["exporting", "recording"]


def recording() -> bool:
    """Whether a graph is being recorded (``torch.jit.trace``, ``torch.export``) or
    compiled (``torch.jit.script``): counts and sizes are then symbolic, no Python branch
    may depend on them, and Python-side caches and logs are skipped."""
    if torch.jit.is_scripting():
        return True
    return torch.jit.is_tracing() or exporting()


def exporting() -> bool:
    """Whether ``torch.export`` records the code (never in TorchScript, which cannot ask)."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_exporting()
