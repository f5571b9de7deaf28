"""A tiny training job for the resumption test (run as a subprocess, not collected).

    python tests/engine/resume_job.py DATA_ROOT OUTPUT_DIR [--resume] [--kill-after ITER]

``--kill-after N`` SIGKILLs the process right after iteration N (a checkpoint is written
every 2 iterations), as a crash or a pre-empted job would end.
"""
import argparse
import os
import signal
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from fcos_d2.data import DEMO_CLASSES, ensure_demo_dataset
from fcos_d2.engine import Trainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import tiny_cfg  # noqa: E402


class KillAfter(HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_root")
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()

    files = ensure_demo_dataset(args.data_root, splits=("train",), sizes={"train": 16})["train"]
    DatasetCatalog.register(
        "resume_train", lambda: load_coco_json(files.json_file, files.image_root, "resume_train")
    )
    MetadataCatalog.get("resume_train").set(thing_classes=list(DEMO_CLASSES))

    cfg = tiny_cfg(num_classes=len(DEMO_CLASSES))
    cfg.DATASETS.TRAIN = ("resume_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = 8
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SEED = 3
    cfg.OUTPUT_DIR = args.output_dir

    seed_all_rng(cfg.SEED)  # as train_net.py's default_setup does
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    print(f"START_ITER {trainer.start_iter}", flush=True)
    if args.kill_after is not None:
        trainer.register_hooks([KillAfter(args.kill_after)])
    trainer.train()


if __name__ == "__main__":
    main()
