"""The raw graph: backbone + FPN + FCOS head, post-processing left to Python.

What the exported graph contains -- :class:`FCOSRawOutputs`:

* input ``images``: (N, 3, H, W) float, already normalised with the model's pixel mean
  and std and padded to a multiple of ``backbone.size_divisibility`` (what
  :func:`preprocess` gives); H, W and N may differ from the export sample's;
* backbone + FPN + FCOS head;
* outputs, for each head level l in order (``p3`` .. ``p7``), first all class logits,
  then all box distances, then all centerness logits::

      logits_<l>  (N, K, Hl, Wl)   class logits (before the sigmoid)
      box_<l>     (N, 4, Hl, Wl)   (l, t, r, b) distances in units of the level's stride,
                                   after the level's scale and ReLU (exp with USE_RELU off)
      ctrness_<l> (N, 1, Hl, Wl)   centerness logits

:func:`postprocess` turns these into detections in Python with the model's own steps
after the head (locations, post-processing, rescaling), for batches; the end-to-end graph
(:mod:`fcos_d2.export.end_to_end`) has them inside instead.
"""
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import ImageList, Instances


__all__ = [
    "FCOSRawOutputs",
    "output_options",
    "output_names",
    "preprocess",
    "postprocess",
    "export_torchscript",
    "export_onnx",
    "run_exported",
]


class FCOSRawOutputs(nn.Module):
    """Backbone + FCOS head of an :class:`~fcos_d2.modeling.FCOS`, returning a flat tuple
    of per-level tensors (see the module docstring) -- the exportable part."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.in_features = list(model.head_in_features)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        features = self.backbone(images)
        logits, box_dists, ctrness = self.head([features[f] for f in self.in_features])
        return tuple(logits) + tuple(box_dists) + tuple(ctrness)


def output_names(model: nn.Module) -> List[str]:
    """Names of the exported outputs, in order: logits_p3.., box_p3.., ctrness_p3.."""
    levels = list(model.head_in_features)
    return [f"{kind}_{level}" for kind in ("logits", "box", "ctrness") for level in levels]


def output_options(model: nn.Module) -> Dict[str, Any]:
    """Every setting of ``model`` after the network that changes its detections, read from
    the modules that use them (for ``export_info.json``): where the locations sit
    (the pipeline's ``location_offset`` / ``spacing_from_input``), each constructor
    argument of the post-processor (thresholds, top-k, NMS, score and box rules), and
    whether rescaling drops empty boxes."""
    post = model.postprocessor
    names = [
        name
        for name, parameter in inspect.signature(type(post).__init__).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY  # not self, nor renamed ones
    ]
    return {
        "locations": {
            "location_offset": model.location_offset,
            "spacing_from_input": model.spacing_from_input,
        },
        "postprocess": {name: getattr(post, name) for name in names},
        "rescale": {"remove_empty_boxes": model.remove_empty_boxes},
    }


def preprocess(model: nn.Module, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
    """Detectron2-format inputs -> the normalised, padded batch the exported graph takes."""
    with torch.no_grad():
        return model.preprocess_image(batched_inputs)


def postprocess(
    model: nn.Module,
    outputs: Sequence[Tensor],
    image_sizes: List[Tuple[int, int]],
    input_size: Tuple[int, int],
    batched_inputs: Optional[List[Dict[str, Tensor]]] = None,
) -> List[Dict[str, Instances]]:
    """The exported graph's outputs -> per image ``{"instances": Instances}``, as
    ``model(batched_inputs)`` gives them in eval mode: the model's own steps after the head
    (``predictions_of``: locations by ``MODEL.FCOS.LOCATION_OFFSET`` and
    ``SPACING_FROM_INPUT``; ``forward_inference``: post-processing and rescaling).

    Args:
        outputs: the graph's outputs in order (see :func:`output_names`).
        image_sizes: per image, its (height, width) before padding (``ImageList``'s).
        input_size: the (height, width) of the padded batch the graph ran on.
        batched_inputs: for each image's requested output size ("height"/"width");
            without it, detections stay in input coordinates.
    """
    num_levels = len(model.head_in_features)
    if len(outputs) != 3 * num_levels:
        raise ValueError(f"expected {3 * num_levels} outputs (3 per level), got {len(outputs)}")
    head_outputs = (
        list(outputs[:num_levels]),
        list(outputs[num_levels: 2 * num_levels]),
        list(outputs[2 * num_levels:]),
    )
    predictions = model.predictions_of(head_outputs, tuple(int(s) for s in input_size))
    if batched_inputs is None:
        batched_inputs = [{} for _ in image_sizes]
    return model.forward_inference(predictions, image_sizes, batched_inputs)


def run_exported(
    run: Callable[[Tensor], Sequence[Tensor]],
    model: nn.Module,
    batched_inputs: List[Dict[str, Tensor]],
) -> List[Dict[str, Instances]]:
    """Full inference with an exported graph: :func:`preprocess`, ``run`` (e.g. the traced
    module, or an ONNX Runtime InferenceSession wrapped to take and return tensors), then
    :func:`postprocess`."""
    images = preprocess(model, batched_inputs)
    outputs = [torch.as_tensor(o) for o in run(images.tensor)]
    return postprocess(
        model, outputs, images.image_sizes, tuple(images.tensor.shape[-2:]), batched_inputs
    )


def _check_exportable(model: nn.Module) -> None:
    for attr in ("backbone", "head", "head_in_features", "predictions_of", "forward_inference"):
        if not hasattr(model, attr):
            raise TypeError(
                f"export supports the one-stage fcos_d2 FCOS detector; {type(model).__name__} "
                f"has no {attr!r}"
            )


def export_torchscript(model: nn.Module, sample: Tensor, path: Optional[str] = None):
    """Trace :class:`FCOSRawOutputs` on ``sample`` (a :func:`preprocess` ``.tensor``) and
    optionally save it. The traced module accepts other batch and image sizes."""
    _check_exportable(model)
    wrapper = FCOSRawOutputs(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
    if path:
        traced.save(path)
    return traced


def export_onnx(model: nn.Module, sample: Tensor, path: str, opset: int = 17) -> List[str]:
    """Export :class:`FCOSRawOutputs` to ONNX, with dynamic batch, height and width.

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``): it exports this model
    in about a second; the torch.export-based one takes far longer here. Returns the
    output names.
    """
    _check_exportable(model)
    wrapper = FCOSRawOutputs(model).eval()
    names = output_names(model)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in names:
        level = name.split("_")[-1]
        dynamic[name] = {0: "batch", 2: f"height_{level}", 3: f"width_{level}"}
    trace_to_onnx(wrapper, sample, path, "images", names, dynamic, opset)
    return names


def trace_to_onnx(
    module: nn.Module,
    sample: Tensor,
    path: str,
    input_name: str,
    output_names: List[str],
    dynamic_axes: Dict[str, Dict[int, str]],
    opset: int,
) -> None:
    """Write ``module`` (one tensor in) to ONNX at ``path`` with PyTorch's TorchScript-based
    exporter (``dynamo=False``), traced on ``sample`` without autograd."""
    with torch.no_grad():
        torch.onnx.export(
            module,
            (sample,),
            path,
            dynamo=False,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )
