"""tools/compare_proposals.py: the rows it compares, its timing and its table."""
import os
import time

import fcos_d2
from helpers import load_script

tool = load_script("tools/compare_proposals.py")


def test_rows_use_one_backbone_schedule_seed_and_input_size():
    cfgs = {name: fcos_d2.setup_cfg(path) for name, (path, _) in tool.MODELS.items()}
    assert len(cfgs) == 5

    def recipe(cfg):
        return (
            cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.FPN.NORM, cfg.MODEL.FPN.OUT_CHANNELS, cfg.SEED,
            cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR,
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST,
        )

    assert len({recipe(cfg) for cfg in cfgs.values()}) == 1
    heads = [cfg.MODEL.ROI_HEADS.NAME for cfg in cfgs.values()][1:]
    assert heads == [
        "StandardROIHeads", "ProbabilisticROIHeads", "ProbabilisticCascadeROIHeads",
        "StandardROIHeads",
    ]
    proposals = [cfg.MODEL.FCOS.RPN.POST_NMS_TOPK_TEST for cfg in cfgs.values()][1:4]
    assert proposals == [1000, 256, 256]
    for path, _ in tool.ABLATIONS.values():
        assert os.path.exists(os.path.join(tool.ROOT, path))


def test_time_models_medians_per_model_interleaved():
    calls = []

    def model(delay, name):
        def run(batch):
            calls.append(name)
            time.sleep(delay)

        return run

    ms = tool.time_models({"fast": model(0.0, "fast"), "slow": model(0.01, "slow")}, [{}] * 4)
    assert calls[4:] == ["fast", "slow"] * 4  # after 2 warm-up images each
    assert ms["slow"] >= 10 > ms["fast"]


def test_table_marks_missing_values():
    text = tool.table({"a": {"AP": 51.234, "AP50": 80.0, "AP75": 55.56, "ms": 12.4}})
    assert text.splitlines()[2] == "| a | 51.2 | 80.0 | 55.6 | – | 12 |"
