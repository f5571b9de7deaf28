"""The end-to-end and raw graphs through ``torch.export``: ExportedProgram, ONNX, AOTInductor.

``torch.jit.trace`` / ``torch.jit.script`` are deprecated in PyTorch 2.x, and
``torch.onnx.export`` now defaults to the exporter built on ``torch.export``
(``dynamo=True``). This module records the same two graphs as :mod:`.end_to_end` and
:mod:`.raw` with ``torch.export.export`` -- the same modules, so the same code path as
eager inference (``model.predict`` + ``FCOSPostProcessor.detect_image``) -- with
symbolic image height and width, and writes them as:

* ``"pt2"``: an ``ExportedProgram`` (``torch.export.save``; ``torch.export.load(path)
  .module()`` runs it with torch alone);
* ``"onnx-dynamo"``: ONNX through the ``torch.export``-based exporter
  (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``), run by ONNX Runtime;
* ``"aoti"``: an AOTInductor package (``torch._inductor.aoti_compile_and_package``):
  the graph compiled to a shared library with C++ kernels (g++ at export time);
  ``torch._inductor.aoti_load_package(path)`` runs it from Python with torch and
  torchvision (for its NMS kernel), without fcos_d2 or Detectron2.

What the graphs take:

* ``"end_to_end"``: :class:`~.end_to_end.FCOSEndToEnd` without the in-graph resize -- one
  (H, W, 3) uint8 image, already resized as Detectron2's test-time resize does (the
  ``--no-resize`` graph), H and W from :func:`min_image_size` up; ``boxes`` (D, 4) in
  that image's pixels, ``scores`` (D,), ``classes`` (D,). The in-graph resize computes its
  output size from the image's values (``torch.export`` sees sizes that depend on data
  there and cannot prove what the convolutions need), so it stays with the TorchScript
  and TorchScript-based ONNX graphs.
* ``"raw"``: :class:`~.raw.FCOSRawOutputs` -- a normalised (N, 3, H, W) batch padded to
  ``size_divisibility`` (H and W multiples of it, N any); per-level head outputs;
  :func:`~.raw.postprocess` finishes in Python.

The graphs are recorded from an NCHW copy of the model: the NHWC strides of
``MODEL.FCOS.MEMORY_FORMAT`` add size conditions that ``torch.export`` cannot prove for
every size (ONNX Runtime and Inductor choose their own layouts anyway).
"""
import copy
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from .end_to_end import OUTPUT_NAMES, FCOSEndToEnd
from .raw import FCOSRawOutputs, output_names

__all__ = [
    "GRAPHS",
    "FORMATS",
    "min_image_size",
    "nchw_copy",
    "export_program",
    "export_graph",
    "ONNX_OPSET",
    "write_program",
    "load_runner",
]

GRAPHS = ("end_to_end", "raw")
FORMATS = ("pt2", "onnx-dynamo", "aoti")
ONNX_OPSET = 18  # the lowest opset the torch.export-based ONNX exporter writes


def min_image_size(model: nn.Module) -> int:
    """The smallest image height / width the exported graphs take: the top level's
    stride + 1, so that every level's feature map is at least 2 x 2 (at 1 x 1,
    broadcasting would differ from the other sizes and ``torch.export`` would need
    separate graphs)."""
    return max(int(s) for s in model.strides) + 1


def nchw_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with NCHW weights and activations."""
    model = copy.deepcopy(model).eval()
    if hasattr(model, "channels_last_modes"):
        model.channels_last_modes = (False, False)
    return model.to(memory_format=torch.contiguous_format)


def input_names(graph: str) -> List[str]:
    return ["image"] if graph == "end_to_end" else ["images"]


def graph_output_names(model: nn.Module, graph: str) -> List[str]:
    return list(OUTPUT_NAMES) if graph == "end_to_end" else output_names(model)


def check_sample(model: nn.Module, sample: Tensor, graph: str) -> None:
    """Raise a clear error for a sample the graph cannot be recorded on."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}: expected one of {GRAPHS}")
    smallest = min_image_size(model)
    if graph == "end_to_end":
        if sample.dtype != torch.uint8 or sample.dim() != 3 or sample.shape[2] != 3:
            raise ValueError(
                "the end-to-end sample must be an (H, W, 3) uint8 image, got "
                f"{tuple(sample.shape)} {sample.dtype}"
            )
        size = tuple(sample.shape[:2])
    else:
        divisor = max(int(model.backbone.size_divisibility), 1)
        if sample.dim() != 4 or sample.shape[2] % divisor or sample.shape[3] % divisor:
            raise ValueError(
                f"the raw sample must be an (N, 3, H, W) batch padded to multiples of "
                f"{divisor} (fcos_d2.export.preprocess), got {tuple(sample.shape)}"
            )
        size = tuple(sample.shape[2:])
    if min(size) < smallest:
        raise ValueError(
            f"the sample is {size[0]}x{size[1]}; torch.export graphs take images of at least "
            f"{smallest}x{smallest} (every level at least 2x2): record on a larger one"
        )


