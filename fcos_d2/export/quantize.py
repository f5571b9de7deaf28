"""Static int8 quantisation (QDQ) of the end-to-end ONNX graph, calibrated on the images of a
registered Detectron2 dataset.

ONNX Runtime runs int8 convolutions with the CPU's int8 dot-product instructions (AVX-512
VNNI, AMX). :func:`quantize_end_to_end` writes a copy of an end-to-end graph
(``tools/export_model.py --format onnx --end-to-end``) in which every convolution --
backbone, FPN and head, nearly all of the work -- takes int8 weights (per output channel)
and uint8 activations, each wrapped in ``QuantizeLinear`` / ``DequantizeLinear`` pairs
(the QDQ format); the rest of the graph (resize, normalisation, GroupNorm, decoding, top-k,
NMS, rescaling) stays float, so its inputs and outputs are those of the float graph and
``tools/deploy_onnx.py`` runs it unchanged.

The activation ranges come from running the float graph on ``num_images`` images of a
``DATASETS`` name (:class:`DatasetCalibrationReader`), spread evenly over the dataset, fed
as the graph takes them (uint8 HWC in ``INPUT.FORMAT``; resized first for a
``--no-resize`` graph).
"""
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from detectron2.data import DatasetCatalog, detection_utils
from detectron2.data import transforms as T

__all__ = [
    "CALIBRATION_METHODS",
    "calibration_files",
    "dataset_dicts",
    "DatasetCalibrationReader",
    "conv_node_names",
    "quantize_end_to_end",
]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def dataset_dicts(dataset_name: str) -> List[dict]:
    """``DatasetCatalog.get(dataset_name)``, with an error that names the key and the
    registered fcos_d2 datasets when the name is unknown."""
    if dataset_name not in DatasetCatalog.list():
        ours = sorted(n for n in DatasetCatalog.list() if n.startswith("fcos"))
        raise KeyError(
            f"calibration dataset {dataset_name!r} is not registered in Detectron2's "
            f"DatasetCatalog (fcos_d2's: {ours}; register your own with DatasetCatalog.register)"
        )
    return DatasetCatalog.get(dataset_name)


def calibration_files(dataset_name: str, num_images: int) -> List[str]:
    """The ``file_name`` of ``num_images`` images of the dataset, spread evenly over it."""
    if num_images < 1:
        raise ValueError(f"the number of calibration images must be >= 1, got {num_images}")
    dicts = dataset_dicts(dataset_name)
    if not dicts:
        raise ValueError(f"calibration dataset {dataset_name!r} has no images")
    if num_images > len(dicts):
        raise ValueError(
            f"{num_images} calibration images asked for, but {dataset_name!r} has {len(dicts)}"
        )
    picks = np.linspace(0, len(dicts) - 1, num_images).round().astype(int)
    return [dicts[i]["file_name"] for i in picks]


class DatasetCalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol (``get_next`` / ``rewind``) over the
    images of a registered dataset, as inputs of the end-to-end graph.

    Images are read as they are asked for, one at a time (a progress line every 16).
    """

    def __init__(
        self,
        dataset_name: str,
        num_images: int,
        image_format: str,
        input_name: str = "image",
        resize: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            dataset_name, num_images: which images (see :func:`calibration_files`).
            image_format: the graph's channel order (``INPUT.FORMAT``: "BGR" or "RGB").
            input_name: the graph's input.
            resize: (shortest edge, longest limit) to resize to first -- for graphs built
                without the in-graph resize; None feeds the images as they are.
        """
        self.files = calibration_files(dataset_name, num_images)
        self.image_format = image_format
        self.input_name = input_name
        self.resize = T.ResizeShortestEdge(*resize) if resize else None
        self.position = 0
        self.start = time.perf_counter()

    def __len__(self) -> int:
        return len(self.files)

    def read(self, path: str) -> np.ndarray:
        """(H, W, 3) uint8 graph input of one file."""
        try:
            image = detection_utils.read_image(path, format=self.image_format)
        except (OSError, ValueError) as e:
            raise OSError(f"calibration image {path}: cannot be read ({e})") from e
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.position >= len(self.files):
            return None
        path = self.files[self.position]
        self.position += 1
        if self.position % 16 == 0 or self.position == len(self.files):
            elapsed = time.perf_counter() - self.start
            print(f"calibration: {self.position}/{len(self.files)} images ({elapsed:.0f} s)",
                  flush=True)  # fmt: skip
        return {self.input_name: self.read(path)}

    def rewind(self) -> None:
        self.position = 0
        self.start = time.perf_counter()


def conv_node_names(path: str) -> List[str]:
    """Names of the graph's ``Conv`` nodes, in graph order."""
    import onnx

    return [n.name for n in onnx.load(path, load_external_data=False).graph.node
            if n.op_type == "Conv"]  # fmt: skip


def quantize_end_to_end(
    fp32_path: str,
    int8_path: str,
    reader: DatasetCalibrationReader,
    method: str = "minmax",
    exclude: Sequence[str] = (),
) -> List[str]:
    """Write the QDQ int8 copy of the float end-to-end graph ``fp32_path`` to ``int8_path``.

    Args:
        reader: the calibration images.
        method: how activation ranges are taken from the calibration outputs: "minmax"
            (the observed range), "percentile" (99.999 % of the values), "entropy".
        exclude: names of ``Conv`` nodes to keep float (see :func:`conv_node_names`).

    Returns:
        the names of the quantised ``Conv`` nodes.
    """
    from onnxruntime.quantization import CalibrationMethod, quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}  # fmt: skip
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}: expected {CALIBRATION_METHODS}")
    convs = conv_node_names(fp32_path)
    unknown = sorted(set(exclude) - set(convs))
    if unknown:
        raise ValueError(f"{fp32_path} has no Conv nodes named {unknown}")
    if not convs:
        raise ValueError(f"{fp32_path} has no Conv nodes to quantise")
    os.makedirs(os.path.dirname(os.path.abspath(int8_path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        # ONNX Runtime's graph optimisation first: shared biases reach the Conv nodes through
        # Identity nodes, which the quantiser needs as initialisers to quantise them
        optimised = os.path.join(folder, "optimised.onnx")
        quant_pre_process(fp32_path, optimised, skip_symbolic_shape=True)
        quantize_optimised(optimised, int8_path, reader, methods[method], exclude)
    return [c for c in convs if c not in set(exclude)]


def quantize_optimised(fp32_path, int8_path, reader, method, exclude) -> None:
    """onnxruntime's ``quantize_static``: QDQ, Conv only, int8 weights per channel, uint8
    activations."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        fp32_path,
        int8_path,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=list(exclude),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
    )
