#!/usr/bin/env python
"""One-stage FCOS vs two-stage detectors with FCOS or anchor proposals, on the demo dataset.

Trains (or, with ``--reuse``, loads) five models with the same backbone (ResNet-18 +
GroupNorm FPN), input sizes, schedule and seed:

* FCOS, one-stage (``configs/FCOS-Demo/fcos_R_18_demo.yaml``);
* FCOS proposals + Detectron2's stock Faster R-CNN heads, 1000 proposals;
* probabilistic two-stage FCOS, Faster R-CNN second stage, 256 proposals;
* probabilistic two-stage FCOS, 3-stage Cascade R-CNN second stage, 256 proposals;
* Detectron2's anchor RPN + Faster R-CNN, 1000 proposals;

then measures box AP / AP50 / AP75 on ``fcos_demo_val``, the proposal recall AR@100 (COCO
AR over IoU 0.5:0.95, via Detectron2's ``ProposalNetwork`` on the same weights) and the
inference time per image (batch 1, median, the models interleaved image by image so that
the machine's load falls on all alike), and prints a markdown table (and writes it with the
figures as JSON)::

    python tools/compare_proposals.py --reuse                 # train what is missing
    python tools/compare_proposals.py --reuse --ablations     # + eval-only variants
    python tools/compare_proposals.py --reuse --timing-only   # only the timing column
    python tools/compare_proposals.py --reuse --rows Cascade  # only the rows naming Cascade
    python tools/compare_proposals.py --output-root output/cmp SOLVER.MAX_ITER 200 ...

Models are trained one after the other in this process; each keeps its config's
``OUTPUT_DIR`` (or ``--output-root``/<config name>). The ablations evaluate trained models
with other test-time keys (no training): the probabilistic models scored by the second
stage alone (Detectron2's stock heads on the same weights), P(object) = cls * ctr instead
of sqrt(cls * ctr), and 1000 instead of 256 proposals.
"""
import argparse
import json
import os
import platform
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import torch

import fcos_d2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from fcos_d2.engine import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_STAGE = "configs/FCOS-Demo/fcos_R_18_demo.yaml"
STOCK = "configs/FCOS-RPN/faster_rcnn_R_18_FPN_demo.yaml"
PROB_FASTER = "configs/FCOS-RPN/prob_faster_rcnn_R_18_FPN_demo.yaml"
PROB_CASCADE = "configs/FCOS-RPN/prob_cascade_rcnn_R_18_FPN_demo.yaml"
ANCHOR = "configs/FCOS-RPN/faster_rcnn_R_18_FPN_anchor_rpn_demo.yaml"

#: row name -> (config, test-time overrides); the trained models
MODELS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "FCOS (one-stage)": (ONE_STAGE, ()),
    "FCOS proposals + stock Faster R-CNN (1000 proposals)": (STOCK, ()),
    "probabilistic Faster R-CNN (256 proposals)": (PROB_FASTER, ()),
    "probabilistic Cascade R-CNN (256 proposals)": (PROB_CASCADE, ()),
    "anchor RPN + Faster R-CNN (1000 proposals)": (ANCHOR, ()),
}
#: the same weights evaluated with other test-time keys
ABLATIONS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "probabilistic Faster R-CNN, second-stage score only": (
        PROB_FASTER,
        ("MODEL.ROI_HEADS.NAME", "StandardROIHeads"),
    ),
    "probabilistic Cascade R-CNN, second-stage score only": (
        PROB_CASCADE,
        ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads"),
    ),
    "probabilistic Cascade R-CNN, P(object) = cls * ctr": (
        PROB_CASCADE,
        ("MODEL.FCOS.SCORE_SQRT", "False"),
    ),
    "probabilistic Cascade R-CNN, 1000 proposals": (
        PROB_CASCADE,
        ("MODEL.FCOS.RPN.POST_NMS_TOPK_TEST", "1000"),
    ),
    "stock Faster R-CNN, 256 proposals": (STOCK, ("MODEL.FCOS.RPN.POST_NMS_TOPK_TEST", "256")),
}


def load_cfg(path: str, opts: Sequence[str], output_root: str = None):
    opts = list(opts)
    if output_root:
        name = os.path.splitext(os.path.basename(path))[0]
        opts += ["OUTPUT_DIR", os.path.join(output_root, name)]
    return fcos_d2.setup_cfg(os.path.join(ROOT, path), opts)


def train(cfg, reuse: bool) -> bool:
    """Train the model into ``cfg.OUTPUT_DIR`` unless ``reuse`` finds its
    model_final.pth there; whether it trained."""
    if reuse and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth")):
        return False
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return True


def load_model(cfg, weights: str) -> torch.nn.Module:
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{weights}: no trained weights (run without --timing-only)")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return model.eval()


def box_ap(cfg, model, folder: str) -> Dict[str, float]:
    """AP / AP50 / AP75 on the config's first test dataset."""
    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, output_dir=folder)
    results = inference_on_dataset(model, Trainer.build_test_loader(cfg, name), evaluator)
    return {k: results["bbox"][k] for k in ("AP", "AP50", "AP75")}


