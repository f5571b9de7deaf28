"""pycocotools' COCOeval under the name of Detectron2's C++-accelerated ``COCOeval_opt``.

On a pure-Python Detectron2, ``detectron2.evaluation.fast_eval_api.COCOeval_opt`` would call
into the missing ``detectron2._C``.  :func:`fcos_d2.compat.apply` replaces it with this class,
so ``COCOEvaluator`` works with its default ``use_fast_impl=True`` (the official,
slower, evaluation code is used; results are the official ones).
"""
import logging

from pycocotools.cocoeval import COCOeval

__all__ = ["COCOeval_opt"]

_warned = False


class COCOeval_opt(COCOeval):
    """``pycocotools.cocoeval.COCOeval``; stands in for the C++ evaluator."""

    def __init__(self, *args, **kwargs):
        global _warned
        if not _warned:
            _warned = True
            logging.getLogger(__name__).info(
                "Detectron2's C++ COCO evaluator is absent (pure-Python install): "
                "using pycocotools' COCOeval."
            )
        super().__init__(*args, **kwargs)
