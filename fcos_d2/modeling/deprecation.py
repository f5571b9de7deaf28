"""Keyword arguments that were renamed: the old name still works, with a warning."""
import warnings
from typing import Any, Dict

__all__ = ["renamed_argument"]


def renamed_argument(
    where: str, kwargs: Dict[str, Any], old: str, new: str, value: Any, invert: bool = False
) -> Any:
    """The value of argument ``new`` of ``where``: ``kwargs[old]`` (``not kwargs[old]``
    with ``invert``) when the caller used the old name, with a ``FutureWarning`` that says
    to use ``new``; otherwise ``value``.

    Args:
        where: the callable's name, for the messages (e.g. "FCOSPostProcessor").
        kwargs: the keyword arguments the callable did not declare.
        old, new: the argument's old and new names.
        value: what the caller gave under the new name.
        invert: the old argument was a bool of the opposite sense (e.g. "keep" -> "remove").
    Raises:
        TypeError: for any other undeclared keyword, as Python raises it.
    """
    unknown = sorted(set(kwargs) - {old})
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if old not in kwargs:
        return value
    given = kwargs[old]
    result = (not given) if invert else given
    warnings.warn(
        f"{where}: the argument {old!r} is deprecated, use {new}={result!r} instead of "
        f"{old}={given!r}",
        FutureWarning,
        stacklevel=3,
    )
    return result