def dynamic_shapes(model: nn.Module, graph: str) -> Dict[str, Dict[int, object]]:
    """Symbolic dims of the graph input: height and width (end-to-end); batch and
    multiples of ``size_divisibility`` (raw)."""
    smallest = min_image_size(model)
    if graph == "end_to_end":
        return {"image": {0: Dim("height", min=smallest), 1: Dim("width", min=smallest)}}
    divisor = max(int(model.backbone.size_divisibility), 1)
    blocks = -(-smallest // divisor)  # ceil: the fewest size_divisibility blocks
    height, width = Dim("height_blocks", min=blocks), Dim("width_blocks", min=blocks)
    return {"images": {0: Dim("batch", min=1), 2: divisor * height, 3: divisor * width}}


def export_program(model: nn.Module, sample: Tensor, graph: str = "end_to_end") -> ExportedProgram:
    """Record ``graph`` of a one-stage fcos_d2 FCOS with ``torch.export.export``.

    Args:
        model: the eval-mode model (not modified: an NCHW copy is recorded).
        sample: the end-to-end graph's (H, W, 3) uint8 image, or the raw graph's
            padded (N, 3, H, W) batch; other sizes run the program too.
        graph: "end_to_end" or "raw".
    """
    check_sample(model, sample, graph)
    if graph == "raw" and sample.shape[0] == 1:
        sample = sample.repeat(2, 1, 1, 1)  # recorded on batch 1, the batch size would be fixed
    model = nchw_copy(model)
    module = FCOSEndToEnd(model, None) if graph == "end_to_end" else FCOSRawOutputs(model)
    # recorded with autograd on (as eval mode, the graph is inference-only anyway): a program
    # recorded under no_grad carries grad-mode nodes that AOTInductor fails to compile
    return torch.export.export(
        module.eval(), (sample.contiguous(),), dynamic_shapes=dynamic_shapes(model, graph)
    )


def write_program(
    program: ExportedProgram, path: str, fmt: str, names: Tuple[List[str], List[str]]
) -> None:
    """Write ``program`` to ``path`` as ``fmt`` ("pt2", "onnx-dynamo" or "aoti");
    ``names``: (input names, output names) of the ONNX graph."""
    if fmt == "pt2":
        torch.export.save(program, path)
    elif fmt == "onnx-dynamo":
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=names[0],
            output_names=names[1],
            opset_version=ONNX_OPSET,
        )
        onnx_program.save(path, external_data=False)
    elif fmt == "aoti":
        if not path.endswith(".pt2"):
            raise ValueError(f"{path}: AOTInductor packages are .pt2 files")
        # freezing: weights as constants, prepacked for oneDNN's convolutions (without it the
        # package ran 2-3x slower than eager on CPU)
        torch._inductor.aoti_compile_and_package(
            program, package_path=path, inductor_configs={"freezing": True}
        )
    else:
        raise ValueError(f"unknown torch.export format {fmt!r}: expected one of {FORMATS}")


def export_graph(model: nn.Module, sample: Tensor, path: str, fmt: str, graph: str) -> None:
    """:func:`export_program` + :func:`write_program`."""
    program = export_program(model, sample, graph)
    write_program(program, path, fmt, (input_names(graph), graph_output_names(model, graph)))


def load_runner(path: str, fmt: str) -> Callable[[Tensor], Sequence[Tensor]]:
    """A function running a written graph on a torch tensor, returning its outputs as
    tensors (ONNX: through ONNX Runtime's CPU provider)."""
    if fmt == "pt2":
        module = torch.export.load(path).module()

        def run(x: Tensor) -> Sequence[Tensor]:
            with torch.no_grad():  # the program's parameters require grad
                return module(x)

        return run
    if fmt == "aoti":
        return torch._inductor.aoti_load_package(path)
    if fmt == "onnx-dynamo":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
    raise ValueError(f"unknown torch.export format {fmt!r}: expected one of {FORMATS}")
