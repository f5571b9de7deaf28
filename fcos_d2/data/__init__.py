"""Data: the synthetic ``fcos_demo`` datasets (generated on first use).

The dataset mapper lives in :mod:`fcos_d2.data.mapper`.
"""
from .synthetic import DEMO_CLASSES, ensure_demo_dataset, register_demo_datasets

__all__ = ["DEMO_CLASSES", "ensure_demo_dataset", "register_demo_datasets"]
