"""Detectron2 evaluators for the two protocols of SPEC section 9.

- :class:`PaperSemSegEvaluator`: the `paper` protocol. Predictions are S x S in the frame of
  the resized and center-cropped image; the ground truth gets the same crop; the metric is the
  one the authors' script printed (:class:`~.paper_metric.PaperMetric`).
- :class:`StandardSemSegEvaluator`: the `standard` protocol, Detectron2's own
  ``SemSegEvaluator`` (original resolution, void ignored) with clear errors for malformed
  inputs.

Both can save the predicted label maps and write their results as JSON, atomically.
"""

import inspect
import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..method.preprocess import resize_and_center_crop
from ..method.refinement import channel_argmax
from .paper_metric import PaperMetric, unknown_label_ids
from .results_io import atomic_write_json, atomic_write_png
from ..errors import InputError, MissingFileError, UnknownNameError

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("mIoU", "fwIoU", "mAcc", "pAcc")

# detectron2 after 0.6 (March 2022 on) reads ground truth through a `sem_seg_loading_fn` hook.
LIBRARY_LOADING_HOOK = "sem_seg_loading_fn" in inspect.signature(SemSegEvaluator).parameters


def check_registered(dataset_name: str) -> None:
    """KeyError listing the registered datasets when ``dataset_name`` is not one of them."""
    registered = DatasetCatalog.list()
    if dataset_name not in registered:
        raise UnknownNameError(
            f"Dataset '{dataset_name}' is not registered. Registered datasets: "
            f"{', '.join(sorted(registered)) or '(none)'}"
        )


def image_id_of(dataset_dict: dict) -> str:
    """The ``image_id`` of a dataset dict, or the stem of its ``file_name`` when it has none."""
    if "image_id" in dataset_dict:
        return str(dataset_dict["image_id"])
    return os.path.splitext(os.path.basename(dataset_dict["file_name"]))[0]


def _open_ground_truth(path: str, dataset_name: str):
    """The file object of a ground truth; FileNotFoundError naming it when it is missing."""
    try:
        return PathManager.open(path, "rb")
    except FileNotFoundError as e:
        raise MissingFileError(
            f"ground truth '{path}' of dataset '{dataset_name}' not found"
        ) from e


def open_label_map(path: str, dataset_name: str) -> Image.Image:
    """Open a ground-truth PNG, fully loaded; FileNotFoundError naming it when it is missing,
    InputError naming it when it is not a readable image."""
    with _open_ground_truth(path, dataset_name) as f:
        try:
            image = Image.open(f)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise _unreadable(path, dataset_name, error) from None
    return image


def label_map_size(path: str, dataset_name: str) -> Tuple[int, int]:
    """(width, height) of a ground-truth image, read from its header only."""
    with _open_ground_truth(path, dataset_name) as f:
        try:
            with Image.open(f) as image:
                return image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise _unreadable(path, dataset_name, error) from None


def _unreadable(path: str, dataset_name: str, error: Exception) -> InputError:
    return InputError(
        f"cannot read ground truth '{path}' of dataset '{dataset_name}': {error}. Check that "
        "it is a complete label image (PNG/TIFF) and not truncated; re-run the prepare script"
    )


def check_label_ids(gt: np.ndarray, path: str, num_classes: int, ignore_label) -> None:
    """InputError naming the file and the ids when ``gt`` holds ids that are neither classes
    (``[0, num_classes)``) nor ``ignore_label`` (void)."""
    unknown = unknown_label_ids(gt, num_classes, ignore_label)
    if unknown.size:
        raise InputError(
            f"ground truth '{path}' holds ids {unknown[:10].tolist()} outside "
            f"[0, {num_classes}) that are not ignore_label {ignore_label}; the dataset's "
            "label maps do not match its classes (re-run its prepare script)"
        )


def check_ground_truth_size(gt_size: Tuple[int, int], dataset_dict: dict, path: str) -> None:
    """InputError naming both files when a ground truth's (height, width) differs from its
    image's (the record's ``height``/``width``, which the test mapper sets from the pixels)."""
    if "height" not in dataset_dict or "width" not in dataset_dict:
        return
    image_size = (int(dataset_dict["height"]), int(dataset_dict["width"]))
    if tuple(gt_size) != image_size:
        raise InputError(
            f"ground truth '{path}' is {gt_size[0]}x{gt_size[1]} but its image "
            f"'{dataset_dict['file_name']}' is {image_size[0]}x{image_size[1]} (height x width); "
            "a label map must have its image's size"
        )


