#!/usr/bin/env python
"""Convert an FCOS checkpoint of AdelaiDet, of the original FCOS (maskrcnn-benchmark) or
torchvision's FCOS into a file that fcos_d2's FCOS loads with ``MODEL.WEIGHTS``.

    python tools/convert_weights.py --source adelaidet \\
        --input FCOS_R_50_1x.pth --output fcos_R_50_1x_d2.pth
    python tools/convert_weights.py --source maskrcnn_benchmark \\
        --input FCOS_imprv_R_50_FPN_1x.pth --output fcos_imprv_R_50.pth \\
        --config-file configs/COCO-Detection/FCOS_R_50_1x.yaml MODEL.FCOS.NUM_CLASSES 80
    python tools/convert_weights.py --source torchvision \\
        --input fcos_tv.pth --output fcos_R_50_torchvision.pth

Prints the renames (fcos_d2's names, the source's and the shapes, one row per module), how
many tensors each part of the model received and the config values the weights imply. With
``--config-file`` (and trailing ``KEY VALUE`` opts) the result is also checked against the
model that config builds: no missing or unexpected weights, equal shapes; the config's
``MODEL.FCOS.NUM_CLASSES`` is the number of classes wanted (when it differs from the
checkpoint's, everything but the class logits is converted, for fine-tuning). Writes
``.pth`` (torch) or ``.pkl`` (Detectron2's pickle format).

Converting first is optional: ``MODEL.WEIGHTS`` may name the reference file itself, which
``fcos_d2.checkpoint.FCOSCheckpointer`` (train_net.py, the trainer) converts while loading.
"""
import argparse
import os
import sys

import fcos_d2  # registers FCOS in Detectron2; setup_cfg
from fcos_d2.checkpoint import (
    SOURCE_FORMATS,
    ConversionError,
    convert_reference_checkpoint,
    load_reference_checkpoint,
    save_converted_checkpoint,
)


def build_model_state(config_file: str, opts):
    """The state dict of the (randomly initialised) model that the config builds, and the
    config's number of classes."""
    from detectron2.modeling import build_model

    cfg = fcos_d2.setup_cfg(config_file, list(opts) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    return build_model(cfg).state_dict(), cfg.MODEL.FCOS.NUM_CLASSES


def _shell_word(text: str) -> str:
    """``text`` as one shell word (lists and empty strings in double quotes)."""
    return f'"{text}"' if not text or any(c in text for c in "[]' ") else text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, choices=tuple(SOURCE_FORMATS))
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
        model_state, num_classes = None, None
        if args.config_file:
            model_state, num_classes = build_model_state(args.config_file, args.opts)
        converted, summary = convert_reference_checkpoint(
            state, args.source, model_state, num_classes=num_classes
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.table())
    print(summary.format())
    if model_state is not None:
        print(f"Checked against {args.config_file}: the model has all {len(converted)} tensors, "
              "with these shapes.")
    else:
        print("As opts: " + " ".join(_shell_word(o) for o in summary.hint_opts()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_converted_checkpoint(converted, args.output, args.source)
    print(f"Wrote {args.output}: load it with MODEL.WEIGHTS {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
