"""train_net.py with two CPU processes (gloo): checkpoint, resume, evaluate."""
import math
import os

import pytest
import torch

from helpers import REPO


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


@pytest.mark.slow
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
