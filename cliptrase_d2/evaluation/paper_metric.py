"""The metric printed by the authors' evaluation script (docs/method.md section 9, `paper`
protocol).

Pure NumPy, so it can be used and tested without Detectron2. Derived from, and checked against,
every run of the authors' code in the reference fixtures (``tests/test_evaluation.py``):

- One confusion matrix over the whole dataset (rows: ground truth, columns: prediction) with
  ``num_classes`` rows, where ``num_classes`` includes the background class on benchmarks with
  background words (VOC21: 20 classes + background = 21). Statistics are accumulated over all
  images, not averaged per image.
- A ground-truth pixel is counted only if its label is in ``[0, num_classes)`` (and is not
  ``ignore_label``). The authors' script left other ids out quietly; the evaluators refuse a
  ground truth holding any (:func:`unknown_label_ids`), so only void is left out.
  Void-as-background (VOC21, PC60, COCO-Object) is a relabelling done before counting.
- With ``tp_c`` the diagonal, ``gt_c`` the row sums and ``pred_c`` the column sums:

      pAcc  = sum(tp) / sum(gt)
      mAcc  = mean over ALL num_classes classes of tp_c / (gt_c + 0.01)
      IoU_c = tp_c / (gt_c + pred_c - tp_c + 0.01)
      mIoU  = mean of IoU_c over the classes with gt_c > 0
      fwIoU = sum over classes with gt_c > 0 of (gt_c / sum(gt)) * IoU_c

  all in percent; the script printed each rounded to 2 decimals (``np.round``).
"""

from typing import Dict, Optional

import numpy as np

SMOOTHING = 0.01  # added to the denominators of the per-class accuracy and IoU, in pixels


def unknown_label_ids(gt: np.ndarray, num_classes: int, ignore_label: Optional[int]) -> np.ndarray:
    """The sorted ids of ``gt`` that are neither classes (``[0, num_classes)``) nor
    ``ignore_label``. The authors' script left such pixels out of its counts; the evaluators
    reject a ground truth that holds any (a label map that does not match the classes would
    otherwise lower the numbers without a word)."""
    ids = np.unique(np.asarray(gt))
    unknown = (ids < 0) | (ids >= num_classes)
    if ignore_label is not None:
        unknown &= ids != ignore_label
    return ids[unknown]


def paper_metric(confusion: np.ndarray) -> Dict[str, object]:
    """The paper's metric, in percent, from the (ground truth, prediction) confusion matrix of
    the counted pixels.

    Returns a dict with ``pAcc``, ``mAcc``, ``fwIoU``, ``mIoU`` (unrounded floats) and the
    ``per_class_IoU`` (``num_classes`` floats, NaN for classes absent from the ground truth,
    which mIoU leaves out). ``pAcc`` and ``mIoU`` are NaN when no pixel has been counted.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    gt_pixels = confusion.sum(axis=1)
    pred_pixels = confusion.sum(axis=0)
    total = gt_pixels.sum()
    present = gt_pixels > 0

    iou = tp / (gt_pixels + pred_pixels - tp + SMOOTHING)
    acc = tp / (gt_pixels + SMOOTHING)
    metrics = {
        "pAcc": 100.0 * tp.sum() / total if total > 0 else float("nan"),
        "mAcc": 100.0 * acc.mean(),
        "fwIoU": 100.0 * (gt_pixels[present] / total * iou[present]).sum() if total > 0 else 0.0,
        "mIoU": 100.0 * iou[present].mean() if present.any() else float("nan"),
    }
    metrics = {key: float(value) for key, value in metrics.items()}
    metrics["per_class_IoU"] = np.where(present, 100.0 * iou, np.nan)
    return metrics
