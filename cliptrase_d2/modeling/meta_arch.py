"""The ``CLIPtrase`` meta-architecture: wires the pure method (cliptrase_d2.method) to
Detectron2."""

import dataclasses
import logging
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.logger import log_first_n
from PIL import Image
from torch import nn

from ..method.dense_clip import patch_size
from ..method.heads import get_head, resolve_logit_scale
from ..method.pamr import pamr
from ..method.peer_heads import PEARL_KEY_KEY_WEIGHT
from ..method.propagation import TLP_GRID, text_aware_propagation
from ..method.pipeline import Prediction, RefinementSettings, dbscan_for_grid, predict
from ..method.refinement import channel_argmax, resize_maps, resized_argmax
from ..method.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    keep_ratio_size,
    paper_crop,
    resize_linear_uint8,
    shorter_side_size,
    to_clip_tensor,
)
from ..method.sliding import PADDINGS, sliding_windows, window_boxes
from ..method.text import text_embeddings
from ..method.thresholds import check_threshold, label_order, merge_names, threshold_scores
from ..vocabulary import (
    Vocabulary,
    peer_vocabulary_keys,
    resolve_vocabulary,
    template_set,
    vocabulary_of_dataset,
)
from ..errors import ConfigError, InputError

__all__ = ["CLIPtrase", "PROTOCOLS", "dbscan_for_grid"]

logger = logging.getLogger(__name__)


def predict_within_memory(
    predict_batch: Callable[[torch.Tensor], Prediction], images: torch.Tensor, what: str = "image"
) -> Prediction:
    """``predict_batch(images)``; when the device runs out of memory, it is tried again (on CUDA
    after freeing the allocator's cached blocks), then the batch is split in halves, and halves
    of those as needed (each image's prediction does not depend on the others), with one
    warning for the batch naming the parts it ran as. One image that still does not fit raises
    an OutOfMemoryError that says what to change. Unlike Detectron2's ``retry_if_cuda_oom``, it
    never moves the inputs to the CPU: the model stays on the GPU, so that would only change the
    error into a device mismatch.
    """
    parts: List[int] = []
    prediction = _predict_in_parts(predict_batch, images, what, parts)
    if len(parts) > 1:
        logger.warning(
            "out of memory on a batch of %d %ss: ran it as %s",
            len(images),
            what,
            " + ".join(str(part) for part in parts),
        )
    return prediction


def _predict_in_parts(
    predict_batch: Callable[[torch.Tensor], Prediction],
    images: torch.Tensor,
    what: str,
    parts: List[int],
) -> Prediction:
    """``predict_within_memory`` without its warning; appends the size of each part that ran
    to ``parts``."""
    for _ in range(2 if images.is_cuda else 1):
        try:
            prediction = predict_batch(images)
            parts.append(len(images))
            return prediction
        except torch.cuda.OutOfMemoryError:
            pass  # freed below, outside the except block, which holds the failed frames' tensors
        if images.is_cuda:
            torch.cuda.empty_cache()
    if len(images) == 1:
        raise torch.cuda.OutOfMemoryError(
            f"{images.device.type.upper()} ran out of memory on one "
            f"{images.shape[-2]}x{images.shape[-1]} {what}"
            f"{' even with the cache emptied' if images.is_cuda else ''}. Use a smaller input "
            "(MODEL.CLIPTRASE.PAPER_SIZE, STANDARD_SHORT_SIDE), MODEL.CLIPTRASE.PRECISION fp16 on "
            "a GPU, "
            "or a device with more free memory"
        )
    half = (len(images) + 1) // 2
    first = _predict_in_parts(predict_batch, images[:half], what, parts)
    second = _predict_in_parts(predict_batch, images[half:], what, parts)
    return Prediction(
        torch.cat([first.labels, second.labels]), torch.cat([first.scores, second.scores])
    )


# RefinementSettings' fields -> their config keys (the method layer names no config keys)
_REFINEMENT_KEYS = {
    "refine": "REFINE",
    "dbscan_eps": "DBSCAN_EPS",
    "dbscan_min_samples": "DBSCAN_MIN_SAMPLES",
    "region_upsample": "REGION_UPSAMPLE",
    "median_size": "MEDIAN_SIZE",
    "tlp_grid": "TLP_GRID",
}
# Head options (Head.options) -> their config keys and defaults
_HEAD_OPTION_KEYS = {
    "key_key_weight": ("PEARL_KK_WEIGHT", PEARL_KEY_KEY_WEIGHT),
    "vfm": ("PROXYCLIP.VFM", None),
}


