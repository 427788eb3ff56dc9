"""Evaluation: the paper's metric and the Detectron2 evaluators of both protocols."""

from .paper_metric import PaperMetric
from .results_io import atomic_write_json, atomic_write_png
from .sem_seg_evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator

__all__ = [
    "PaperMetric",
    "PaperSemSegEvaluator",
    "StandardSemSegEvaluator",
    "atomic_write_json",
    "atomic_write_png",
]
