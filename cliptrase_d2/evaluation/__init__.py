"""Evaluation: the paper's metric and the Detectron2 evaluators of both protocols."""

from .paper_metric import paper_metric
from .sem_seg_evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator

__all__ = ["paper_metric", "PaperSemSegEvaluator", "StandardSemSegEvaluator"]
