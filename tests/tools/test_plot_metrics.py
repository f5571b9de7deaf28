"""tools/plot_metrics.py: reading metrics.json (resumed runs included) and the curves."""
import json

import pytest

from helpers import load_script
from fcos_d2.modeling.visualize import NUM_POS_KEY


def test_plot_metrics(tmp_path):
    plot_metrics = load_script("tools/plot_metrics.py")
    metrics = tmp_path / "metrics.json"
    lines = [{"iteration": i, "total_loss": 3 - i / 10, "loss_fcos_cls": 1 - i / 30,
              NUM_POS_KEY: 20 + i, "lr": 0.01} for i in range(0, 20, 2)]
    lines.append({"iteration": 19, "bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP75": 8.0})
    lines.append({"iteration": 4, "total_loss": 0.5})  # a resumed run repeats iteration 4
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = plot_metrics.read_metrics(str(metrics))
    assert records[4]["total_loss"] == 0.5
    assert records[4]["loss_fcos_cls"] == pytest.approx(1 - 4 / 30)
    assert plot_metrics.series(records, "bbox/AP") == ([19], [12.5])
    assert plot_metrics.loss_keys(records) == ["total_loss", "loss_fcos_cls"]
    png = tmp_path / "out" / "curves.png"
    assert plot_metrics.main([str(metrics), "--output", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size == (int(4.2 * 3 * 80), int(3.4 * 80))  # three panels
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        plot_metrics.read_metrics(str(tmp_path / "nope.json"))
