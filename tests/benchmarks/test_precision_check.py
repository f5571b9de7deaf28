"""benchmarks/precision_check.py: what it reads from Detectron2's output and the metrics
file, the goals it judges, and its stages' budget."""
import argparse
import io
import json
import logging
import sys
from collections import OrderedDict

import pytest

from benchmarks import precision_check as pc


def _csv_output(results) -> str:
    """What Detectron2's ``print_csv_format`` logs for ``results``."""
    from detectron2.evaluation.testing import print_csv_format

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s"))
    logger = logging.getLogger("detectron2.evaluation.testing")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        print_csv_format(results)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return stream.getvalue()


def test_bbox_ap_is_read_from_detectron2s_copypaste_lines():
    first = _csv_output(OrderedDict(bbox={"AP": 50.977, "AP50": 83.47, "AP-disc": 40.0}))
    second = _csv_output(OrderedDict(segm={"AP": 11.0}, bbox={"AP50": 90.0, "AP": 52.0298}))
    assert "copypaste: Task: bbox" in first
    assert pc.bbox_ap("iter: 399 eta: 0:00:00\n" + first) == pytest.approx(50.977, abs=1e-4)
    # the last bbox evaluation counts (training's final evaluation after a periodic one)
    assert pc.bbox_ap(first + second) == pytest.approx(52.0298, abs=1e-4)
    assert pc.bbox_ap(_csv_output(OrderedDict(segm={"AP": 11.0}))) is None
    assert pc.bbox_ap("") is None


def test_seconds_per_iteration_is_the_median_of_metrics_json(tmp_path):
    rows = [{"iteration": 19, "time": 0.30}, {"iteration": 39, "time": 0.50},
            {"bbox/AP": 52.0}, {"iteration": 59, "time": 0.20}]  # fmt: skip
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert pc.seconds_per_iteration(str(tmp_path)) == pytest.approx(0.30)
    assert pc.seconds_per_iteration(str(tmp_path / "absent")) is None


def _figures():
    return {
        "machine": "CPU test", "device": "cpu", "kind": "amx", "skipped": [], "failed": [],
        "benchmark": {"rows": [
            {"model": "FCOS", "precision": "fp32", "infer_800x1216_ms": 2000.0, "train_ms": 4000.0},
            {"model": "FCOS", "precision": "amp", "infer_800x1216_ms": 760.0, "train_ms": 1920.0},
            {"model": "FCOS (torchvision)", "precision": "amp", "infer_800x1216_ms": 1.0},
        ]},
        "recipe": {"ratio_amp_fp32": 0.63},
        "demo_fp32": {"ap": 50.98, "s_per_it": 0.38, "wall_s": 200.0},
        "demo_fp32_amp_eval": {"ap": 51.06},
        "demo_amp_seed7": {"ap": 50.30, "s_per_it": 0.24, "wall_s": 150.0},
        "demo_amp_seed11": {"ap": 49.00, "s_per_it": 0.24, "wall_s": 150.0},
    }  # fmt: skip


def _verdicts(table):
    """The "met" column of a summary's goal table, by figure."""
    rows = [line.rstrip(" |").split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return {row[0][2:]: row[-1] for row in rows}


def test_goal_values_and_their_verdicts_by_hand():
    values = pc.goal_values(_figures())
    names = [goal[0] for goal in pc.GOALS]
    assert values == pytest.approx({
        names[0]: 760 / 2000,  # 0.38: met
        names[1]: 1920 / 4000,  # 0.48: not met
        names[2]: 0.63,
        names[3]: 51.06 - 50.98,
        names[4]: 49.00,  # the lowest seed: not met
        names[5]: 49.00 - 50.98,  # -1.98: not met
    })  # fmt: skip
    table = pc.format_summary(_figures())
    verdicts = _verdicts(table)
    assert [verdicts[n] for n in names] == ["yes", "NO", "yes", "yes", "NO", "not here"]
    assert "| demo_amp_seed11 | 49.00 | 0.240 | 150 |" in table
    # on a CPU without AMX the speed ratios are shown, not judged; on CUDA the cost of
    # float16 training is judged
    for kind, expected in (("cpu", ["not here"] * 3 + ["yes", "NO", "not here"]),
                           ("cuda", ["not here"] * 3 + ["yes", "NO", "NO"])):  # fmt: skip
        verdicts = _verdicts(pc.format_summary(dict(_figures(), kind=kind)))
        assert [verdicts[n] for n in names] == expected, kind


def test_unmeasured_goals_are_named_not_judged():
    table = pc.format_summary({"machine": "m", "skipped": ["speed (10 s of the budget left)"]})
    assert "| R-50 inference 800x1216, AMP / float32 | not measured |" in table
    assert "skipped: speed (10 s of the budget left)" in table


def _check(tmp_path, budget, skip=()):
    args = argparse.Namespace(device="cpu", budget=budget, stage_scale=1.0, skip=list(skip),
                              output=str(tmp_path), work_dir=str(tmp_path / "runs"))  # fmt: skip
    return pc.Check(args)


def test_a_stage_that_does_not_fit_the_budget_is_skipped_and_named(tmp_path):
    check = _check(tmp_path, budget=pc.STAGE_SECONDS["demo"] - 1, skip=["speed"])
    assert not check.fits("demo") and check.fits("recipe") and not check.fits("speed")
    assert check.figures["skipped"][0].startswith("demo (")
    assert check.figures["skipped"][1] == "speed (--skip)"
    check.args.budget = pc.STAGE_SECONDS["amp-demo"] - 1
    assert not check.fits("amp-demo", "seed 11")
    assert check.figures["skipped"][2].startswith("amp-demo seed 11 (")


def test_commands_are_logged_and_stopped_at_the_budget(tmp_path):
    check = _check(tmp_path, budget=60)
    text = check.run("echo", [sys.executable, "-c", "print('copypaste: 1'); print('x')"])
    assert text == "copypaste: 1\nx\n" and check.figures["failed"] == []
    check.args.budget = 1  # what is left: under a second
    text = check.run("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"])
    assert "timed out" in text and check.figures["failed"] == ["sleeper"]
    log = (tmp_path / "precision_check.log").read_text()
    assert "===== echo:" in log and "copypaste: 1\nx\n" in log and "===== sleeper:" in log


def test_a_training_stage_starts_from_an_empty_output_dir(tmp_path, monkeypatch):
    """Detectron2 appends to metrics.json: a second check in the same folder must not mix
    the earlier run's iteration times into its own."""
    check = _check(tmp_path, budget=60)
    out = tmp_path / "runs" / "demo_fp32"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"iteration": 19, "time": 9.0}) + "\n")

    def fake_train_net(what, cmd):  # what train_net.py leaves: metrics and the csv lines
        assert cmd[cmd.index("OUTPUT_DIR") + 1] == str(out) and "SEED" in cmd
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": 19, "time": 0.3}) + "\n")
        return _csv_output(OrderedDict(bbox={"AP": 51.5}))

    monkeypatch.setattr(check, "run", fake_train_net)
    result = check.train("demo", pc.DEMO, str(out), ["SEED", "7"])
    assert result["ap"] == pytest.approx(51.5) and result["s_per_it"] == pytest.approx(0.3)