def label_map_to_array(image: Image.Image, path: str) -> np.ndarray:
    """(H, W) int64 label ids of a single-channel label PNG (8-bit, palette or 16-bit)."""
    labels = np.asarray(image, dtype=np.int64)
    if labels.ndim != 2:
        raise InputError(
            f"ground truth '{path}' has shape {labels.shape} (PIL mode {image.mode}); "
            "expected a single-channel label map"
        )
    return labels


def checked_scores(scores, num_classes: int, file_name: str) -> torch.Tensor:
    """(K, H, W) class scores as a tensor, K checked against the dataset's classes."""
    scores = torch.as_tensor(scores)
    if scores.dim() != 3:
        raise InputError(
            f"{file_name}: expected 'sem_seg' scores of shape (K, H, W), got {tuple(scores.shape)}"
        )
    if scores.shape[0] != num_classes:
        raise InputError(
            f"{file_name}: the model scored {scores.shape[0]} classes but the dataset has "
            f"{num_classes}"
        )
    return scores


def predicted_labels(scores, num_classes: int, file_name: str) -> np.ndarray:
    """(K, H, W) class scores -> (H, W) int64 argmax, checking K against the dataset's classes."""
    scores = checked_scores(scores, num_classes, file_name)
    return channel_argmax(scores).cpu().numpy().astype(np.int64)


def prediction_png_dtype(num_classes: int) -> np.dtype:
    """uint8 label PNGs up to 255 classes, 16-bit beyond."""
    if num_classes <= 255:
        return np.dtype(np.uint8)
    if num_classes <= 65535:
        return np.dtype(np.uint16)
    raise InputError(f"{num_classes} classes do not fit in a 16-bit PNG")


class _ResultsWriter:
    """What both evaluators add to Detectron2's: prediction PNGs, results JSON, a log table."""

    def _init_outputs(
        self,
        dataset_name: str,
        output_dir: Optional[str],
        save_predictions: bool,
        num_classes: int,
        run_info: Optional[Dict] = None,
    ) -> None:
        self._run_info = dict(run_info or {})  # what produced the numbers, written beside them
        if save_predictions and not output_dir:
            raise InputError(
                "save_predictions=True needs an output_dir to write the predictions to"
            )
        self._results_dir = output_dir
        self._save_predictions = save_predictions
        self._prediction_dtype = prediction_png_dtype(num_classes)
        self._predictions_dir = (
            os.path.join(output_dir, "predictions", dataset_name) if save_predictions else None
        )

    def _save_prediction(self, dataset_dict: dict, pred: np.ndarray) -> None:
        if self._save_predictions:
            path = os.path.join(self._predictions_dir, image_id_of(dataset_dict) + ".png")
            atomic_write_png(path, pred.astype(self._prediction_dtype))

    def _write_results(
        self,
        protocol: str,
        dataset_name: str,
        class_names: List[str],
        summary: Dict[str, float],
        per_class_iou: np.ndarray,
        **extra,
    ) -> None:
        per_class = OrderedDict(zip(class_names, (float(v) for v in per_class_iou)))
        logger.info(
            "Semantic segmentation results on %s (%s protocol):\n%s\nPer-class IoU:\n%s",
            dataset_name,
            protocol,
            _summary_table(summary),
            _per_class_table(per_class),
        )
        if self._results_dir:
            path = os.path.join(self._results_dir, f"sem_seg_results_{dataset_name}.json")
            atomic_write_json(
                path,
                {
                    "dataset": dataset_name,
                    "protocol": protocol,
                    **({"run": self._run_info} if self._run_info else {}),
                    **extra,
                    **summary,
                    "per_class_IoU": per_class,
                },
            )
            logger.info("Wrote %s", path)


def _summary_table(summary: Dict[str, float]) -> str:
    return tabulate(
        [list(summary.values())],
        headers=list(summary.keys()),
        tablefmt="pipe",
        floatfmt=".2f",
        numalign="center",
    )


def _per_class_table(per_class: Dict[str, float], columns: int = 3) -> str:
    cells = [(name, "n/a" if np.isnan(iou) else f"{iou:.2f}") for name, iou in per_class.items()]
    flat = list(itertools.chain(*cells))
    rows = itertools.zip_longest(*[flat[i :: columns * 2] for i in range(columns * 2)])
    return tabulate(
        rows,
        headers=["class", "IoU"] * columns,
        tablefmt="pipe",
        stralign="left",
        disable_numparse=True,
    )


