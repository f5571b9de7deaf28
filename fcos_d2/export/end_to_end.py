"""The end-to-end graph: one uint8 image in, detections in the image's pixels out.

:class:`FCOSEndToEnd` wraps a one-stage fcos_d2 :class:`~fcos_d2.modeling.FCOS`:

* input ``image``: (H, W, 3) uint8 in the config's ``INPUT.FORMAT`` (RGB or BGR), any
  H and W;
* the test-time resize (:mod:`.resize`, equal to Detectron2's Pillow resize), unless
  built with ``resize=None`` (the ``--no-resize`` graph, whose input is the
  already-resized image the eager model receives);
* normalisation with the model's ``pixel_mean`` / ``pixel_std``, zero padding to
  ``backbone.size_divisibility``;
* backbone, head, and the model's own post-processing for one image
  (:meth:`FCOSPostProcessor.detect_image`: per-level threshold and top-k, decoding,
  clipping, class-aware NMS, post-NMS top-k) -- the code eager inference runs;
* boxes scaled back to the input image and clipped by the function eager inference
  rescales with (:func:`~fcos_d2.modeling.inference.rescale_boxes`, Detectron2's
  ``detector_postprocess`` arithmetic; empty ones dropped unless
  ``MODEL.FCOS.REMOVE_EMPTY_BOXES`` is off);
* outputs ``boxes`` (D, 4) float32 XYXY, ``scores`` (D,) float32 (best first),
  ``classes`` (D,) int64.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor

from ..modeling.inference import rescale_boxes
from .raw import trace_to_onnx
from .resize import resize_bilinear, resized_size

__all__ = ["FCOSEndToEnd", "OUTPUT_NAMES", "check_end_to_end", "export_end_to_end"]

OUTPUT_NAMES = ["boxes", "scores", "classes"]
SUPPORTED_FORMATS = ("RGB", "BGR")


def size_tensor(x: Tensor) -> Tensor:
    """``x.shape`` as an int64 tensor: shape operations while tracing (TorchScript, ONNX),
    torch.export's symbolic sizes otherwise."""
    return shape_as_tensor(x) if torch.jit.is_tracing() else torch.tensor(x.shape)


def pad_to_multiple(image: Tensor, divisor: int) -> Tensor:
    """(C, H, W) -> (C, H', W') zero-padded at the bottom and right to multiples of
    ``divisor``, as Detectron2's ``ImageList.from_tensors`` pads."""
    if divisor <= 1:
        return image
    if not torch.jit.is_tracing():  # eager and torch.export: (symbolic) int sizes
        height, width = image.shape[1:]
        extra = [(height + divisor - 1) // divisor * divisor - height,
                 (width + divisor - 1) // divisor * divisor - width]  # fmt: skip
        return nn.functional.pad(image, [0, extra[1], 0, extra[0]], value=0.0)
    size = shape_as_tensor(image)[1:]  # (2,) height, width
    padded = torch.div(size + (divisor - 1), divisor, rounding_mode="floor") * divisor
    extra = padded - size
    return nn.functional.pad(image, [0, extra[1], 0, extra[0]], value=0.0)


class FCOSEndToEnd(nn.Module):
    """uint8 image -> (boxes, scores, classes) of a one-stage fcos_d2 FCOS; see the
    module docstring."""

    def __init__(self, model: nn.Module, resize: Optional[Tuple[int, int]]):
        """
        Args:
            model: a one-stage fcos_d2 ``FCOS`` in eval mode.
            resize: (shortest edge, longest edge limit) -- the config's
                (``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``); None for no resize.
        """
        super().__init__()
        check_end_to_end(model)
        self.model = model
        self.resize = None if resize is None or resize[0] <= 0 else tuple(int(s) for s in resize)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        original = size_tensor(image)[:2]  # (2,) height, width
        if self.resize is not None:
            height, width = resized_size(original[0:1], original[1:2], *self.resize)
            pixels = resize_bilinear(image, height, width).float()  # (h, w, 3)
        else:
            pixels = image.float()
        x = pixels.permute(2, 0, 1)  # (3, h, w)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        input_size = size_tensor(x)[1:]  # (2,) h, w
        x = pad_to_multiple(x, self.model.backbone.size_divisibility)[None]  # (1, 3, H, W)
        if self.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        padded = size_tensor(x)[2:]  # (2,) H, W
        predictions = self.model.predict(self.model.backbone(x), (padded[0], padded[1]))
        boxes, scores, classes = self.model.postprocessor.detect_image(
            predictions, 0, (input_size[0], input_size[1])
        )
        if self.resize is not None:  # to the original image, as eager inference rescales
            boxes, keep = rescale_boxes(
                boxes, input_size, original, remove_empty_boxes=self.model.remove_empty_boxes
            )
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        return boxes, scores, classes


def check_end_to_end(model: nn.Module) -> None:
    """Raise a clear error for models the end-to-end graph does not cover."""
    needed = ("backbone", "predict", "postprocessor", "pixel_mean", "pixel_std")
    missing = [a for a in needed if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"the end-to-end export covers the one-stage fcos_d2 FCOS "
            f"(MODEL.META_ARCHITECTURE: FCOS); {type(model).__name__} has no {missing} "
            "(FCOS-RPN two-stage models: export the raw graph instead)"
        )
    if model.pixel_mean.numel() != 3:
        raise ValueError(
            f"the end-to-end graph takes 3-channel images; MODEL.PIXEL_MEAN has "
            f"{model.pixel_mean.numel()} values"
        )


def export_end_to_end(
    model: nn.Module,
    sample: Tensor,
    path: str,
    fmt: str,
    resize: Optional[Tuple[int, int]],
    opset: int = 17,
) -> nn.Module:
    """Trace :class:`FCOSEndToEnd` on ``sample`` ((H, W, 3) uint8) and write it to
    ``path``: ``fmt`` "torchscript" (``torch.jit.save``) or "onnx" (PyTorch's
    TorchScript-based exporter, ``dynamo=False``; dynamic image height and width and
    number of detections). Returns the wrapper module."""
    if sample.dtype != torch.uint8 or sample.dim() != 3 or sample.shape[2] != 3:
        raise ValueError(
            f"the sample must be an (H, W, 3) uint8 image, got {tuple(sample.shape)} {sample.dtype}"
        )
    wrapper = FCOSEndToEnd(model, resize).eval()
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(wrapper, (sample,), check_trace=False).save(path)
    elif fmt == "onnx":
        dynamic = {"image": {0: "height", 1: "width"}}
        dynamic.update({name: {0: "detections"} for name in OUTPUT_NAMES})
        trace_to_onnx(wrapper, sample, path, "image", OUTPUT_NAMES, dynamic, opset)
    else:
        raise ValueError(f"unknown export format {fmt!r}: expected 'torchscript' or 'onnx'")
    return wrapper
