#!/usr/bin/env python
"""Convert an FCOS checkpoint of AdelaiDet or of the original FCOS (maskrcnn-benchmark)
into a file that fcos_d2's FCOS loads with ``MODEL.WEIGHTS``.

    python tools/convert_weights.py --source adelaidet \\
        --input FCOS_R_50_1x.pth --output fcos_R_50_1x_d2.pth
    python tools/convert_weights.py --source maskrcnn_benchmark \\
        --input FCOS_imprv_R_50_FPN_1x.pth --output fcos_imprv_R_50.pth \\
        --config-file configs/COCO-Detection/FCOS_R_50_1x.yaml MODEL.FCOS.NUM_CLASSES 80

Prints how many tensors each part of the model received and the config values the
weights imply. With ``--config-file`` (and trailing ``KEY VALUE`` opts) the result is
also checked against the model that config builds: no missing or unexpected weights, equal
shapes. Writes ``.pth`` (torch) or ``.pkl`` (Detectron2's pickle format).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fcos_d2  # noqa: E402,F401  (Detectron2 compatibility layer, registries)
from fcos_d2.checkpoint import (  # noqa: E402
    SOURCES,
    ConversionError,
    convert_reference_checkpoint,
    load_reference_checkpoint,
    save_converted_checkpoint,
)


def build_model_state(config_file: str, opts):
    """The state dict of the (randomly initialised) model that the config builds."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from fcos_d2 import add_fcos_config

    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg).state_dict()


def _shell_word(text: str) -> str:
    """``text`` as one shell word (lists and empty strings in double quotes)."""
    return f'"{text}"' if not text or any(c in text for c in "[]' ") else text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--input", required=True, help="the reference checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="converted file, .pth or .pkl")
    parser.add_argument(
        "--config-file", default="", help="check the result against this config's model"
    )
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="read a checkpoint that holds Python objects besides tensors (trusted files only)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        state = load_reference_checkpoint(args.input, allow_pickle=args.allow_pickle)
        model_state = build_model_state(args.config_file, args.opts) if args.config_file else None
        converted, summary = convert_reference_checkpoint(state, args.source, model_state)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    if model_state is not None:
        print(f"Checked against {args.config_file}: all {len(model_state)} model keys match.")
    else:
        print("As opts: " + " ".join(_shell_word(o) for o in summary.hint_opts()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_converted_checkpoint(converted, args.output, args.source)
    print(f"Wrote {args.output}: load it with MODEL.WEIGHTS {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