class PaperSemSegEvaluator(_ResultsWriter, DatasetEvaluator):
    """The `paper` protocol (SPEC section 9).

    Input dicts carry ``file_name``, and ``sem_seg_file_name`` (otherwise it is looked up in
    the DatasetCatalog by ``file_name``, as Detectron2's test-time mapper drops it) and
    optionally ``image_id`` (default: the file stem). Each output's ``sem_seg`` is a (K, S, S)
    score tensor in the frame of the image resized (shorter side S) and center-cropped to
    S x S, S = ``crop_size``; K = ``len(stuff_classes)``.

    Metadata read: ``stuff_classes``, ``ignore_label`` (default 255) and
    ``paper_void_as_background`` (default False): when True, ground-truth ``ignore_label``
    pixels count as background, the last class (VOC21, PC60, COCO-Object in the paper).
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        crop_size: int,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        save_predictions: bool = False,
        run_info: Optional[Dict] = None,
    ):
        check_registered(dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("stuff_classes"):
            raise UnknownNameError(
                f"Dataset '{dataset_name}' has no 'stuff_classes' in its metadata"
            )
        self._dataset_name = dataset_name
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = meta.get("ignore_label", 255)
        self._void_as_background = bool(meta.get("paper_void_as_background", False))
        self._crop_size = int(crop_size)
        self._distributed = distributed
        self._gt_files = {
            record["file_name"]: record["sem_seg_file_name"]
            for record in DatasetCatalog.get(dataset_name)
            if "sem_seg_file_name" in record
        }
        self._init_outputs(dataset_name, output_dir, save_predictions, self._num_classes, run_info)
        self.reset()

    def reset(self):
        self._metric = PaperMetric(self._num_classes, ignore_label=self._ignore_label)
        self._num_images = 0

    def _ground_truth(self, dataset_dict: dict) -> np.ndarray:
        """The (S, S) ground truth of one image, cropped like the image, void relabelled."""
        file_name = dataset_dict["file_name"]
        path = dataset_dict.get("sem_seg_file_name") or self._gt_files.get(file_name)
        if path is None:
            raise UnknownNameError(
                f"no ground truth (sem_seg_file_name) for '{file_name}' in '{self._dataset_name}'"
            )
        image = open_label_map(path, self._dataset_name)
        check_ground_truth_size((image.height, image.width), dataset_dict, path)
        check_label_ids(
            label_map_to_array(image, path), path, self._num_classes, self._ignore_label
        )
        gt = label_map_to_array(resize_and_center_crop(image, self._crop_size, Image.NEAREST), path)
        if self._void_as_background:
            gt[gt == self._ignore_label] = self._num_classes - 1
        return gt

    def process(self, inputs, outputs):
        size = self._crop_size
        for dataset_dict, output in zip(inputs, outputs):
            file_name = dataset_dict["file_name"]
            pred = predicted_labels(output["sem_seg"], self._num_classes, file_name)
            if pred.shape != (size, size):
                raise InputError(
                    f"{file_name}: the prediction is {pred.shape[0]}x{pred.shape[1]} but the paper "
                    f"evaluator of '{self._dataset_name}' expects crop_size {size}x{size}; the "
                    "model's protocol/input size does not match the evaluator's crop_size"
                )
            self._metric.update(pred, self._ground_truth(dataset_dict))
            self._num_images += 1
            self._save_prediction(dataset_dict, pred)

    def evaluate(self):
        """Only the main process returns the results (None elsewhere), like Detectron2's."""
        if self._distributed:
            comm.synchronize()
            parts = comm.gather((self._metric, self._num_images), dst=0)
            if not comm.is_main_process():
                return None
        else:
            parts = [(self._metric, self._num_images)]
        metric = PaperMetric(self._num_classes, ignore_label=self._ignore_label)
        for part_metric, _ in parts:
            metric.merge(part_metric)
        num_images = sum(count for _, count in parts)
        if num_images == 0:
            logger.warning("PaperSemSegEvaluator on %s received no predictions", self._dataset_name)
            return OrderedDict()

        scores = metric.compute()
        summary = OrderedDict((key, scores[key]) for key in SUMMARY_KEYS)
        results = OrderedDict(summary)
        for name, iou in zip(self._class_names, scores["per_class_IoU"]):
            results[f"IoU-{name}"] = float(iou)
        self._write_results(
            "paper",
            self._dataset_name,
            self._class_names,
            summary,
            scores["per_class_IoU"],
            crop_size=self._crop_size,
            num_images=num_images,
            void_as_background=self._void_as_background,
        )
        return OrderedDict({"sem_seg": results})