def _refinement_settings(c, auto_eps: float, auto_min_samples: int) -> RefinementSettings:
    """MODEL.CLIPTRASE's refinement keys as RefinementSettings (0 = automatic DBSCAN settings;
    'pamr' runs no region refinement inside the windows); bad values named by their keys."""
    try:
        return RefinementSettings(
            refine="none" if c.REFINE == "pamr" else c.REFINE,
            dbscan_eps=c.DBSCAN_EPS if c.DBSCAN_EPS != 0 else auto_eps,
            dbscan_min_samples=c.DBSCAN_MIN_SAMPLES
            if c.DBSCAN_MIN_SAMPLES != 0
            else auto_min_samples,
            region_upsample=c.REGION_UPSAMPLE,
            median_size=c.MEDIAN_SIZE,
            image_logit_weighting=c.IMAGE_LOGIT_WEIGHTING,
            tlp_grid=c.TLP_GRID,
        )
    except ValueError as error:
        message = str(error)
        for field in sorted(_REFINEMENT_KEYS, key=len, reverse=True):
            message = re.sub(rf"\b{field}\b", f"MODEL.CLIPTRASE.{_REFINEMENT_KEYS[field]}", message)
        raise ConfigError(message.replace(", tlp", ", tlp, pamr")) from None


def _report_unused_settings(
    head: str, refinement: RefinementSettings, unused_options: Sequence[str] = ()
) -> None:
    """Says once per (head, refinement) which settings have no effect, instead of ignoring them
    silently. ``unused_options``: head options set but not taken by the head."""
    for option in unused_options:
        log_first_n(
            logging.WARNING,
            f"head {head!r}: MODEL.CLIPTRASE.{_HEAD_OPTION_KEYS[option][0]} does not apply "
            "(the head has no such setting)",
            name=__name__,
            key="message",
        )
    if refinement.refine != "tlp" and refinement.tlp_grid != TLP_GRID:
        log_first_n(
            logging.WARNING,
            f"MODEL.CLIPTRASE.REFINE {refinement.refine!r}: TLP_GRID does not apply (no TLP runs)",
            name=__name__,
            key="message",
        )
    if refinement.refine in ("none", "tlp"):
        log_first_n(
            logging.WARNING,
            f"head {head!r} with MODEL.CLIPTRASE.REFINE {refinement.refine!r}: "
            "DBSCAN_EPS, DBSCAN_MIN_SAMPLES, MEDIAN_SIZE and REGION_UPSAMPLE do not apply (no "
            "clustering or region refinement runs)",
            name=__name__,
            key="message",
        )


PROTOCOLS = ("paper", "standard")


def _published_setting(cfg) -> str:
    """MODEL.CLIPTRASE.PUBLISHED checked: a benchmark the configured peer head reported."""
    published, head = cfg.MODEL.CLIPTRASE.PUBLISHED, cfg.MODEL.CLIPTRASE.HEAD
    if not published:
        return ""
    reported = [key for key in peer_vocabulary_keys() if key.startswith(f"{head}/")]
    if published not in reported:
        raise ConfigError(
            f"MODEL.CLIPTRASE.PUBLISHED {published!r}: head {head!r} has no published "
            f"setting for that benchmark; its published settings are "
            f"{', '.join(reported) or 'none'} "
            "(configs/<head>/published/<benchmark>.yaml)"
        )
    return published


