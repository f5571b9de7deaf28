#!/usr/bin/env python
"""FCOS proposals vs Detectron2's anchor RPN, and one-stage FCOS, on the demo dataset.

Trains three models with the same backbone (ResNet-18 + FPN), input size, schedule and
seed -- one-stage FCOS, Faster R-CNN with FCOS proposals, Faster R-CNN with the anchor
RPN -- then reports proposal recall (AR@100, AR@1000, COCO-style over IoU 0.5:0.95) of the
two proposal generators and box AP of all three, as a markdown table:

    python tools/compare_proposals.py                 # trains all three (CPU: ~30 min)
    python tools/compare_proposals.py --reuse         # reuse model_final.pth when present
    python tools/compare_proposals.py --output-root output/cmp SOLVER.MAX_ITER 200 ...
"""
import argparse
import json
import os
import time

import fcos_d2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from fcos_d2.engine import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "FCOS (one-stage)": "configs/FCOS-Demo/fcos_R_18_demo.yaml",
    "Faster R-CNN + FCOS RPN": "configs/FCOS-RPN/faster_rcnn_R_18_FPN_demo.yaml",
    "Faster R-CNN + anchor RPN": "configs/FCOS-RPN/faster_rcnn_R_18_FPN_anchor_rpn_demo.yaml",
}


def load_cfg(path: str, opts, output_root: str = None):
    opts = list(opts)
    if output_root:
        name = os.path.splitext(os.path.basename(path))[0]
        opts += ["OUTPUT_DIR", os.path.join(output_root, name)]
    return fcos_d2.setup_cfg(os.path.join(ROOT, path), opts)


def train(cfg, reuse: bool) -> str:
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if reuse and os.path.exists(final):
        return final
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return final


def box_ap(cfg, weights: str) -> dict:
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return Trainer.test(cfg, model)["bbox"]


def proposal_recall(cfg, weights: str) -> dict:
    """AR@100 / AR@1000 of the model's proposal generator (as a ProposalNetwork)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)  # the ROI heads' weights are not needed
    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, output_dir=os.path.join(cfg.OUTPUT_DIR, "proposals"))
    loader = Trainer.build_test_loader(cfg, name)
    return inference_on_dataset(model, loader, evaluator)["box_proposals"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="reuse trained models if present")
    parser.add_argument("--output-root", default=None, help="one sub-folder per model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for all three")
    args = parser.parse_args(argv)
    setup_logger(name="fcos_d2")
    setup_logger()  # Detectron2's trainer logs ETA and losses every 20 iterations

    rows = {}
    for i, (name, path) in enumerate(MODELS.items(), 1):
        print(f"[{i}/{len(MODELS)}] {name}: training {path}", flush=True)
        cfg = load_cfg(path, args.opts, args.output_root)
        start = time.time()
        weights = train(cfg, args.reuse)
        row = {"train_s": time.time() - start}
        print(f"[{i}/{len(MODELS)}] {name}: evaluating", flush=True)
        row.update({k: v for k, v in box_ap(cfg, weights).items() if k in ("AP", "AP50", "AP75")})
        if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
            recall = proposal_recall(cfg, weights)
            row["AR@100"] = recall["AR@100"]  # already in percent
            row["AR@1000"] = recall["AR@1000"]
        rows[name] = row

    print("\n| model | proposal AR@100 | proposal AR@1000 | box AP | AP50 | AP75 |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        ar = [f"{r[k]:.1f}" if k in r else "-" for k in ("AR@100", "AR@1000")]
        print(f"| {name} | {ar[0]} | {ar[1]} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} |")
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