class StandardSemSegEvaluator(_ResultsWriter, SemSegEvaluator):
    """The `standard` protocol: Detectron2's ``SemSegEvaluator`` (predictions at the original
    resolution, ``ignore_label`` ignored, its metric and result keys: mIoU, fwIoU, mACC, pACC,
    IoU-<class>, ACC-<class>, and on detectron2 versions that compute it BoundaryIoU-<class> and
    min(IoU, B-Iou)-<class>), plus prediction PNGs, a results JSON and a log table.

    Detectron2 accumulates the metric. Before it reads a ground truth, this evaluator fails
    with a message naming the file when the ground truth is missing, has another size than the
    prediction or holds ids outside the classes; it does not build the COCO-format RLE
    ``sem_seg_predictions.json``.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        save_predictions: bool = False,
        run_info: Optional[Dict] = None,
    ):
        check_registered(dataset_name)
        loading = {"sem_seg_loading_fn": self._load_ground_truth} if LIBRARY_LOADING_HOOK else {}
        # output_dir is kept here: Detectron2's own (non-atomic) dumps are not written
        super().__init__(dataset_name, distributed=distributed, output_dir=None, **loading)
        if 0 <= self._ignore_label < self._num_classes:
            raise InputError(
                f"Dataset '{dataset_name}': ignore_label {self._ignore_label} is also a class id "
                f"(there are {self._num_classes} classes); use 65535 with more than 255 classes"
            )
        self._init_outputs(dataset_name, output_dir, save_predictions, self._num_classes, run_info)

    def reset(self):
        super().reset()
        self._num_images = 0

    def _load_ground_truth(self, path: str, dtype=np.int64) -> np.ndarray:
        """(H, W) label ids of one ground truth, checked: one channel, ids are classes or
        ``ignore_label``. Detectron2 loads ground truth through it where it has the hook."""
        gt = label_map_to_array(open_label_map(path, self._dataset_name), path)
        check_label_ids(gt, path, self._num_classes, self._ignore_label)
        return gt.astype(dtype, copy=False)

    def process(self, inputs, outputs):
        for dataset_dict, output in zip(inputs, outputs):
            file_name = dataset_dict["file_name"]
            scores = checked_scores(output["sem_seg"], self._num_classes, file_name)
            height, width = scores.shape[1:]
            path = dataset_dict.get("sem_seg_file_name") or self.input_file_to_gt_file.get(
                file_name
            )
            if path is None:
                raise UnknownNameError(
                    f"no ground truth (sem_seg_file_name) for '{file_name}' in "
                    f"'{self._dataset_name}'"
                )
            gt_width, gt_height = label_map_size(path, self._dataset_name)
            check_ground_truth_size((gt_height, gt_width), dataset_dict, path)
            if (gt_height, gt_width) != (height, width):
                raise InputError(
                    f"ground truth '{path}' is {gt_height}x{gt_width} but the prediction for "
                    f"'{file_name}' is {height}x{width}; the standard protocol "
                    "evaluates at the original resolution"
                )
            if not LIBRARY_LOADING_HOOK:  # detectron2 0.6 reads the PNG itself, unchecked
                self._load_ground_truth(path)
            self.input_file_to_gt_file[file_name] = path  # the library reads the file checked here
            super().process([dataset_dict], [output])
            self._num_images += 1
            if self._save_predictions:
                self._save_prediction(dataset_dict, channel_argmax(scores).cpu().numpy())

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        """Nothing: Detectron2 writes these COCO-format RLEs only to its output_dir, which it is
        not given (they would cost time and memory, gathered from every process, for nothing)."""
        return []

    def evaluate(self):
        """Only the main process returns the results (None elsewhere), like Detectron2's."""
        counts = comm.gather(self._num_images, dst=0) if self._distributed else [self._num_images]
        results = super().evaluate()
        if results is None:
            return None
        res = results["sem_seg"]
        summary = OrderedDict(
            (
                ("mIoU", res["mIoU"]),
                ("fwIoU", res["fwIoU"]),
                ("mAcc", res["mACC"]),
                ("pAcc", res["pACC"]),
            )
        )
        per_class_iou = np.array(
            [res[f"IoU-{name}"] for name in self._class_names], dtype=np.float64
        )
        extra = {}
        if f"BoundaryIoU-{self._class_names[0]}" in res:
            extra["per_class_BoundaryIoU"] = OrderedDict(
                (name, float(res[f"BoundaryIoU-{name}"])) for name in self._class_names
            )
        self._write_results(
            "standard",
            self._dataset_name,
            list(self._class_names),
            summary,
            per_class_iou,
            num_images=sum(counts),
            **extra,
        )
        return results
