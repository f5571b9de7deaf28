"""The dataset folder: where it is, which splits are current, and generating the
missing ones once across processes (a lock per split)."""
import contextlib
import json
import os
import shutil
from typing import Dict, Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from .config import DEFAULT_SPLIT_SIZES, SyntheticConfig
from .writer import SplitFiles, generate_split, split_files, split_stamp


def resolve_root(root: Optional[str] = None) -> str:
    """The dataset folder: ``root``, else $FCOS_D2_DATASETS, else
    $DETECTRON2_DATASETS/fcos_demo, else ./datasets/fcos_demo."""
    if root:
        return root
    if os.environ.get("FCOS_D2_DATASETS"):
        return os.environ["FCOS_D2_DATASETS"]
    if os.environ.get("DETECTRON2_DATASETS"):
        return os.path.join(os.environ["DETECTRON2_DATASETS"], "fcos_demo")
    return os.path.join("datasets", "fcos_demo")


def is_split_current(root: str, split: str, num_images: int, config: SyntheticConfig) -> bool:
    """Whether ``root`` holds a complete split generated with these parameters."""
    stamp_path = os.path.join(root, split, "stamp.json")
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return stamp == split_stamp(split, num_images, config) and os.path.isfile(
        split_files(root, split).json_file
    )


@contextlib.contextmanager
def split_lock(root: str, split: str) -> Iterator[None]:
    """Exclusive lock on a split across processes (e.g. the ranks of a multi-GPU run);
    a no-op where ``fcntl`` is unavailable."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{split}.lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers(root: str, split: str) -> None:
    """Delete temporary folders that an interrupted generation of ``split`` left behind."""
    for name in os.listdir(root):
        if name.startswith((f".{split}-tmp-", f".{split}-old-")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def ensure_demo_dataset(
    root: Optional[str] = None,
    splits: Sequence[str] = ("train", "val"),
    sizes: Optional[Dict[str, int]] = None,
    config: SyntheticConfig = SyntheticConfig(),
) -> Dict[str, SplitFiles]:
    """Make sure the splits exist under ``root`` (generating what is missing or stale).

    Args:
        root: dataset folder; see :func:`resolve_root`.
        splits: which splits to check, from "train" and "val".
        sizes: number of images per split (default :data:`DEFAULT_SPLIT_SIZES`).
        config: generator parameters.

    Returns:
        split name -> :class:`SplitFiles`.
    """
    root = resolve_root(root)
    sizes = {**DEFAULT_SPLIT_SIZES, **(sizes or {})}
    files = {}
    for split in splits:
        if not is_split_current(root, split, sizes[split], config):
            with split_lock(root, split):
                # another process may have generated it while we waited for the lock
                if not is_split_current(root, split, sizes[split], config):
                    remove_leftovers(root, split)
                    generate_split(root, split, sizes[split], config)
        files[split] = split_files(root, split)
    return files
