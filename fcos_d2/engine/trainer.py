"""Detectron2's DefaultTrainer with an evaluator chosen by the dataset's evaluator_type,
multi-process training of CPU models, and resumption of the data stream."""
import itertools
import logging
import os
import weakref
from typing import Callable, Iterable

import torch

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.utils.logger import setup_logger
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator

from ..checkpoint import FCOSCheckpointer  # also reads AdelaiDet / FCOS / torchvision files
from ..data.checks import check_dataset_classes
from .amp import AMPTrainer, training_precision
from ..data.mapper import FCOSDatasetMapper
from ..modeling.tta import with_tta

logger = logging.getLogger(__name__)

__all__ = [
    "Trainer",
    "ResumableTrainingSampler",
    "StartIterLoader",
    "build_evaluator",
    "create_ddp_model",
]


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """``detectron2.engine.create_ddp_model`` for CPU models too.

    Detectron2's version passes ``device_ids=[local_rank]``, which DistributedDataParallel
    rejects for a model on the CPU (multi-process CPU training with gloo); a CPU model gets
    ``device_ids=None``.  With one process the model is returned unchanged.
    """
    if "device_ids" not in kwargs:
        devices = {p.device.type for p in model.parameters()}
        kwargs["device_ids"] = None if devices == {"cpu"} else [comm.get_local_rank()]
    return d2_create_ddp_model(model, **kwargs)


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


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's infinite shuffled index stream of this worker, minus its first ``skip``."""

    def __init__(self, size: int, shuffle: bool = True, seed=None, skip: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._skip = skip

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self._skip, None)


class StartIterLoader:
    """The training batches of a run that starts at iteration ``start_iter()``.

    DefaultTrainer builds its data loader before ``resume_or_load`` knows where the run
    starts, and SimpleTrainer may call ``iter()`` on it right away.  This iterable decides
    at the first batch: ``loader`` (built for iteration 0) for a fresh run, else
    ``rebuild(start_iter)``, which skips what the iterations before consumed.
    """

    def __init__(self, loader, rebuild: Callable[[int], Iterable], start_iter: Callable[[], int]):
        self.loader = loader
        self.rebuild = rebuild
        self.start_iter = start_iter

    def __iter__(self):
        # A generator: its body (the choice) runs at the first next(), not at iter().
        start = self.start_iter()
        yield from (self.loader if start == 0 else self.rebuild(start))


class Trainer(DefaultTrainer):
    """DefaultTrainer (checkpoints, ETA and metrics logging, periodic evaluation) with
    :class:`FCOSDatasetMapper`, an evaluator picked by the dataset's evaluator_type, CPU
    models in DistributedDataParallel, mixed precision on CPUs and CUDA
    (``SOLVER.AMP``, :class:`~fcos_d2.engine.amp.AMPTrainer`), and a resumed run
    (``resume_or_load``) that continues the training data stream where the checkpointed
    run left it (with the gradient scaler's state)."""

    def __init__(self, cfg):
        """DefaultTrainer's construction, with :func:`create_ddp_model` (CPU models too)."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        # The order of DefaultTrainer: model, optimizer, data loader.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = StartIterLoader(
            self.build_train_loader(cfg),  # checks the dataset's classes now
            rebuild=lambda start_iter: self.build_train_loader(self.cfg, start_iter),
            start_iter=lambda: self.start_iter,
        )
        model = create_ddp_model(model, broadcast_buffers=False)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = AMPTrainer(
                model, data_loader, optimizer, cfg.MODEL.DEVICE, training_precision(cfg)
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FCOSCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # Detectron2 0.6's DefaultTrainer checkpoints only the iteration and the hooks (LR
    # scheduler), not the optimizer state of its inner trainer; newer versions do what
    # these two methods do.
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """Training batches with :class:`FCOSDatasetMapper`, after checking the classes.

        ``start_iter`` skips the images that iterations [0, start_iter) consumed, so a
        resumed run sees what an uninterrupted one would (given a fixed ``SEED``).
        """
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_dataset_classes(cfg, list(cfg.DATASETS.TRAIN), dataset)
        seed = cfg.SEED if cfg.SEED >= 0 else None
        if start_iter > 0 and seed is None:
            logger.warning("SEED < 0: the resumed run's image order differs from the original")
        per_worker_batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        sampler = ResumableTrainingSampler(
            len(dataset), seed=seed, skip=start_iter * per_worker_batch
        )
        return build_detection_train_loader(
            cfg, mapper=FCOSDatasetMapper(cfg, True), dataset=dataset, sampler=sampler
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=FCOSDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return DatasetEvaluators([build_evaluator(cfg, dataset_name, output_folder)])

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with test-time augmentation (TEST.AUG.*); results keyed "<task>_TTA"."""
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, with_tta(cfg, model), evaluators)
        return {f"{task}_TTA": metrics for task, metrics in results.items()}
