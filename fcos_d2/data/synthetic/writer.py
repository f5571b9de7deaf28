"""Writing a split: images drawn in worker processes, one COCO json, a stamp of what
was generated; :func:`generate_split` writes into a temporary folder renamed into place."""
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from .config import DEMO_CLASSES, GENERATOR_VERSION, SyntheticConfig
from .layout import PlacedObject, generate_image


logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 500
_CHUNK = 50


@dataclass(frozen=True)
class SplitFiles:
    """Where a generated split lives."""

    json_file: str
    image_root: str


def coco_categories() -> List[Dict]:
    """The COCO ``categories`` list (ids 1..5)."""
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(DEMO_CLASSES)
    ]


def image_file_name(index: int) -> str:
    """File name of image ``index`` inside the split's image folder."""
    return f"{index:06d}.png"


def annotation_records(objects: Iterable[PlacedObject], image_id: int) -> List[Dict]:
    """COCO ``annotations`` entries (without ``id``) of one image's objects."""
    records = []
    for obj in objects:
        records.append(
            {
                "image_id": image_id,
                "category_id": obj.category + 1,
                "bbox": [float(v) for v in obj.bbox],
                "area": float(obj.area),
                "iscrowd": int(obj.iscrowd),
                "segmentation": obj.segmentation,
            }
        )
    return records


def split_stamp(split: str, num_images: int, config: SyntheticConfig) -> Dict:
    """What a cached split must match to be reused."""
    return {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "config": json.loads(json.dumps(asdict(config))),
    }


def _report(message: str) -> None:
    """Progress message: to the logger when logging is set up, else to stderr."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(f"[fcos_demo] {message}", file=sys.stderr, flush=True)


def render_images(
    image_dir: str, split: str, indices: Sequence[int], config: SyntheticConfig
) -> List[Tuple[Dict, List[Dict]]]:
    """Draw and save images; per image its COCO ``images`` entry and its annotations
    (without annotation ids, which are numbered later in image order)."""
    results = []
    for index in indices:
        pixels, objects = generate_image(split, index, config)
        file_name = image_file_name(index)
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=1)
        image_id = index + 1
        height, width = pixels.shape[:2]
        entry = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        results.append((entry, annotation_records(objects, image_id)))
    return results


def _render_chunk(
    args: Tuple[str, str, Sequence[int], SyntheticConfig]
) -> List[Tuple[Dict, List[Dict]]]:
    """Process-pool entry point of :func:`render_images`."""
    return render_images(*args)


def default_workers(num_images: int) -> int:
    """Processes to generate with: up to 4, one for small splits or inside a daemon."""
    if num_images < 200 or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def render_all(
    image_dir: str, split: str, num_images: int, config: SyntheticConfig, workers: int
) -> Iterator[Tuple[Dict, List[Dict]]]:
    """Render every image of a split (in order), in ``workers`` processes."""
    chunk = max(1, min(_CHUNK, -(-num_images // (4 * max(workers, 1)))))
    chunks = [range(i, min(i + chunk, num_images)) for i in range(0, num_images, chunk)]
    jobs = [(image_dir, split, chunk, config) for chunk in chunks]
    if workers <= 1:
        for job in jobs:
            yield from _render_chunk(job)
        return
    with multiprocessing.Pool(workers) as pool:
        for results in pool.imap(_render_chunk, jobs):
            yield from results


def write_split(
    out_dir: str,
    split: str,
    num_images: int,
    config: SyntheticConfig,
    workers: Optional[int] = None,
) -> None:
    """Generate a split into ``out_dir`` (images/, annotations.json, stamp.json last)."""
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    workers = default_workers(num_images) if workers is None else workers
    images, annotations = [], []
    start = time.perf_counter()
    for entry, records in render_all(image_dir, split, num_images, config, workers):
        images.append(entry)
        for record in records:
            annotations.append({"id": len(annotations) + 1, **record})
        if len(images) % _PROGRESS_EVERY == 0 and len(images) < num_images:
            elapsed = time.perf_counter() - start
            _report(f"{split}: {len(images)}/{num_images} images ({elapsed:.1f} s)")
    coco = {
        "info": {"description": "fcos_d2 synthetic shapes", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)
    with open(os.path.join(out_dir, "stamp.json"), "w") as f:
        json.dump(split_stamp(split, num_images, config), f, indent=1)
    _report(
        f"{split}: {num_images} images, {len(annotations)} annotations "
        f"in {time.perf_counter() - start:.1f} s ({workers} process(es))"
    )


def split_files(root: str, split: str) -> SplitFiles:
    """Paths of a split's json and image folder under ``root``."""
    split_dir = os.path.join(root, split)
    return SplitFiles(
        os.path.join(split_dir, "annotations.json"), os.path.join(split_dir, "images")
    )


def generate_split(
    root: str, split: str, num_images: int, config: SyntheticConfig = SyntheticConfig(),
    workers: Optional[int] = None,
) -> SplitFiles:
    """(Re)generate a split under ``root`` atomically: temp folder, then rename into place.

    ``workers`` processes draw the images (default: :func:`default_workers`); the result
    does not depend on it.
    """
    os.makedirs(root, exist_ok=True)
    final_dir = os.path.join(root, split)
    tmp_dir = tempfile.mkdtemp(prefix=f".{split}-tmp-", dir=root)
    try:
        _report(f"generating {num_images} {split} images into {final_dir}")
        write_split(tmp_dir, split, num_images, config, workers)
        if os.path.exists(final_dir):
            stale = tempfile.mkdtemp(prefix=f".{split}-old-", dir=root)
            os.rename(final_dir, os.path.join(stale, split))
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return split_files(root, split)
