"""Detectron2 evaluators for the two protocols, both Detectron2's ``SemSegEvaluator`` reading
the ground truth through its loading hook (``sem_seg_loading_fn``).

- :class:`PaperSemSegEvaluator`: the `paper` protocol. Predictions are S x S in the frame of
  the resized and center-cropped image; the ground truth gets the same crop; the metric is the
  one the authors' script printed (:func:`~.paper_metric.paper_metric`), from Detectron2's
  confusion matrix.
- :class:`StandardSemSegEvaluator`: the `standard` protocol, Detectron2's own metric (original
  resolution, void ignored).

Both check the ground truth and the predictions with errors that name the file, can save the
predicted label maps, write their results as JSON (atomically) and log them as tables. In an
output folder claimed with ``--resume`` (``cliptrase_d2.engine.checks.claim_output_dir``), the
saved label maps of the runs it continues are scored instead of predicted again.
"""

import inspect
import itertools
import logging
import os
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..atomic import (
    RESUMED_RECORD,
    atomic_write_json,
    atomic_write_png,
    claimed_root,
    recorded_files,
)
from ..method.preprocess import resize_and_center_crop
from ..method.refinement import channel_argmax
from .paper_metric import paper_metric, unknown_label_ids
from ..errors import InputError, MissingFileError, UnknownNameError

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("mIoU", "fwIoU", "mAcc", "pAcc")

# detectron2 after 0.6 (March 2022 on) reads ground truth through a `sem_seg_loading_fn` hook.
LIBRARY_LOADING_HOOK = "sem_seg_loading_fn" in inspect.signature(SemSegEvaluator).parameters


def sem_seg_metadata(dataset_name: str):
    """The Metadata of a registered semantic-segmentation dataset, checked: registered (else a
    KeyError listing every registered dataset, Detectron2's own and the user's included),
    ``stuff_classes`` given, each name once (the results are keyed by name: one would hide the
    other), and ``ignore_label`` the integer id of void pixels outside the class ids (a class id
    there would never count), or None for no void pixels."""
    registered = DatasetCatalog.list()
    if dataset_name not in registered:
        raise UnknownNameError(
            f"Dataset '{dataset_name}' is not registered. Registered datasets: "
            f"{', '.join(sorted(registered)) or '(none)'}"
        )
    meta = MetadataCatalog.get(dataset_name)
    if not meta.get("stuff_classes"):
        raise UnknownNameError(f"Dataset '{dataset_name}' has no 'stuff_classes' in its metadata")
    repeated = [name for name, count in Counter(meta.stuff_classes).items() if count > 1]
    if repeated:
        raise InputError(
            f"Dataset '{dataset_name}': metadata stuff_classes names {repeated[:5]} more "
            "than once; give each class a distinct name"
        )
    ignore, num_classes = meta.get("ignore_label", "missing"), len(meta.stuff_classes)
    if ignore is not None and not (
        isinstance(ignore, (int, np.integer)) and not 0 <= ignore < num_classes
    ):
        raise InputError(
            f"Dataset '{dataset_name}': metadata ignore_label is {ignore!r}, not the integer "
            f"id of void pixels outside the {num_classes} class ids: set it with "
            f"MetadataCatalog.get('{dataset_name}').set(ignore_label=255), 65535 with more "
            "than 255 classes (None: no void pixels)"
        )
    return meta


def open_label_map(path: str, dataset_name: str, load: bool = True) -> Image.Image:
    """A ground-truth image, decoded (or with ``load=False`` only its header read: its size);
    MissingFileError naming it when it is missing, InputError when it is not a readable image."""
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            if load:
                image.load()
            return image
    except FileNotFoundError as e:
        raise MissingFileError(
            f"ground truth '{path}' of dataset '{dataset_name}' not found"
        ) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(
            f"cannot read ground truth '{path}' of dataset '{dataset_name}': {error}. Check that "
            "it is a complete label image (PNG/TIFF) and not truncated; re-run the prepare script"
        ) from None


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


