"""Evaluation: the paper's metric and the Detectron2 evaluators of both protocols."""

from .paper_metric import PaperMetric
from .sem_seg_evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator

__all__ = ["PaperMetric", "PaperSemSegEvaluator", "StandardSemSegEvaluator"]
