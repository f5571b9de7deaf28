"""fcos_d2: FCOS for Detectron2.

``pip install -e .`` installs fcos_d2 and the packages it imports itself.  Detectron2 is not
among them: it has no PyPI name (``pip install detectron2`` does not give it), so it must
already be installed -- built from source, from a conda package, or the pure-Python v0.6
that ``make setup`` installs (``tools/install_detectron2.py``).  The ranges below include the
versions pinned in requirements.txt (what the tests run with).

Extras: ``[export]`` (ONNX export, ONNX Runtime, and OpenCV for ``tools/deploy_onnx.py``),
``[test]`` (the test suite).
"""
from setuptools import find_packages, setup

setup(
    name="fcos_d2",
    version="0.1.0",
    description="FCOS (Fully Convolutional One-Stage object detection) for Detectron2",
    packages=find_packages(include=["fcos_d2", "fcos_d2.*"]),
    python_requires=">=3.8",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy>=1.21",
        "Pillow>=9.1",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
    ],
    extras_require={
        "export": [
            "onnx>=1.14", "onnxruntime>=1.15", "onnxscript>=0.5", "opencv-python-headless>=4.5"
        ],
        "test": ["pytest>=7", "onnx>=1.14", "onnxruntime>=1.15"],
    },
)
