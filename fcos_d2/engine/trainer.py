"""Detectron2's DefaultTrainer with an evaluator chosen by the dataset's evaluator_type."""
import os

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator

from ..data.mapper import FCOSDatasetMapper

__all__ = ["Trainer", "build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """COCO or Pascal VOC evaluation, following ``MetadataCatalog[name].evaluator_type``."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} with evaluator_type={evaluator_type!r}; "
        "set MetadataCatalog.get(name).evaluator_type to 'coco' or 'pascal_voc'"
    )


class Trainer(DefaultTrainer):
    """DefaultTrainer (checkpoints, ETA and metrics logging, periodic evaluation) with
    :class:`FCOSDatasetMapper` and an evaluator picked by the dataset's evaluator_type."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=FCOSDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=FCOSDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return DatasetEvaluators([build_evaluator(cfg, dataset_name, output_folder)])
