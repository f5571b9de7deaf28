"""Detectron2 may be imported before fcos_d2, and importing fcos_d2 patches nothing.

Each case runs in a fresh interpreter (a test process has imported everything already).
"""
import json
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

# What importing fcos_d2 must leave as it found it.
_STATE = textwrap.dedent(
    """
    def library_state():
        import sys
        import numpy as np
        from PIL import Image
        state = {
            "meta_path": [type(f).__qualname__ for f in sys.meta_path],
            "numpy_aliases": sorted(n for n in ("bool", "int", "float", "object", "str", "long")
                                    if n in vars(np)),
            "pil_linear": hasattr(Image, "LINEAR"),
        }
        if "detectron2.engine" in sys.modules:
            import detectron2.engine.defaults as defaults
            state["create_ddp_model"] = defaults.create_ddp_model.__qualname__
            state["create_ddp_model_module"] = defaults.create_ddp_model.__module__
        if "detectron2.evaluation" in sys.modules:
            from detectron2.evaluation import COCOEvaluator
            state["coco_init"] = COCOEvaluator.__init__.__module__
        return state
    """
)

_FIRST = _STATE + textwrap.dedent(
    """
    import importlib, json, sys
    importlib.import_module(sys.argv[1])  # a tutorial's first import
    before = library_state()
    import fcos_d2
    from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY
    print(json.dumps({
        "before": before,
        "after": library_state(),
        "fcos": "FCOS" in META_ARCH_REGISTRY and "FCOS" in PROPOSAL_GENERATOR_REGISTRY,
    }))
    """
)


def _run(code, *args):
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "detectron2.config",
        "detectron2.modeling",
        "detectron2.data",
        "detectron2.data.transforms",
        "detectron2.engine",
        "detectron2.evaluation",
        "detectron2.checkpoint",
    ],
)
@pytest.mark.slow
def test_detectron2_first_then_fcos_d2(module):
    r = _run(_FIRST, module)
    assert r["fcos"] is True
    assert r["after"] == r["before"]  # no hook, alias or wrapper added by import fcos_d2


_TUTORIAL = textwrap.dedent(
    """
    import json
    import numpy as np
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.data import transforms as T
    from detectron2.engine import DefaultPredictor
    import fcos_d2

    cfg = fcos_d2.setup_cfg("configs/FCOS-Demo/fcos_R_18_demo.yaml", ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    resized = T.ResizeShortestEdge(64, 96).get_transform(image).apply_image(image)
    predictor = DefaultPredictor(cfg)
    out = predictor(image)["instances"]
    print(json.dumps({"model": type(model).__name__, "resized": list(resized.shape),
                      "image_size": list(out.image_size)}))
    """
)


@pytest.mark.slow
def test_tutorial_order_builds_and_runs_fcos():
    """The tutorial's order: detectron2 imported first, FCOS built and run after."""
    r = _run(_TUTORIAL)
    assert r["model"] == "FCOS"
    assert r["resized"] == [64, 96, 3]  # 40x60 -> short side 64
    assert r["image_size"] == [40, 60]  # predictions in the input image's size