def proposal_recall(cfg, weights: str, folder: str) -> float:
    """AR@100 (percent) of the model's proposal generator, as a ``ProposalNetwork``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    model = load_model(cfg, weights)  # the ROI heads' weights are not needed
    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, output_dir=folder)
    loader = Trainer.build_test_loader(cfg, name)
    return inference_on_dataset(model, loader, evaluator)["box_proposals"]["AR@100"]


def test_inputs(cfg, count: int) -> List[dict]:
    """The first ``count`` test images, mapped (resized) as at evaluation."""
    inputs = []
    for batch in Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0]):
        inputs.extend(batch)
        if len(inputs) >= count:
            break
    return inputs[:count]


@torch.no_grad()
def time_models(models: Dict[str, torch.nn.Module], inputs: List[dict]) -> Dict[str, float]:
    """Median milliseconds per image (batch 1) of each model; image by image, every model
    runs in turn, after two warm-up images each."""
    for model in models.values():
        for x in inputs[:2]:
            model([x])
    times = {name: [] for name in models}
    for i, x in enumerate(inputs):
        for name, model in models.items():
            start = time.perf_counter()
            model([x])
            times[name].append(time.perf_counter() - start)
        if (i + 1) % 10 == 0:
            print(f"  timing: {i + 1}/{len(inputs)} images", flush=True)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def machine() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def table(rows: Dict[str, dict]) -> str:
    lines = [
        "| model | box AP | AP50 | AP75 | proposal AR@100 | inference ms / image |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    for name, r in rows.items():
        cells = [fmt(r.get(k)) for k in ("AP", "AP50", "AP75", "AR@100")] + [fmt(r.get("ms"), 0)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="reuse trained models if present")
    parser.add_argument("--output-root", default=None, help="one sub-folder per model")
    parser.add_argument("--ablations", action="store_true", help="also the eval-only variants")
    parser.add_argument("--timing-only", action="store_true", help="trained models' timing only")
    parser.add_argument("--timing-images", type=int, default=60, help="images timed per model")
    parser.add_argument(
        "--json", default="output/compare_proposals.json", help="where the results go"
    )
    parser.add_argument("--no-timing", action="store_true", help="accuracy only")
    parser.add_argument("--recall-only", action="store_true", help="proposal AR@100 only")
    parser.add_argument("--rows", default="", help="only the rows whose name contains this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for all")
    args = parser.parse_args(argv)
    setup_logger(name="fcos_d2")
    setup_logger()  # Detectron2's trainer logs ETA and losses every 20 iterations
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = dict(MODELS, **(ABLATIONS if args.ablations else {}))
    specs = {name: spec for name, spec in specs.items() if args.rows in name}
    cfgs = {
        name: load_cfg(path, list(args.opts) + list(extra), args.output_root)
        for name, (path, extra) in specs.items()
    }
    previous = {}
    if os.path.exists(args.json):  # the rows of earlier runs are kept, updated
        with open(args.json) as f:
            previous = json.load(f)
    rows: Dict[str, dict] = previous.get("rows", {})
    for name in specs:
        rows.setdefault(name, {})["config"] = specs[name][0]
    order = [name for name in list(MODELS) + list(ABLATIONS) if name in rows]
    rows = {name: rows[name] for name in order}
    weights = {}
    for i, name in enumerate(specs, 1):
        cfg = cfgs[name]
        weights[name] = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if not args.timing_only and name in MODELS:
            print(f"[{i}/{len(specs)}] {name}: training {specs[name][0]}", flush=True)
            start = time.time()
            if train(cfg, args.reuse):
                rows[name]["train_s"] = round(time.time() - start, 1)

    if not args.timing_only:
        for i, (name, cfg) in enumerate(cfgs.items(), 1):
            print(f"[{i}/{len(specs)}] {name}: evaluating", flush=True)
            slug = "".join(c if c.isalnum() else "_" for c in name)
            folder = os.path.join(cfg.OUTPUT_DIR, "compare", slug)
            model = load_model(cfg, weights[name])
            if not args.recall_only:
                rows[name].update(box_ap(cfg, model, folder))
            # the ablations keep their model's top-100 proposals: the same AR@100
            if getattr(model, "proposal_generator", None) is not None and name in MODELS:
                rows[name]["AR@100"] = proposal_recall(cfg, weights[name], folder)

    timed = [] if args.no_timing else [name for name in MODELS if name in specs]
    missing = [name for name in timed if not os.path.exists(weights[name])]
    if missing and args.timing_only:  # time the models trained so far
        print(f"not timed, no trained weights yet: {missing}", flush=True)
        timed = [name for name in timed if name not in missing]
    timing = previous.get("timing")
    if timed:
        print(f"timing {len(timed)} models on {args.timing_images} images", flush=True)
        load_before = os.getloadavg()
        models = {name: load_model(cfgs[name], weights[name]) for name in timed}
        inputs = test_inputs(cfgs[timed[0]], args.timing_images)
        for name, ms in time_models(models, inputs).items():
            rows[name]["ms"] = ms
        timing = dict(
            machine(),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
            images=len(inputs),
            models_timed_together=timed,
        )
    result = {"timing": timing, "rows": rows, "table": table(rows)}
    print("\n" + result["table"] + "\n\n" + json.dumps(timing))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
