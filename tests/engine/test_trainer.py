"""The trainer (fcos_d2.engine.trainer): short train -> evaluate -> checkpoint -> reload round
trips on a tiny demo subset; a NaN loss stops training with the iteration and the term."""
import math
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import make_inputs, tiny_cfg
from fcos_d2.data import DEMO_CLASSES, ensure_demo_dataset
from fcos_d2.engine import Trainer


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The first 24 train / 12 val demo images, registered as rt_train / rt_val."""
    root = str(tmp_path_factory.mktemp("demo"))
    files = ensure_demo_dataset(root, sizes={"train": 24, "val": 12})
    for name, split in (("rt_train", "train"), ("rt_val", "val")):
        if name not in DatasetCatalog.list():
            f = files[split]
            DatasetCatalog.register(
                name, lambda f=f, name=name: load_coco_json(f.json_file, f.image_root, name)
            )
            MetadataCatalog.get(name).set(thing_classes=list(DEMO_CLASSES), evaluator_type="coco")
    return root


def roundtrip_cfg(output_dir, two_stage=False):
    cfg = tiny_cfg(two_stage=two_stage, num_classes=len(DEMO_CLASSES))
    cfg.DATASETS.TRAIN = ("rt_train",)
    cfg.DATASETS.TEST = ("rt_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = 12
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 6
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 1
    return cfg


def detections(model, cfg):
    model.eval()
    loader = Trainer.build_test_loader(cfg, "rt_val")
    out = []
    with torch.no_grad():
        for inputs in loader:
            out.extend(r["instances"] for r in model(inputs))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("two_stage", [False, True], ids=["fcos", "fcos_rpn_faster_rcnn"])
def test_train_evaluate_checkpoint_reload(tiny_demo, tmp_path, two_stage):
    cfg = roundtrip_cfg(tmp_path, two_stage)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.exists(tmp_path / "model_0000005.pth")
    assert os.path.exists(tmp_path / "model_final.pth")

    results = Trainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert all(math.isfinite(v) or math.isnan(v) for v in results["bbox"].values())

    reloaded = build_model(cfg)
    DetectionCheckpointer(reloaded).load(str(tmp_path / "model_final.pth"))
    before, after = detections(trainer.model, cfg), detections(reloaded, cfg)
    assert sum(len(x) for x in before) > 0
    for a, b in zip(before, after):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)
    reloaded_ap = Trainer.test(cfg, reloaded)["bbox"]["AP"]
    assert reloaded_ap == pytest.approx(results["bbox"]["AP"], nan_ok=True)


def test_nan_loss_stops_training_naming_iteration_and_term(tmp_path):
    from detectron2.engine import SimpleTrainer

    model = build_model(tiny_cfg()).train()
    with torch.no_grad():
        model.head.ctrness.bias.fill_(float("nan"))
    data = iter(lambda: make_inputs([[[10, 10, 60, 50]], [[0, 0, 40, 40]]]), None)
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.0))
    with EventStorage(start_iter=3) as storage:
        trainer.storage = storage
        trainer.iter = 3
        with pytest.raises(FloatingPointError, match=r"iteration=3(.|\n)*'loss_fcos_ctr': .*nan"):
            trainer.run_step()