def ground_truth_records(dataset_name: str) -> List[dict]:
    """The records of a registered dataset; InputError naming one without ``sem_seg_file_name``
    (its ground-truth label map)."""
    records = DatasetCatalog.get(dataset_name)
    for record in records:
        if "sem_seg_file_name" not in record:
            raise InputError(
                f"Dataset '{dataset_name}': the record of '{record.get('file_name')}' has no "
                "'sem_seg_file_name' (its ground-truth label map); register the dataset "
                "with detectron2's load_sem_seg or give every record one"
            )
    return records


def label_ids(image: Image.Image, path: str) -> np.ndarray:
    """The int64 values of a label map; InputError naming the file when its pixels are floats
    (a float TIFF, PIL mode 'F'), which are no class ids and would be truncated without a word,
    or when it is a JPEG, whose compression changes the ids along region borders unseen."""
    if image.format in ("JPEG", "MPO"):
        raise InputError(
            f"ground truth '{path}' is a JPEG, whose lossy compression changes class ids along "
            "region borders; save label maps losslessly (PNG): re-run the dataset's prepare script"
        )
    labels = np.asarray(image)
    if labels.dtype.kind == "f":
        raise InputError(
            f"ground truth '{path}' is a float image (PIL mode {image.mode}); a label map must be "
            "an integer single-channel image (8-bit, palette or 16-bit PNG): re-run the dataset's "
            "prepare script"
        )
    return labels.astype(np.int64, copy=False)


