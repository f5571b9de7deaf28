"""What a conversion did: tensors per group, renames, implied config, notes."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from tabulate import tabulate

from .sources import GROUPS

__all__ = ["ConversionSummary"]


@dataclass
class ConversionSummary:
    """What :func:`convert_reference_checkpoint` did, and the config it implies."""

    source: str
    groups: Dict[str, int] = field(default_factory=dict)  # converted tensors per group
    dropped: List[str] = field(default_factory=list)  # source keys left out on purpose
    filled: List[str] = field(default_factory=list)  # target keys given initial values
    hints: Dict[str, Any] = field(default_factory=dict)  # config key -> implied value
    notes: List[str] = field(default_factory=list)
    # (new key, source key, shape) of every converted tensor, in the result's order
    renamed: List[Tuple[str, str, Tuple[int, ...]]] = field(default_factory=list)

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

    def table(self) -> str:
        """The renames as a table, one row per module: fcos_d2's names, the source's,
        and the shapes (parameters of one module grouped as ``module.{a,b}``)."""
        rows = []
        for new_module, old_module, entries in _by_module(self.renamed):
            rows.append((
                _braced(new_module, [new for new, _, _ in entries]),
                _braced(old_module, [old for _, old, _ in entries]),
                " ".join(str(shape).replace(" ", "") for _, _, shape in entries),
            ))
        headers = ("fcos_d2", self.source, "shapes")
        return tabulate(rows, headers=headers, tablefmt="pipe")


def _short_list(keys: List[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _by_module(renamed):
    """Consecutive renames of one module (same new and old module name) together."""
    groups: List[Tuple[str, str, list]] = []
    for new, old, shape in renamed:
        if groups and groups[-1][:2] == (_module(new), _module(old)):
            groups[-1][2].append((new, old, shape))
        else:
            groups.append((_module(new), _module(old), [(new, old, shape)]))
    return groups


def _braced(module: str, keys: List[str]) -> str:
    """``module.{a,b}`` for the keys ``module.a``, ``module.b``; a lone key as it is."""
    if len(keys) == 1:
        return keys[0]
    names = [k[len(module) + 1:] if module else k for k in keys]
    return f"{module}.{{{','.join(names)}}}" if module else "{" + ",".join(names) + "}"
