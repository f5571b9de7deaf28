"""Short train -> evaluate -> checkpoint -> reload round trips on a tiny demo subset."""
import math
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model

from helpers import REPO, tiny_cfg
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


# ---------------------------------------------------------------------------------------
# train_net.py with two CPU processes (gloo): checkpoint, resume, evaluate
# ---------------------------------------------------------------------------------------

_TWO_PROCESS_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", '("fcos_demo_train_mini",)',
    "DATASETS.TEST", '("fcos_demo_val_mini",)',
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "2",
]  # fmt: skip


def _train_net(output_dir, data_dir, max_iter, *extra):
    import subprocess
    import sys

    cmd = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "2",
        "--dist-url", "auto", "--config-file",
        os.path.join(REPO, "configs/FCOS-Demo/fcos_R_18_demo.yaml"), *extra,
        *_TWO_PROCESS_OPTS, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip
    env = dict(os.environ, FCOS_D2_DATASETS=str(data_dir), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout + res.stderr


def _iterations_logged(output_dir):
    import json

    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "loss_fcos_cls" in r]
    assert all(math.isfinite(r["total_loss"]) for r in rows)
    return [r["iteration"] for r in rows]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) launch path")
def test_train_net_two_cpu_processes_checkpoint_resume_evaluate(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    log = _train_net(out, data, 3)
    assert "Rank of current process: 0. World size: 2" in log
    first = torch.load(out / "model_final.pth", weights_only=False)
    assert first["iteration"] == 2  # iterations 0, 1, 2
    assert os.path.exists(out / "model_0000001.pth")  # CHECKPOINT_PERIOD 2
    assert _iterations_logged(out) == [2]  # the writers log every 20 iterations and the last

    log = _train_net(out, data, 6, "--resume")
    assert "Starting training from iteration 3" in log
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 5
    assert _iterations_logged(out) == [2, 5]  # appended by the resumed run
    changed = [k for k in first["model"] if not torch.equal(first["model"][k], final["model"][k])]
    assert changed  # the resumed run trained
    # evaluation on fcos_demo_val_mini at the end of the run: its 32 images split between
    # the two processes, results gathered on the main one
    assert "Start inference on 16 batches" in log
    assert log.count("Evaluation results for bbox") == 1
