"""fcos_d2: FCOS for Detectron2.

Dependencies are installed by ``scripts/setup_env.sh`` from requirements.txt (Detectron2 is
not on PyPI under its own name, so it is not listed here); ``pip install -e .`` only makes
the package importable.
"""
from setuptools import find_packages, setup

setup(
    name="fcos_d2",
    version="0.1.0",
    description="FCOS (Fully Convolutional One-Stage object detection) for Detectron2",
    packages=find_packages(include=["fcos_d2", "fcos_d2.*"]),
    python_requires=">=3.8",
)
