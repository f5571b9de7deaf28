"""Export the one-stage FCOS detector to TorchScript (tracing) or ONNX.

Two graphs:

* :class:`FCOSEndToEnd` (:mod:`.end_to_end`): one uint8 image in, ``boxes``, ``scores``,
  ``classes`` in the image's pixels out -- resize, normalisation, padding, network and
  post-processing inside; ONNX Runtime alone runs it (``tools/deploy_onnx.py``);
* :class:`FCOSRawOutputs` (:mod:`.raw`): normalised padded batch in, per-level head
  outputs out; :func:`postprocess` finishes in Python.

Detectron2 v0.6's own ``detectron2.export`` imports caffe2, which today's PyTorch lacks;
this package does not use it.
"""
from .end_to_end import OUTPUT_NAMES, FCOSEndToEnd, export_end_to_end
from .raw import (
    FCOSRawOutputs,
    export_onnx,
    export_torchscript,
    output_names,
    output_options,
    postprocess,
    preprocess,
    run_exported,
)
from .resize import resize_bilinear, resized_size

__all__ = [
    "OUTPUT_NAMES",
    "FCOSEndToEnd",
    "FCOSRawOutputs",
    "export_end_to_end",
    "export_onnx",
    "export_torchscript",
    "output_names",
    "output_options",
    "postprocess",
    "preprocess",
    "resize_bilinear",
    "resized_size",
    "run_exported",
]
