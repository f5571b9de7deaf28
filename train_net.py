#!/usr/bin/env python
"""Train and evaluate FCOS (or any Detectron2 model using fcos_d2's modules).

    python train_net.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file CFG --resume          # continue a killed run
    python train_net.py --config-file CFG --num-gpus 2      # 2 processes (gloo on CPU)

Your own dataset, without Python (COCO json + image folder, or a Pascal VOC folder;
the class count is taken from the data; see docs/own_dataset.md):

    python train_net.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --train-dataset name=shapes_train,json=DIR/train.json,images=DIR/train \\
        --test-dataset name=shapes_val,json=DIR/val.json,images=DIR/val OUTPUT_DIR output/shapes
"""
import fcos_d2  # registers FCOS modules and the demo datasets
from fcos_d2.checkpoint import FCOSCheckpointer  # also reads AdelaiDet / FCOS / torchvision files
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fcos_d2.data.register import add_dataset_arguments, setup_datasets
from fcos_d2.engine import Trainer, launch


def setup(args):
    """The frozen config of the command line (datasets of --dataset & co. registered),
    with Detectron2's logging and output folder."""
    cfg = fcos_d2.setup_cfg(args.config_file, args.opts, freeze=False)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fcos_d2")
    setup_datasets(cfg, args.dataset, args.train_dataset, args.test_dataset, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FCOSCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:  # evaluate with test-time augmentation after training too
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


if __name__ == "__main__":
    args = add_dataset_arguments(default_argument_parser()).parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