def checked_labels(image: Image.Image, path: str, num_classes: int, ignore_label) -> np.ndarray:
    """(H, W) int64 label ids of a single-channel label map (8-bit, palette or 16-bit);
    InputError naming the file when it holds floats (:func:`label_ids`), has more channels, or
    ids that are neither classes (``[0, num_classes)``) nor ``ignore_label`` (void)."""
    labels = label_ids(image, path)
    if labels.ndim != 2:
        raise InputError(
            f"ground truth '{path}' has shape {labels.shape} (PIL mode {image.mode}); "
            "expected a single-channel label map"
        )
    unknown = unknown_label_ids(labels, num_classes, ignore_label)
    if unknown.size:
        raise InputError(
            f"ground truth '{path}' holds ids {unknown[:10].tolist()} outside "
            f"[0, {num_classes}) that are not ignore_label {ignore_label}; the dataset's "
            "label maps do not match its classes (re-run its prepare script)"
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


def prediction_png_dtype(num_classes: int) -> np.dtype:
    """uint8 label PNGs up to 255 classes, 16-bit beyond."""
    if num_classes <= 255:
        return np.dtype(np.uint8)
    if num_classes <= 65535:
        return np.dtype(np.uint16)
    raise InputError(f"{num_classes} classes do not fit in a 16-bit PNG")


def prediction_path(output_dir: str, dataset_name: str, dataset_dict: dict) -> str:
    """Where an evaluation saves the label map of one image: named by its ``image_id``, or by the
    stem of its ``file_name`` when it has none."""
    stem = os.path.splitext(os.path.basename(dataset_dict["file_name"]))[0]
    return os.path.join(
        output_dir, "predictions", dataset_name, f"{dataset_dict.get('image_id', stem)}.png"
    )


def saved_predictions(
    output_dir: Optional[str], dataset_name: str, records: List[dict]
) -> Dict[str, str]:
    """``file_name`` -> saved label map, for the dataset's ``records`` whose prediction a
    resumed evaluation takes over: listed in the ``resumed`` record of the claimed folder holding
    ``output_dir`` (files an earlier run of the same settings wrote there, see
    ``claim_output_dir``) and present. Empty outside such a folder."""
    root = claimed_root(output_dir) if output_dir else None
    resumed = recorded_files(root, (RESUMED_RECORD,)) if root else set()
    if not resumed:
        return {}
    saved = {}
    for record in records:
        path = prediction_path(output_dir, dataset_name, record)
        if os.path.relpath(os.path.abspath(path), root) in resumed and os.path.isfile(path):
            saved[record["file_name"]] = path
    return saved


class _Labels:
    """A prediction already reduced to (H, W) labels, in the form ``SemSegEvaluator.process``
    reads (``output["sem_seg"].argmax(dim=0)``): the argmax is taken once, for the metric and
    the saved label map alike, and a saved label map is scored the same way."""

    def __init__(self, labels: torch.Tensor):
        self._labels = labels

    def argmax(self, dim: int) -> torch.Tensor:
        return self._labels


class _CheckedSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` with what both protocols add: the ground truth and
    predictions checked (errors naming the file), the label maps saved, the saved ones of a
    resumed run scored instead of predicted, and the results written as JSON and logged as
    tables. Subclasses read the ground truth in ``_load_ground_truth``, check a prediction's
    size in ``_check_prediction`` and make their results in ``_protocol_results``."""

    protocol = ""

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        save_predictions: bool = False,
        run_info: Optional[Dict] = None,
    ):
        sem_seg_metadata(dataset_name)
        if save_predictions and not output_dir:
            raise InputError(
                "save_predictions=True needs an output_dir to write the predictions to"
            )
        records, saved_as = ground_truth_records(dataset_name), {}
        for record in records if save_predictions else ():
            path = prediction_path(output_dir, dataset_name, record)
            if saved_as.setdefault(path, record) is not record:
                raise InputError(
                    f"Dataset '{dataset_name}': the predictions of '{saved_as[path]['file_name']}'"
                    f" and '{record['file_name']}' would both be saved as {path} (named by "
                    "'image_id', else by the image's file stem); give the records distinct "
                    "'image_id's"
                )
        hook = {"sem_seg_loading_fn": self._load_ground_truth} if LIBRARY_LOADING_HOOK else {}
        # output_dir is kept here: Detectron2's own (non-atomic) dumps are not written
        super().__init__(dataset_name, distributed=distributed, output_dir=None, **hook)
        self._class_names = list(self._class_names)
        self._run_info = dict(run_info or {})  # what produced the numbers, written beside them
        self._results_dir = output_dir
        self._save_predictions = save_predictions
        self._prediction_dtype = prediction_png_dtype(self._num_classes)
        self._saved = saved_predictions(output_dir, dataset_name, records)
        if self._saved:
            logger.info(
                "%s: %d images already predicted in %s (resumed)",
                dataset_name,
                len(self._saved),
                output_dir,
            )
        self._clear()

    def _clear(self):
        super().reset()
        self._num_images = 0

    def reset(self):
        """Also scores this process's share of the saved label maps a resumed run takes over."""
        self._clear()
        share = sorted(self._saved.items())
        if self._distributed:
            share = share[comm.get_rank() :: comm.get_world_size()]
        for file_name, path in share:  # each checked as its prediction was, naming the file
            shown = (
                f"{file_name} (its label map {path}, saved by the run --resume continues: delete "
                "it to predict the image again, or run without --resume)"
            )
            try:
                with Image.open(path) as saved:
                    labels = np.asarray(saved)
            except (OSError, SyntaxError, ValueError) as error:
                raise InputError(f"{shown}: cannot be read ({error})") from None
            bad = labels.dtype.kind not in "iub" or labels.ndim != 2 or not labels.size
            if bad or not 0 <= labels.min() <= labels.max() < self._num_classes:
                values = "" if bad else f", ids {labels.min()} to {labels.max()}"
                raise InputError(
                    f"{shown}: not a map of the {self._num_classes} classes' ids (a "
                    f"{labels.dtype} map of shape {labels.shape}{values})"
                )
            self._score({"file_name": file_name}, torch.from_numpy(labels.astype(np.int64)), shown)

    def process(self, inputs, outputs):
        for dataset_dict, output in zip(inputs, outputs):
            scores = checked_scores(output["sem_seg"], self._num_classes, dataset_dict["file_name"])
            labels = channel_argmax(scores).cpu()
            self._score(dataset_dict, labels)
            if self._save_predictions:
                path = prediction_path(self._results_dir, self._dataset_name, dataset_dict)
                atomic_write_png(path, labels.numpy().astype(self._prediction_dtype))

    def _score(self, dataset_dict: dict, labels: torch.Tensor, shown: str = "") -> None:
        """Checks one image's (H, W) labels and ground truth, then adds them to the metric
        (``shown``: how errors name the prediction, default its image's file name)."""
        file_name = dataset_dict["file_name"]
        path = dataset_dict.get("sem_seg_file_name") or self.input_file_to_gt_file.get(file_name)
        if path is None:
            raise UnknownNameError(
                f"no ground truth (sem_seg_file_name) for '{file_name}' in '{self._dataset_name}'"
            )
        gt_width, gt_height = open_label_map(path, self._dataset_name, load=False).size
        check_ground_truth_size((gt_height, gt_width), dataset_dict, path)
        self._check_prediction(shown or file_name, tuple(labels.shape), path, (gt_height, gt_width))
        self.input_file_to_gt_file[file_name] = path  # the record's own wins over the catalog's
        if LIBRARY_LOADING_HOOK:
            super().process([dataset_dict], [{"sem_seg": _Labels(labels)}])
        else:  # detectron2 0.6 has no loading hook: its process, reading through ours
            pred = labels.numpy()
            gt = self._load_ground_truth(path)
            gt[gt == self._ignore_label] = self._num_classes
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
        self._num_images += 1

    def evaluate(self):
        """Detectron2's evaluation, which sums every process's confusion matrix into the main
        process's (its raw results line left out of the log: a table stands in for it), then the
        protocol's results. Only the main process returns them (None elsewhere), like
        Detectron2's."""
        counts = comm.gather(self._num_images, dst=0) if self._distributed else [self._num_images]
        level = self._logger.level
        self._logger.setLevel(logging.WARNING)  # its warnings still show
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # no image: said below, once
                results = super().evaluate()
        finally:
            self._logger.setLevel(level)
        if results is None:
            return None
        if sum(counts) == 0:  # no results (Detectron2's would be NaN): none written either
            logger.warning(
                "%s on %s received no predictions", type(self).__name__, self._dataset_name
            )
            return OrderedDict()
        return self._protocol_results(results, sum(counts))

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        """Nothing: Detectron2 writes these COCO-format RLEs only to its output_dir, which it is
        not given (they would cost time and memory, gathered from every process, for nothing)."""
        return []

    def _write_results(self, summary: Dict[str, float], per_class_iou, **extra) -> None:
        per_class = OrderedDict(zip(self._class_names, (float(v) for v in per_class_iou)))
        logger.info(
            "Semantic segmentation results on %s (%s protocol):\n%s\nPer-class IoU:\n%s",
            self._dataset_name,
            self.protocol,
            create_small_table({key: round(value, 2) for key, value in summary.items()}),
            _per_class_table(per_class),
        )
        if self._results_dir:
            path = os.path.join(self._results_dir, f"sem_seg_results_{self._dataset_name}.json")
            atomic_write_json(
                path,
                {
                    "dataset": self._dataset_name,
                    "protocol": self.protocol,
                    **({"run": self._run_info} if self._run_info else {}),
                    **extra,
                    **summary,
                    "per_class_IoU": per_class,
                },
            )
            logger.info("Wrote %s", path)


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


class PaperSemSegEvaluator(_CheckedSemSegEvaluator):
    """The `paper` protocol.

    Input dicts carry ``file_name``, and ``sem_seg_file_name`` (otherwise it is looked up in
    the DatasetCatalog by ``file_name``, as Detectron2's test-time mapper drops it) and
    optionally ``image_id`` (default: the file stem). Each output's ``sem_seg`` is a (K, S, S)
    score tensor in the frame of the image resized (shorter side S) and center-cropped to
    S x S, S = ``crop_size``; K = ``len(stuff_classes)``.

    Metadata read: ``stuff_classes``, ``ignore_label`` and ``paper_void_as_background``
    (default False): when True, ground-truth ``ignore_label`` pixels count as background, the
    last class (VOC21, PC60, COCO-Object in the paper).
    """

    protocol = "paper"

    def __init__(self, dataset_name: str, *, crop_size: int, **kwargs):
        self._crop_size = int(crop_size)
        meta = MetadataCatalog.get(dataset_name)
        self._void_as_background = bool(meta.get("paper_void_as_background", False))
        super().__init__(dataset_name, **kwargs)

    def _load_ground_truth(self, path: str, dtype=np.int64) -> np.ndarray:
        """The (S, S) ground truth of one image, checked, cropped like the image, void
        relabelled as background where the dataset says so."""
        image = open_label_map(path, self._dataset_name)
        checked_labels(image, path, self._num_classes, self._ignore_label)
        gt = np.asarray(resize_and_center_crop(image, self._crop_size, Image.NEAREST), np.int64)
        if self._void_as_background:
            gt[gt == self._ignore_label] = self._num_classes - 1
        return gt.astype(dtype, copy=False)

    def _check_prediction(self, file_name, labels_shape, gt_path, gt_size):
        size = self._crop_size
        if labels_shape != (size, size):
            raise InputError(
                f"{file_name}: the prediction is {labels_shape[0]}x{labels_shape[1]} but the "
                f"paper evaluator of '{self._dataset_name}' expects crop_size {size}x{size}; the "
                "model's protocol/input size does not match the evaluator's crop_size"
            )

    def _protocol_results(self, library_results, num_images):
        """The paper's metric from Detectron2's confusion matrix, summed over the processes (its
        [:K, :K] block, with prediction rows, is the paper's (ground truth, prediction) matrix
        transposed)."""
        scores = paper_metric(self._conf_matrix[:-1, :-1].T)
        summary = OrderedDict((key, scores[key]) for key in SUMMARY_KEYS)
        results = OrderedDict(summary)
        for name, iou in zip(self._class_names, scores["per_class_IoU"]):
            results[f"IoU-{name}"] = float(iou)
        self._write_results(
            summary,
            scores["per_class_IoU"],
            crop_size=self._crop_size,
            num_images=num_images,
            void_as_background=self._void_as_background,
        )
        return OrderedDict({"sem_seg": results})


class StandardSemSegEvaluator(_CheckedSemSegEvaluator):
    """The `standard` protocol: Detectron2's ``SemSegEvaluator`` (predictions at the original
    resolution, ``ignore_label`` ignored, its metric and result keys: mIoU, fwIoU, mACC, pACC,
    IoU-<class>, ACC-<class>, and on detectron2 versions that compute it BoundaryIoU-<class> and
    min(IoU, B-Iou)-<class>), plus prediction PNGs, a results JSON and a log table; it does not
    build the COCO-format RLE ``sem_seg_predictions.json``.
    """

    protocol = "standard"

    def _load_ground_truth(self, path: str, dtype=np.int64) -> np.ndarray:
        """(H, W) label ids of one ground truth, checked: one channel, ids are classes or
        ``ignore_label``."""
        image = open_label_map(path, self._dataset_name)
        gt = checked_labels(image, path, self._num_classes, self._ignore_label)
        return gt.astype(dtype, copy=False)

    def _check_prediction(self, file_name, labels_shape, gt_path, gt_size):
        if gt_size != labels_shape:
            raise InputError(
                f"ground truth '{gt_path}' is {gt_size[0]}x{gt_size[1]} but the prediction for "
                f"'{file_name}' is {labels_shape[0]}x{labels_shape[1]}; the standard protocol "
                "evaluates at the original resolution"
            )

    def _protocol_results(self, library_results, num_images):
        """Detectron2's metric, as it computed it."""
        res = library_results["sem_seg"]
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
        self._write_results(summary, per_class_iou, num_images=num_images, **extra)
        return library_results
