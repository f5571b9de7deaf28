"""One process with 4 images and 2 processes with 2 images each give the same FCOS losses and,
after DistributedDataParallel's averaging, the same head gradients.

FCOS normalises its losses by the number of positives averaged over the workers
(``fcos_d2.modeling.losses.mean_over_workers``), so each worker's loss is its share of the
global sum divided by the mean count; Detectron2 backpropagates the sum of the loss dict
unscaled and DDP averages the gradients over the workers.  The mean of the workers' losses
(what Detectron2 logs) and the averaged gradients are then those of one process on the
whole batch.  The backbone uses FrozenBN (GroupNorm elsewhere) and every image has the same
size, so that nothing else depends on how the batch is split.
"""
import json
import os

import pytest
import torch

from helpers import make_inputs, tiny_cfg
from fcos_d2.engine.launch import launch
from fcos_d2.engine.trainer import create_ddp_model

LOSS_KEYS = ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr")

# 4 images of 96x128 with 1, 3, 0 and 2 objects (an image without any is allowed)
BOXES = [
    [[10.0, 12.0, 60.0, 70.0]],
    [[5.0, 5.0, 40.0, 30.0], [50.0, 20.0, 120.0, 90.0], [70.0, 60.0, 100.0, 94.0]],
    [],
    [[0.0, 0.0, 127.0, 95.0], [30.0, 40.0, 50.0, 64.0]],
]


def _cfg(two_stage):
    cfg = tiny_cfg(two_stage=two_stage)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # batch statistics would depend on the split
    return cfg


def _losses_and_grads(two_stage, state_dict, inputs, wrap):
    """Losses of ``inputs`` and the gradients of the FCOS head after backward of their sum."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(two_stage))
    model.load_state_dict(state_dict)
    model.train()
    if two_stage:
        # Only the proposal generator: the ROI heads sample proposals at random.
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        gt = [x["instances"] for x in inputs]
        _, losses = model.proposal_generator(images, features, gt)
        return {k: float(v.detach()) for k, v in losses.items()}, None
    net = create_ddp_model(model, broadcast_buffers=False) if wrap else model
    losses = net(inputs)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("head.")}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def _worker(two_stage, state_path, out_dir):
    """Runs in each of the 2 processes: images [2 * rank, 2 * rank + 2)."""
    from detectron2.utils import comm

    rank = comm.get_rank()
    state = torch.load(state_path, weights_only=False)
    inputs = make_inputs(BOXES)[2 * rank : 2 * rank + 2]
    losses, grads = _losses_and_grads(two_stage, state, inputs, wrap=True)
    with open(os.path.join(out_dir, f"losses{rank}.json"), "w") as f:
        json.dump(losses, f)
    if grads is not None:
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pth"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) launch path")
@pytest.mark.parametrize("two_stage", [False, True], ids=["fcos", "fcos_proposals"])
def test_one_and_two_workers_agree(tmp_path, two_stage, one_thread):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    state = build_model(_cfg(two_stage)).state_dict()
    state_path = tmp_path / "init.pth"
    torch.save(state, state_path)

    single, single_grads = _losses_and_grads(two_stage, state, make_inputs(BOXES), wrap=False)
    assert set(single) >= set(LOSS_KEYS)
    assert all(v > 0 for v in single.values())

    launch(_worker, 2, args=(two_stage, str(state_path), str(tmp_path)))
    per_worker = [json.loads((tmp_path / f"losses{r}.json").read_text()) for r in range(2)]
    assert per_worker[0] != per_worker[1]  # the two halves differ ...
    for key in single:  # ... and their mean (what Detectron2 logs) is the single-process loss
        mean = (per_worker[0][key] + per_worker[1][key]) / 2
        assert mean == pytest.approx(single[key], abs=1e-5), key

    if not two_stage:
        for r in range(2):
            grads = torch.load(tmp_path / f"grads{r}.pth", weights_only=False)
            assert grads.keys() == single_grads.keys() and len(grads) > 0
            for name, g in grads.items():  # DDP-averaged: identical on both workers
                torch.testing.assert_close(g, single_grads[name], rtol=1e-4, atol=1e-6, msg=name)
