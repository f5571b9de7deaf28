"""The walk-through of docs/own_dataset.md end to end: train_net.py, demo.py and
tools/plot_metrics.py on a dataset folder of the user's, outside the repository."""
import json
import os
import subprocess
import sys

import pytest

from helpers import COCO_CATEGORIES, REPO, write_coco_folder


def run_script(args, cwd, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_walk_through_train_evaluate_demo(tmp_path):
    data = tmp_path / "shapes"  # the user's folder, outside the repository
    train_json, train_images = write_coco_folder(str(data), "train", 24, seed=1)
    val_json, val_images = write_coco_folder(str(data), "val", 6, seed=2)
    out = tmp_path / "run"
    train_net = os.path.join(REPO, "train_net.py")
    config = os.path.join(REPO, "configs/FCOS-Demo/fcos_R_18_demo.yaml")
    log = run_script([
        train_net, "--config-file", config,
        "--train-dataset", f"name=shapes_train,json={train_json},images={train_images}",
        "--test-dataset", f"name=shapes_val,json={val_json},images={val_images}",
        "SOLVER.MAX_ITER", "20", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "5",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "VIS_PERIOD", "10",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
    ], cwd=str(tmp_path))
    assert "MODEL.FCOS.NUM_CLASSES 2, from dataset 'shapes_train'" in log
    assert os.path.isfile(out / "model_final.pth")
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert any("bbox/AP" in r for r in records)  # evaluated by COCOEvaluator
    assert all(r["num_pos_anchors"] > 0 for r in records if "loss_fcos_cls" in r)
    assert "bbox/AP-square" in next(r for r in records if "bbox/AP" in r)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"images": 0})
    events.Reload()
    from fcos_d2.modeling.visualize import VIS_NAME

    assert VIS_NAME in events.Tags()["images"]
    assert [e.step for e in events.Images(VIS_NAME)] == [0, 10]

    demo_out = tmp_path / "demo_out"
    log = run_script([
        os.path.join(REPO, "demo.py"), "--config-file", str(out / "config.yaml"),
        "--dataset", f"name=shapes_val,json={val_json},images={val_images}",
        "--input", val_images, "--output", str(demo_out), "--confidence-threshold", "0.05",
        "--opts", "MODEL.WEIGHTS", str(out / "model_final.pth"),
    ], cwd=str(tmp_path))
    assert sorted(os.listdir(demo_out)) == sorted(
        os.listdir(val_images) + ["images.json", "results.json"]
    )
    with open(demo_out / "images.json") as f:
        assert json.load(f)["categories"] == COCO_CATEGORIES
    with open(demo_out / "results.json") as f:
        assert {r["category_id"] for r in json.load(f)} <= {3, 7}

    png = tmp_path / "curves.png"
    log = run_script([os.path.join(REPO, "tools/plot_metrics.py"), str(out / "metrics.json"),
                      "--output", str(png)], cwd=str(tmp_path))
    assert "losses, positives, AP" in log and png.stat().st_size > 5000
