"""Resumption after SIGKILL: a killed training run, resumed, ends with the weights, optimizer
and scheduler state of a run that was not interrupted (the job: tests/engine/resume_job.py)."""
import os

import pytest

import torch

from helpers import REPO


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    import signal
    import subprocess
    import sys

    job = os.path.join(REPO, "tests", "engine", "resume_job.py")
    data = str(tmp_path / "data")

    def run(out, *extra):
        return subprocess.run(
            [sys.executable, job, data, str(out), *extra], capture_output=True, text=True,
            timeout=300,
        )

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run(tmp_path / "killed", "--kill-after", "4")
    assert killed.returncode == -signal.SIGKILL
    # iterations 0-4 ran; checkpoints after iterations 1 and 3 exist, none after 5
    assert os.path.exists(tmp_path / "killed" / "model_0000003.pth")
    assert not os.path.exists(tmp_path / "killed" / "model_final.pth")

    resumed = run(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "START_ITER 4" in resumed.stdout  # continues after the last checkpoint (iter 3)

    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=False)
    b = torch.load(tmp_path / "killed" / "model_final.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == 7
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["trainer"]["hooks"] == b["trainer"]["hooks"]  # LR scheduler state
    opt_a, opt_b = a["trainer"]["_trainer"]["optimizer"], b["trainer"]["_trainer"]["optimizer"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and len(opt_a["state"]) > 0
    for key in opt_a["state"]:
        buffer_a, buffer_b = (o["state"][key]["momentum_buffer"] for o in (opt_a, opt_b))
        assert torch.equal(buffer_a, buffer_b)