@META_ARCH_REGISTRY.register()
class CLIPtrase(nn.Module):
    """Training-free open-vocabulary semantic segmentation with a recalibrated CLIP.

    Inference only. ``forward`` takes a list of dicts, one per image, with
      - ``image``: (3, H, W) uint8 tensor in ``input_format`` channel order;
      - ``height``, ``width`` (optional): the size the prediction is wanted at (standard
        protocol; default the image's own size);
      - the vocabulary to segment with, the first found of: ``vocabulary`` (a Vocabulary, a
        benchmark key, comma-separated names, a file or a list of names); the model's
        ``vocabulary`` (MODEL.CLIPTRASE.VOCABULARY, an explicit override); the ``vocabulary``
        (or ``stuff_classes``) in the metadata of ``dataset_name`` (set on every record of
        this package's datasets); the metadata of ``default_dataset`` (DATASETS.TEST when it
        names one dataset). A batch may mix vocabularies;
    and returns one dict per image with
      - ``sem_seg``: (K, H', W') float scores over the K output classes of the image's
        vocabulary (``Vocabulary.class_names``: background last when it has background words).
        Under the ``paper`` protocol H' = W' = ``paper_size`` (the center crop the paper
        evaluates); under the ``standard`` protocol (H', W') = (height, width).

    Text embeddings are kept per vocabulary (the last ``cached_vocabularies`` used), so a
    vocabulary is encoded once however many batches use it.
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        tokenizer,
        templates: Sequence[str],
        vocabulary=None,
        default_dataset: Optional[str] = None,
        head: str = "cliptrase",
        logit_scale: float = 0.0,
        refinement: RefinementSettings = RefinementSettings(),
        protocol: str = "paper",
        paper_size: int = 224,
        standard_short_side: int = 336,
        window_size: int = 224,
        window_stride: int = 112,
        window_batch: int = 8,
        input_format: str = "RGB",
        paper_vocabulary_quirks: bool = False,
        text_cache=None,
        cached_vocabularies: int = 8,
        standard_long_side: int = 2048,
        window_padding: str = "end",
        prob_thd: float = 0.0,
        area_thd: float = 0.0,
        pamr_steps: int = 0,
        pamr_dilations: Sequence[int] = (8, 16),
        pearl_kk_weight: float = PEARL_KEY_KEY_WEIGHT,
        max_pixels: int = 50_000_000,
        max_windows: int = 1024,
        vfm: Optional[nn.Module] = None,
        window_multiple: int = 0,
    ):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"unknown protocol {protocol!r} (MODEL.CLIPTRASE.PROTOCOL); choose one of "
                f"{PROTOCOLS}"
            )
        if input_format not in ("RGB", "BGR"):
            raise ConfigError(f"INPUT.FORMAT must be RGB or BGR, got {input_format!r}")
        patch = max(patch_size(clip_model.visual))
        for key, value, least in (
            ("PAPER_SIZE", paper_size, patch),
            ("STANDARD_SHORT_SIDE", standard_short_side, patch),
            ("WINDOW_SIZE", window_size or patch, patch),  # 0: whole image
            ("WINDOW_STRIDE", window_stride, 1),
            ("WINDOW_BATCH", window_batch, 1),
            ("MAX_PIXELS", max_pixels, 0),
            ("MAX_WINDOWS", max_windows, 0),
        ):
            if value < least:
                raise ConfigError(
                    f"MODEL.CLIPTRASE.{key} must be at least {least}"
                    f"{' (one CLIP patch)' if least == patch > 1 else ''}, got {value}"
                )
        self._check_standard_settings(
            protocol,
            standard_long_side,
            window_padding,
            prob_thd,
            area_thd,
            pamr_steps,
            pamr_dilations,
            refinement,
        )
        self.standard_long_side, self.window_padding = standard_long_side, window_padding
        self.prob_thd, self.area_thd = prob_thd, area_thd
        self.pamr_steps, self.pamr_dilations = pamr_steps, tuple(pamr_dilations)
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        try:
            self.head = get_head(head)
        except ValueError as error:
            raise ConfigError(f"MODEL.CLIPTRASE.HEAD: {error}") from None
        if pearl_kk_weight < 0:
            raise ConfigError(
                f"MODEL.CLIPTRASE.PEARL_KK_WEIGHT must be >= 0, got {pearl_kk_weight}"
            )
        if head == "proxyclip" and refinement.refine in ("vote", "mean"):
            raise ConfigError(
                f"head 'proxyclip' has no CLIP-grid self-correlation for REFINE "
                f"{refinement.refine!r}: set MODEL.CLIPTRASE.REFINE none or pamr"
            )
        self.vfm, self.window_multiple = vfm, window_multiple  # a submodule: .to() moves it
        options = {"key_key_weight": pearl_kk_weight, "vfm": vfm}
        self.head = self.head.configured(
            **{key: value for key, value in options.items() if key in self.head.options}
        )
        unused = [
            key
            for key, value in options.items()
            if key not in self.head.options and value != _HEAD_OPTION_KEYS[key][1]
        ]
        self.logit_scale = resolve_logit_scale(self.head, clip_model, logit_scale)
        _report_unused_settings(head, refinement, unused)
        # Standard protocol: TLP runs once on the window-averaged logits resized to the output
        # size (PEARL's order), the windows without refinement.
        standard_tlp = protocol == "standard" and refinement.refine == "tlp"
        self.tlp_grid = refinement.tlp_grid if standard_tlp else 0
        if standard_tlp:
            refinement = dataclasses.replace(refinement, refine="none")
        self.refinement = refinement
        self.protocol = protocol
        self.paper_size = paper_size
        self.standard_short_side = standard_short_side
        self.window_size, self.window_stride, self.window_batch = (
            window_size,
            window_stride,
            window_batch,
        )
        self.input_format = input_format
        self.max_pixels, self.max_windows = max_pixels, max_windows  # 0: no limit
        self.text_cache = text_cache
        self.paper_vocabulary_quirks = paper_vocabulary_quirks
        # an explicit vocabulary (MODEL.CLIPTRASE.VOCABULARY): any form resolve_vocabulary takes
        self.vocabulary = None if vocabulary is None else self.resolve_vocabulary(vocabulary)
        self.default_dataset = default_dataset
        self.cached_vocabularies = max(1, cached_vocabularies)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)
        self._text_embeddings: "OrderedDict[Tuple, torch.Tensor]" = OrderedDict()
        self._checked_datasets: Dict[str, None] = {}
        self._dataset_vocabularies: Dict[str, Vocabulary] = {}

    @classmethod
    def from_config(cls, cfg):
        from ..clip_loading import build_clip, get_tokenizer
        from ..text_cache import TextEmbeddingCache
        from .vfm import build_vfm

        c = cfg.MODEL.CLIPTRASE
        _published_setting(cfg)
        clip_model = build_clip(c.CLIP_MODEL, cfg.MODEL.WEIGHTS or "openai", precision=c.PRECISION)
        patch = patch_size(clip_model.visual)[0]
        input_side = c.PAPER_SIZE if c.PROTOCOL == "paper" else c.WINDOW_SIZE
        auto_eps, auto_min_samples = dbscan_for_grid(input_side // patch)
        return {
            "clip_model": clip_model,
            "tokenizer": get_tokenizer(c.CLIP_MODEL),
            "vocabulary": (
                resolve_vocabulary(
                    c.VOCABULARY, tuple(c.BACKGROUND_WORDS), c.PAPER_VOCABULARY_QUIRKS
                )
                if c.VOCABULARY
                else None
            ),
            "default_dataset": cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) == 1 else None,
            "templates": template_set(c.TEMPLATES),
            "head": c.HEAD,
            "logit_scale": c.LOGIT_SCALE,
            "refinement": _refinement_settings(c, auto_eps, auto_min_samples),
            "protocol": c.PROTOCOL,
            "paper_size": c.PAPER_SIZE,
            "standard_short_side": c.STANDARD_SHORT_SIDE,
            "window_size": c.WINDOW_SIZE,
            "window_stride": c.WINDOW_STRIDE,
            "window_batch": c.WINDOW_BATCH,
            "input_format": cfg.INPUT.FORMAT,
            "paper_vocabulary_quirks": c.PAPER_VOCABULARY_QUIRKS,
            "text_cache": TextEmbeddingCache.from_setting(
                c.TEXT_CACHE_DIR, c.CLIP_MODEL, cfg.MODEL.WEIGHTS or "openai", c.PRECISION
            ),
            "standard_long_side": c.STANDARD_LONG_SIDE,
            "window_padding": c.WINDOW_PADDING,
            "prob_thd": c.PROB_THD,
            "area_thd": c.AREA_THD,
            "pamr_steps": c.PAMR_STEPS if c.REFINE == "pamr" else 0,
            "pamr_dilations": tuple(c.PAMR_DILATIONS),
            "pearl_kk_weight": c.PEARL_KK_WEIGHT,
            "max_pixels": c.MAX_PIXELS,
            "max_windows": c.MAX_WINDOWS,
            "vfm": build_vfm(
                c.PROXYCLIP.VFM, c.PROXYCLIP.VFM_WEIGHTS, clip_model.visual.conv1.weight.dtype
            )
            if c.HEAD == "proxyclip"
            else None,
            "window_multiple": c.WINDOW_MULTIPLE,
        }

    @staticmethod
    def _check_standard_settings(
        protocol, long_side, padding, prob_thd, area_thd, pamr_steps, pamr_dilations, refinement
    ) -> None:
        """Rejects standard-protocol settings out of range or that the protocol cannot honour."""
        check_threshold(prob_thd, "MODEL.CLIPTRASE.PROB_THD")
        check_threshold(area_thd, "MODEL.CLIPTRASE.AREA_THD")
        if padding not in PADDINGS:
            raise ConfigError(
                f"MODEL.CLIPTRASE.WINDOW_PADDING {padding!r}: choose one of {', '.join(PADDINGS)}"
            )
        if long_side < 1:
            raise ConfigError(
                f"MODEL.CLIPTRASE.STANDARD_LONG_SIDE must be at least 1, got {long_side}"
            )
        if pamr_steps < 0 or not pamr_dilations or min(pamr_dilations) < 1:
            raise ConfigError(
                f"MODEL.CLIPTRASE.PAMR_STEPS must be >= 0 and PAMR_DILATIONS >= 1, "
                f"got {pamr_steps} and {list(pamr_dilations)}"
            )
        uses_peer_steps = prob_thd > 0 or area_thd > 0 or pamr_steps > 0
        if protocol == "paper" and uses_peer_steps:
            raise ConfigError(
                "MODEL.CLIPTRASE.PROB_THD, AREA_THD and REFINE 'pamr' apply to the "
                "standard protocol only: set MODEL.CLIPTRASE.PROTOCOL standard or "
                "turn them off"
            )
        if refinement.refine == "vote" and uses_peer_steps:
            raise ConfigError(
                "MODEL.CLIPTRASE.PROB_THD / AREA_THD need soft scores: use REFINE "
                "'mean', 'none' or 'pamr' instead of 'vote'"
            )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- vocabulary ------------------------------------------------------------------------
    def resolve_vocabulary(self, spec, background: Sequence[str] = ()) -> Vocabulary:
        """A Vocabulary from a benchmark key (with the paper's quirks when the model was configured
        so), comma-separated names, a file, a list or a Vocabulary; ``background`` adds
        background words (to the vocabulary's own)."""
        return resolve_vocabulary(spec, tuple(background), self.paper_vocabulary_quirks)

    def vocabulary_for(self, record: Dict) -> Vocabulary:
        """The vocabulary one input is segmented with (see the class docstring for the order)."""
        if record.get("vocabulary") is not None:
            return self.resolve_vocabulary(record["vocabulary"])
        dataset = record.get("dataset_name") or self.default_dataset
        if self.vocabulary is not None:
            if dataset is not None:
                self._check_dataset_classes(dataset)
            return self.vocabulary
        if dataset is None:
            raise InputError(
                "no vocabulary for this input: give it a 'vocabulary' (the API's segment(image, "
                "vocabulary)), set MODEL.CLIPTRASE.VOCABULARY, or evaluate a registered dataset "
                "(DATASETS.TEST)"
            )
        if dataset not in self._dataset_vocabularies:
            self._dataset_vocabularies[dataset] = vocabulary_of_dataset(
                dataset, self.paper_vocabulary_quirks
            )
        return self._dataset_vocabularies[dataset]

    def _check_dataset_classes(self, dataset: str) -> None:
        """MODEL.CLIPTRASE.VOCABULARY must give a dataset's own number of classes (once per
        dataset)."""
        if dataset in self._checked_datasets:
            return
        expected = len(MetadataCatalog.get(dataset).get("stuff_classes", None) or [])
        if expected and expected != self.vocabulary.num_classes:
            raise ConfigError(
                f"MODEL.CLIPTRASE.VOCABULARY has {self.vocabulary.num_classes} output classes but "
                f"dataset {dataset!r} has {expected}: leave VOCABULARY empty to use the "
                "dataset's own, or give one with the same classes"
            )
        self._checked_datasets[dataset] = None

    def text_embeddings(self, vocabulary: Vocabulary) -> torch.Tensor:
        """(C + B, E) unit-norm text embeddings of a vocabulary's classes then background words,
        kept for the last ``cached_vocabularies`` vocabularies (and on disk by ``text_cache``)."""
        key = (vocabulary.text_rows, str(self.device))
        if key in self._text_embeddings:
            self._text_embeddings.move_to_end(key)
            return self._text_embeddings[key]
        names = vocabulary.text_rows

        def compute():
            return text_embeddings(self.clip_model, self.tokenizer, names, self.templates)

        if self.text_cache is not None:
            width = getattr(self.clip_model.visual, "output_dim", None)  # the embedding width
            embeddings = self.text_cache.get_or_compute(names, self.templates, compute, width)
        else:
            embeddings = compute()
        self._text_embeddings[key] = embeddings.to(self.device, torch.float32)
        while len(self._text_embeddings) > self.cached_vocabularies:
            self._text_embeddings.popitem(last=False)
        return self._text_embeddings[key]

    # ---- inference -------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            raise RuntimeError(
                "CLIPtrase is training-free: it has nothing to train. "
                "Run evaluation (tools/train_net.py --eval-only) or the demo instead."
            )
        images = [self._rgb_uint8(x["image"]) for x in batched_inputs]
        for record, image in zip(batched_inputs, images):
            self.check_image_size(image.shape[-2:], record.get("file_name", "an input image"))
        sizes = [
            (x.get("height", im.shape[1]), x.get("width", im.shape[2]))
            for x, im in zip(batched_inputs, images)
        ]
        groups: Dict[
            Vocabulary, List[int]
        ] = {}  # images segmented with the same vocabulary run together
        for index, record in enumerate(batched_inputs):
            groups.setdefault(self.vocabulary_for(record), []).append(index)
        outputs: List[Dict] = [{} for _ in batched_inputs]
        for vocabulary, indices in groups.items():
            group = [images[i] for i in indices]
            if self.protocol == "paper":
                # sem_seg: scores whose argmax is the prediction (one-hot of the voted labels under
                # "vote")
                results = [p.scores for p in self.inference(group, vocabulary, soft_scores=False)]
            else:  # the windows of the group's images go through the backbone together
                results = self._standard_predictions(group, [sizes[i] for i in indices], vocabulary)
            for index, scores in zip(indices, results):
                outputs[index]["sem_seg"] = scores
        return outputs

    def inference(
        self,
        images: List[torch.Tensor],
        vocabulary: Vocabulary,
        sizes: Optional[List[Tuple[int, int]]] = None,
        soft_scores: bool = True,
        scores: bool = True,
    ) -> List[Prediction]:
        """Per image: labels (H', W') and soft scores (K, H', W') in the protocol's frame, over
        ``vocabulary.class_names``.

        images: (3, H, W) uint8 RGB tensors. Paper protocol: the S x S center crop (``sizes``
        unused). Standard: (H', W') = ``sizes[i]`` (default: the image's own size).
        ``soft_scores=False``: under ``vote`` the paper protocol's scores are the one-hot of the
        labels (cheaper; ``pipeline.predict``). ``scores=False``: the same labels, and the
        scores are None; the standard protocol then never holds the full-resolution
        (K, H', W') scores (``refinement.resized_argmax``), which for a 12-megapixel photo and
        150 classes would be 7 GB.
        """
        if self.protocol == "paper":
            self._check_single_names(vocabulary, "the paper protocol")
            soft_scores = soft_scores and scores
            crops = [to_clip_tensor(Image.fromarray(self.evaluated_frame(im))) for im in images]
            self._check_same_size(crops)
            prediction = predict_within_memory(
                lambda x: self._predict(x, vocabulary, soft_scores),
                torch.stack(crops).to(self.device),
            )
            return [
                Prediction(labels, image_scores if scores else None)
                for labels, image_scores in zip(*prediction)
            ]
        sizes = sizes or [tuple(im.shape[-2:]) for im in images]
        if not scores and self._labels_from_rows:
            return self._standard_predictions(images, sizes, vocabulary, labels_only=True)

        def predicted(image_scores: torch.Tensor) -> Prediction:
            return Prediction(channel_argmax(image_scores), image_scores if scores else None)

        return self._standard_predictions(images, sizes, vocabulary, predicted)

    @staticmethod
    def _check_same_size(crops: List[torch.Tensor]) -> None:
        """The paper protocol predicts a batch's crops as one tensor: they must share a size."""
        sizes = sorted({tuple(crop.shape[-2:]) for crop in crops})
        if len(sizes) > 1:
            raise InputError(
                "the paper protocol predicts a batch's center crops as one tensor, but this "
                f"batch's crops differ in size ({', '.join(f'{h}x{w}' for h, w in sizes)}): "
                "evaluated_frame must give every image the PAPER_SIZE x PAPER_SIZE crop (a "
                "custom mapper or evaluated_frame changed it); restore it, or evaluate with "
                "TEST.IMS_PER_BATCH 1"
            )

    def check_image_size(self, size: Tuple[int, int], name: str) -> None:
        """Rejects images smaller than one CLIP patch (resizing them up would invent the
        content)."""
        patch = patch_size(self.clip_model.visual)
        if size[0] < patch[0] or size[1] < patch[1]:
            raise InputError(
                f"{name}: an image of {size[0]}x{size[1]} pixels is smaller than one "
                f"{patch[0]}x{patch[1]} CLIP patch; use an image of at least that size"
            )
        self._check_work(size, name)

    def _check_work(self, size: Tuple[int, int], name: str) -> None:
        """Refuses, before any work, an image whose resized frame or output exceeds MAX_PIXELS
        or whose sliding windows exceed MAX_WINDOWS (an extreme aspect ratio, a huge image)."""
        if self.protocol == "paper":
            frames = {"resized": shorter_side_size(*size, self.paper_size)}
        else:
            frame = keep_ratio_size(*size, self.standard_short_side, self.standard_long_side)
            frames = {"resized": frame, "output": tuple(size)}
        for what, (height, width) in frames.items():
            if self.max_pixels and height * width > self.max_pixels:
                raise InputError(
                    f"{name}: the {self.protocol} protocol's {what} frame of this "
                    f"{size[0]}x{size[1]} image is {height}x{width} = {height * width} pixels, "
                    f"over MODEL.CLIPTRASE.MAX_PIXELS={self.max_pixels}; crop or downscale "
                    "the image, or raise MAX_PIXELS if the memory allows"
                )
        if self.protocol != "paper" and self.max_windows:
            count = len(window_boxes(*frames["resized"], self.window_size, self.window_stride))
            if count > self.max_windows:
                raise InputError(
                    f"{name}: the standard protocol would run {count} sliding windows over "
                    f"this {size[0]}x{size[1]} image, over MODEL.CLIPTRASE.MAX_WINDOWS="
                    f"{self.max_windows}; raise WINDOW_STRIDE or WINDOW_SIZE, lower "
                    "STANDARD_SHORT_SIDE/STANDARD_LONG_SIDE, or raise MAX_WINDOWS"
                )

    def evaluated_frame(self, image) -> np.ndarray:
        """The (H', W', 3) uint8 RGB pixels a prediction refers to: the paper protocol's center
        crop (bicubic), or the image itself under the standard protocol. image: (3, H, W) RGB
        uint8 tensor or (H, W, 3) array."""
        if isinstance(image, torch.Tensor):
            image = image.cpu().permute(1, 2, 0).contiguous().numpy()  # PIL copies rows faster
        if self.protocol != "paper":
            return np.ascontiguousarray(image)
        return paper_crop(image, self.paper_size)  # the test mapper's crop is its own crop

    def _predict(
        self,
        images: torch.Tensor,
        vocabulary: Vocabulary,
        soft_scores: bool = True,
        num_classes: Optional[int] = None,
    ) -> Prediction:
        """``num_classes``: rows below it are classes, the rest background words merged into one
        (default: the vocabulary's C); the number of text rows keeps every row's scores."""
        num_classes = len(vocabulary.classes) if num_classes is None else num_classes
        text = self.text_embeddings(vocabulary)
        try:
            return predict(
                self.clip_model.visual,
                self.head,
                text,
                num_classes,
                images,
                self.refinement,
                self.logit_scale,
                soft_scores=soft_scores,
            )
        except ValueError as error:
            # the method's checks of its input (a grid too small for a head)
            raise InputError(str(error)) from error

    def _window_scores(self, windows: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """(N, 3, h, w) -> (N, R, h, w) scores of every text row (names and background words,
        merged after averaging and resizing); under "vote" (N, C', h, w), each window voting
        with the one-hot of its merged labels."""
        if self.refinement.refine == "vote":
            self._check_single_names(vocabulary, "REFINE 'vote' under the standard protocol")
            return predict_within_memory(
                lambda x: self._predict(x, vocabulary, soft_scores=False), windows, "window"
            ).scores
        rows = len(vocabulary.text_rows)

        def predict_rows(x):
            return self._predict(x, vocabulary, soft_scores=False, num_classes=rows)

        return predict_within_memory(predict_rows, windows, "window").scores

    @staticmethod
    def _check_single_names(vocabulary: Vocabulary, where: str) -> None:
        if vocabulary.has_multiple_names:
            raise ConfigError(
                "classes with several names are supported under the standard "
                f"protocol with REFINE 'mean', 'none' or 'pamr', not under {where}: "
                "give one name per class"
            )

    @property
    def _labels_from_rows(self) -> bool:
        """Whether the labels are the resized window scores' argmax (no PAMR, no thresholds)."""
        no_refinement = self.pamr_steps == 0 and self.tlp_grid == 0
        return no_refinement and self.prob_thd == 0 and self.area_thd == 0

    def _rgb_uint8(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"'image' must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
        return image.flip(0) if self.input_format == "BGR" else image

    def _standard_predictions(
        self,
        images: List[torch.Tensor],
        sizes: List[Tuple[int, int]],
        vocabulary: Vocabulary,
        finish: Optional[Callable[[torch.Tensor], object]] = None,
        labels_only: bool = False,
    ) -> List:
        """Standard protocol over a batch: the windows of all ``images`` go through the backbone
        together (WINDOW_BATCH at a time, across images; ``sliding.sliding_windows``), each
        image's window average then finished alone as soon as it is complete: its
        ``_sliding_window_scores`` (K, *sizes[i]), passed through ``finish`` when given, or with
        ``labels_only`` the Prediction of its ``_resized_labels`` (no scores). Results in image
        order. images: (3, H, W) uint8 RGB each."""
        frames = [self._standard_frame(image) for image in images]

        def finished(index: int, average: torch.Tensor):
            if labels_only:
                return Prediction(self._resized_labels(average, sizes[index], vocabulary), None)
            scores = self._sliding_window_scores(frames[index], average, sizes[index], vocabulary)
            return scores if finish is None else finish(scores)

        return self._window_averages(frames, vocabulary, finished)

    def _sliding_window_scores(
        self,
        frame: torch.Tensor,
        average: torch.Tensor,
        size: Tuple[int, int],
        vocabulary: Vocabulary,
    ) -> torch.Tensor:
        """Standard protocol (the peers' order): the window scores of every name, averaged
        (``average``, over ``frame``, the image's ``_standard_frame``), resized to ``size``,
        refined by PAMR or TLP (REFINE 'pamr', 'tlp'), then the maximum over each class's names,
        or the peers' thresholds on the class probabilities when PROB_THD / AREA_THD > 0.
        frame: (3, h, w), average: (R, h, w) -> (K, *size)."""
        rows = resize_maps(average, size)  # (R, *size)
        if self.refinement.refine == "vote":
            return rows  # already the output classes
        if self.pamr_steps > 0 or self.tlp_grid:
            guide = F.interpolate(
                frame[None], size=tuple(size), mode="bilinear", align_corners=False
            )
        if self.pamr_steps > 0:
            rows = pamr(guide, rows[None], self.pamr_steps, self.pamr_dilations)[0]
        if self.tlp_grid:  # TLP propagates cosine maps
            cosine = rows[None] / self.logit_scale
            text = self.text_embeddings(vocabulary)
            rows = self.logit_scale * text_aware_propagation(cosine, guide, text, self.tlp_grid)[0]
        num_classes, row_classes = len(vocabulary.classes), vocabulary.row_classes
        if self.prob_thd > 0 or self.area_thd > 0:
            return threshold_scores(rows, row_classes, num_classes, self.prob_thd, self.area_thd)
        return merge_names(rows, row_classes, num_classes)

    def _resized_labels(
        self, rows: torch.Tensor, size: Tuple[int, int], vocabulary: Vocabulary
    ) -> torch.Tensor:
        """``_sliding_window_scores(...).argmax(0)`` without the (K, *size) scores
        (``resized_argmax``): the rows taken background first, so that ties go where
        ``merge_names`` sends them."""
        if self.refinement.refine == "vote":
            return resized_argmax(rows, size)
        row_classes = vocabulary.row_classes
        if row_classes[-1] < len(vocabulary.classes):  # no background words: class order
            return torch.as_tensor(row_classes, device=rows.device)[resized_argmax(rows, size)]
        order = label_order(row_classes, len(vocabulary.classes))
        labels = resized_argmax(rows[order.to(rows.device)], size)
        return torch.as_tensor(row_classes, device=rows.device)[order.to(rows.device)][labels]

    def _standard_frame(self, image: torch.Tensor) -> torch.Tensor:
        """The image the standard protocol's windows see: mmseg's keep-ratio resize to
        (STANDARD_LONG_SIDE, STANDARD_SHORT_SIDE) with OpenCV bilinear on the uint8 pixels, then
        CLIP's normalization. image: (3, H, W) uint8 RGB -> (3, h, w) float32 on the model's
        device."""
        size = keep_ratio_size(*image.shape[-2:], self.standard_short_side, self.standard_long_side)
        pixels = resize_linear_uint8(image.permute(1, 2, 0).cpu().numpy(), size)  # (h, w, 3)
        frame = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        frame = frame.permute(2, 0, 1).float() / 255.0
        return (frame - self.pixel_mean) / self.pixel_std

    def _window_averages(
        self,
        frames: List[torch.Tensor],
        vocabulary: Vocabulary,
        finish: Optional[Callable[[int, torch.Tensor], object]] = None,
    ) -> List:
        """Standard protocol: the sliding-window average over each of ``frames`` (the images'
        ``_standard_frame``s, (3, h, w) each) -> (R, h, w) scores of every text row (under "vote":
        (C', h, w) votes) at the resized image's resolution. Their windows are predicted together
        (``sliding.sliding_windows``: ``finish(i, average)`` as each average completes)."""
        patch = patch_size(self.clip_model.visual)[0]
        return sliding_windows(
            frames,
            lambda windows: self._window_scores(windows, vocabulary),
            self.window_size,
            self.window_stride,
            self.window_batch,
            multiple=self.window_multiple or patch,
            padding=self.window_padding,
            finish=finish,
        )
