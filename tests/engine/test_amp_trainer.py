"""SOLVER.AMP training (fcos_d2.engine.amp): bfloat16, and float16 with a GradScaler, on CPU
and, where there is a GPU, on CUDA (the precision rule and TEST.AMP inference:
tests/modeling/test_execution.py)."""
import os

import pytest
import torch

from helpers import DEVICES, REDUCED_PRECISION, conv_output_dtypes, tiny_cfg


def _train_cfg(tmp_path, precision, iters, size=128, batch=4, device="cpu"):
    from fcos_d2.data import DEMO_CLASSES

    cfg = tiny_cfg(num_classes=len(DEMO_CLASSES), device=device)
    cfg.DATASETS.TRAIN = ("fcos_demo_train_mini",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (size,)
    cfg.INPUT.MAX_SIZE_TRAIN = size
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 5
    cfg.SOLVER.CHECKPOINT_PERIOD = 10
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = precision
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = 3
    return cfg


def _losses(trainer):
    """The total loss of every iteration, from the trainer's event storage."""
    return [value for value, _ in trainer.storage.history("total_loss").values()]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_float16_training_with_a_grad_scaler_and_resume(device, tmp_path, one_thread):
    """CUDA's AMP numerics (float16 autocast + GradScaler), on CUDA and on the CPU: 30
    iterations on the demo data, finite and decreasing losses; a run resumed from the
    iteration-20 checkpoint restores the scaler. PyTorch's CPU float16 convolution
    backward is slow (about 8x float32), so this run uses a quarter-width MobileNetV2 at
    64 px."""
    from fcos_d2.engine import AMPTrainer, Trainer

    cfg = _train_cfg(tmp_path, "float16", 30, size=64, batch=2, device=device)
    cfg.merge_from_file("configs/FCOS-Demo/fcos_MobileNetV2_demo.yaml")
    cfg.merge_from_list(["MODEL.MOBILENET.WIDTH_MULT", 0.25, "MODEL.FPN.OUT_CHANNELS", 32])
    cfg.merge_from_list(["DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path)])
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64])
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 30])
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", 10, "SOLVER.WARMUP_ITERS", 5])
    cfg.merge_from_list(["SOLVER.STEPS", (), "SOLVER.BASE_LR", 0.01])
    cfg.freeze()
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    assert trainer._trainer.precision == torch.float16
    assert trainer._trainer.grad_scaler.is_enabled()
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-5:]) < sum(losses[:5])

    saved = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_0000019.pth"), weights_only=False)
    scale = saved["trainer"]["_trainer"]["grad_scaler"]["scale"]
    assert scale > 0
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
        f.write("model_0000019.pth")
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 20
    assert resumed._trainer.grad_scaler.get_scale() == scale


@pytest.mark.parametrize("device", DEVICES)
def test_auto_precision_training_scales_float16_only(device, tmp_path, one_thread):
    """SOLVER.AMP.PRECISION "auto": bfloat16 without a scaler on a CPU, float16 with one
    on CUDA; the network's convolutions run in that dtype."""
    from fcos_d2.engine import AMPTrainer, Trainer

    cfg = _train_cfg(tmp_path, "auto", 3, device=device)
    cfg.freeze()
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    dtype = REDUCED_PRECISION[device]
    assert trainer._trainer.precision == dtype
    assert trainer._trainer.grad_scaler.is_enabled() == (dtype == torch.float16)
    dtypes = conv_output_dtypes(trainer.model)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert set(dtypes) == {dtype}
    losses = _losses(trainer)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_float32_amp_precision_is_refused():
    from fcos_d2.engine.amp import training_precision

    cfg = tiny_cfg()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = "float32"
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION is 'float32'"):
        training_precision(cfg)
