#!/usr/bin/env python
"""Export an fcos_d2 model with Detectron2's own ``tools/deploy/export_model.py``.

    python tools/detectron2_export_model.py \\
        --tool ~/detectron2/tools/deploy/export_model.py --export-method tracing \\
        --format torchscript --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml \\
        --output export_d2/ [--sample-image some.jpg] MODEL.WEIGHTS model_final.pth

Detectron2's tool builds its config with Detectron2's ``get_cfg()``, which has no
``MODEL.FCOS`` keys, and does not import fcos_d2, so it cannot load an fcos_d2 config by
itself. This script does what the tool's ``main()`` does, with fcos_d2's config: it loads
the tool file given by ``--tool``, builds the config with ``fcos_d2.setup_cfg``, the model
with ``build_model`` and the checkpoint, and calls the tool's own ``export_tracing`` /
``export_scripting`` (which read the ``args``, ``cfg`` and ``logger`` their ``main()``
sets, set here the same way). The exported files are the tool's (``model.ts`` or
``model.onnx`` and its TorchScript IR dumps). Then it runs the exported TorchScript model on
the sample and prints its detections against the eager model's.

Both ``--export-method tracing`` and ``scripting`` work for the one-stage ``FCOS`` and for
Faster R-CNN with FCOS proposals (``configs/FCOS-RPN/``), as the tool does for RetinaNet
and Faster R-CNN; the exported models compute in float32 (``TEST.AMP`` is turned off
here). The tool needs a Detectron2 whose ``detectron2.export`` imports without caffe2 and
defines ``STABLE_ONNX_OPSET_VERSION`` (Detectron2 built from a source newer than v0.6);
see docs/deployment.md.
"""
import argparse
import importlib.util
import logging
import os
import sys

import torch

import fcos_d2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger


def load_tool(path: str):
    """Detectron2's export_model.py as a module (its imports run; its main() does not)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--tool {path}: no such file (Detectron2's tools/deploy/export_model.py)")
    spec = importlib.util.spec_from_file_location("detectron2_export_model_tool", path)
    tool = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(tool)
    except ImportError as e:
        import detectron2

        raise SystemExit(
            f"{path} cannot import what it needs from the installed Detectron2 "
            f"{detectron2.__version__} ({os.path.dirname(detectron2.__file__)}): {e}. "
            "Detectron2 v0.6's detectron2.export imports caffe2, which PyTorch no longer "
            "has; the tool needs a Detectron2 built from a newer source."
        ) from e
    return tool


def detections(outputs):
    """(boxes, scores, classes) of the first image of a model output (Instances or fields)."""
    first = outputs[0]
    if isinstance(first, dict) and "instances" in first:
        first = first["instances"].get_fields()
    elif not isinstance(first, dict):
        first = first.get_fields()
    boxes = first["pred_boxes"]
    boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
    return boxes, first["scores"], first["pred_classes"]


def eager_detections(model, image):
    """What the exported models compute: detections in the input image's coordinates
    (``do_postprocess=False`` for two-stage models, as the tool exports them)."""
    with torch.no_grad():
        if hasattr(model, "roi_heads"):
            return detections(model.inference([{"image": image}], do_postprocess=False))
        return detections(model([{"image": image}]))


def exported_detections(path, method, model, image):
    """Run the tool's exported TorchScript file on ``image``."""
    from detectron2.export import TracingAdapter

    exported = torch.jit.load(path)
    with torch.no_grad():
        if method == "scripting":
            return detections(exported(({"image": image},)))
        if hasattr(model, "roi_heads"):

            def inference(m, inputs):
                return [{"instances": m.inference(inputs, do_postprocess=False)[0]}]

        else:
            inference = None
        adapter = TracingAdapter(model, [{"image": image}], inference)
        adapter(image)  # records the output structure (outputs_schema)
        return detections(adapter.outputs_schema(exported(image)))


def compare(eager, exported) -> str:
    count = f"{len(exported[0])} detections (eager: {len(eager[0])})"
    if len(eager[0]) != len(exported[0]):
        return f"{count}: DIFFERENT"
    if not len(eager[0]):
        return count
    box = float((exported[0] - eager[0]).abs().max())
    score = float((exported[1] - eager[1]).abs().max())
    same = bool(torch.equal(exported[2], eager[2]))
    return f"{count}, classes {'equal' if same else 'DIFFERENT'}, max |box| {box:.3g} px, " \
           f"max |score| {score:.3g}"  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, help="Detectron2's tools/deploy/export_model.py")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="torchscript")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--sample-image", default=None, help="sample image (default: the "
                        "first image of DATASETS.TEST[0])")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    tool = load_tool(args.tool)
    logger = setup_logger()
    # the exported graphs compute in float32: so does the eager model they are checked with
    cfg = fcos_d2.setup_cfg(args.config_file, args.opts + ["TEST.AMP.ENABLED", "False"])
    model = build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS)
    model.eval()
    os.makedirs(args.output, exist_ok=True)
    tool.args, tool.cfg, tool.logger = args, cfg, logger  # what the tool's main() sets
    if args.export_method == "scripting":
        if args.format != "torchscript":
            parser.error("--export-method scripting writes --format torchscript only")
        inputs = tool.get_sample_inputs(args)
        tool.export_scripting(model)
    else:
        inputs = tool.get_sample_inputs(args)
        tool.export_tracing(model, inputs)
    path = os.path.join(args.output, "model.ts" if args.format == "torchscript" else "model.onnx")
    print(f"Wrote {path} with Detectron2's {args.tool} (--export-method {args.export_method})")
    if args.format == "torchscript":
        image = inputs[0]["image"]
        result = compare(
            eager_detections(model, image),
            exported_detections(path, args.export_method, model, image),
        )
        print(f"exported vs eager on the sample: {result}")
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
