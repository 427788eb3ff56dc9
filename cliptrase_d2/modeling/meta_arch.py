"""The ``CLIPtrase`` meta-architecture: maps the configuration to the method
(cliptrase_d2.method) and batches Detectron2's inputs through it."""

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..data.dataset_mapper import ProtocolFrame, rgb_pixels
from ..method.dense_clip import patch_size
from ..method.heads import resolve_logit_scale
from ..method.peer_heads import PEARL_KEY_KEY_WEIGHT
from ..method.pipeline import RefinementSettings, dbscan_for_grid, predict, predict_within_memory
from ..method.preprocess import CLIP_MEAN, CLIP_STD
from ..method.refinement import channel_argmax
from ..method.sliding import sliding_windows
from ..method.standard import StandardSteps, class_labels, class_scores
from ..method.text import text_embeddings
from ..vocabulary import Vocabulary, resolve_vocabulary, template_set, vocabulary_of_dataset
from ..errors import InputError
from .checkpoint import read_clip_keys
from .settings import check_dataset_classes, check_published, check_settings, check_single_names
from .settings import configured_head, refinement_settings

__all__ = ["CLIPtrase"]


@META_ARCH_REGISTRY.register()
class CLIPtrase(nn.Module):
    """Training-free open-vocabulary semantic segmentation with a recalibrated CLIP.

    Inference only. ``forward`` takes a list of dicts, one per image, with
      - ``image``: (3, H, W) tensor in ``input_format`` channel order, uint8 or float with
        values 0-255 (Detectron2's DefaultPredictor): the whole image, or its protocol frame
        (``frame``: what SemSegTestMapper gives), which is its own frame;
      - ``height``, ``width`` (optional): the original image's size (default: the image's own),
        which the limits of ``frame.check`` apply to and the standard protocol predicts at;
      - the vocabulary to segment with, the first found of: ``vocabulary`` (a Vocabulary, a
        benchmark key or names); the model's ``vocabulary`` (MODEL.CLIPTRASE.VOCABULARY, an
        explicit override); the ``vocabulary`` (or ``stuff_classes``) in the metadata of
        ``dataset_name`` (set on every record of this package's datasets); the metadata of
        ``default_dataset`` (DATASETS.TEST when it names one dataset). A batch may mix
        vocabularies;
      - ``scores`` (optional): "soft" for soft scores also under "vote" (region-mean logits),
        "none" for no scores (the standard protocol then never holds the (K, H', W') scores);
    and returns one dict per image with
      - ``sem_seg``: (K, H', W') float scores over the K output classes of the image's
        vocabulary (``Vocabulary.class_names``: background last when it has background words),
        whose argmax is the prediction (one-hot under "vote"); absent with ``scores`` "none".
        Under the ``paper`` protocol H' = W' = ``paper_size`` (the center crop the paper
        evaluates); under the ``standard`` protocol (H', W') = (height, width);
      - ``labels``: (H', W') int64 predicted classes, when ``scores`` is given.
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
        built_from_weights: Optional[str] = None,
    ):
        super().__init__()
        # the protocol's frame, and the limits an image is refused by (the loader's own rule)
        self.frame = ProtocolFrame(
            protocol,
            paper_size,
            standard_short_side,
            standard_long_side,
            window_size,
            window_stride,
            max(patch_size(clip_model.visual)),
            max_pixels,
            max_windows,
        )
        # Standard protocol: TLP runs once on the window-averaged logits resized to the output
        # size (PEARL's order), the windows without refinement.
        standard_tlp = protocol == "standard" and refinement.refine == "tlp"
        tlp_grid = refinement.tlp_grid if standard_tlp else 0
        self.steps = StandardSteps(pamr_steps, tuple(pamr_dilations), tlp_grid, prob_thd, area_thd)
        self.input_format = input_format
        self.window_batch, self.window_padding = window_batch, window_padding
        check_settings(self, refinement, pearl_kk_weight)
        self.head = configured_head(head, refinement, pearl_kk_weight, vfm)
        # ProxyCLIP's VFM as a submodule, so that .to() moves it; 0: windows padded to the patch
        self.vfm, self.window_multiple = vfm, window_multiple
        self.logit_scale = resolve_logit_scale(self.head, clip_model, logit_scale)
        self.refinement = (
            dataclasses.replace(refinement, refine="none") if standard_tlp else refinement
        )
        self.clip_model, self.tokenizer, self.templates = clip_model, tokenizer, tuple(templates)
        self.protocol, self.window_size, self.window_stride = protocol, window_size, window_stride
        self.text_cache = text_cache
        self.paper_vocabulary_quirks = paper_vocabulary_quirks
        # an explicit vocabulary (MODEL.CLIPTRASE.VOCABULARY): any form resolve_vocabulary takes
        if vocabulary is not None:
            vocabulary = resolve_vocabulary(vocabulary, (), paper_vocabulary_quirks)
        self.vocabulary = vocabulary
        self.default_dataset = default_dataset
        self.cached_vocabularies = max(1, cached_vocabularies)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)
        self.register_load_state_dict_pre_hook(read_clip_keys)  # Detectron2's checkpointer
        self.built_from_weights = built_from_weights  # MODEL.WEIGHTS (see checkpoint.py)
        # the text embeddings of the last vocabularies used, by (text rows, device)
        encode = functools.partial(_encoded, clip_model, tokenizer, self.templates, text_cache)
        self._text_embeddings = functools.lru_cache(self.cached_vocabularies)(encode)
        self._dataset_vocabularies: Dict[str, Vocabulary] = {}

    @classmethod
    def from_config(cls, cfg):
        from ..clip_loading import build_clip, get_tokenizer
        from ..text_cache import TextEmbeddingCache
        from .vfm import build_vfm

        c = cfg.MODEL.CLIPTRASE
        check_published(cfg)
        # what needs no CLIP first: a mistyped vocabulary or template set fails before it loads
        vocabulary = c.VOCABULARY and resolve_vocabulary(
            c.VOCABULARY, tuple(c.BACKGROUND_WORDS), c.PAPER_VOCABULARY_QUIRKS
        )
        templates = template_set(c.TEMPLATES)
        clip_model = build_clip(c.CLIP_MODEL, cfg.MODEL.WEIGHTS or "openai", precision=c.PRECISION)
        input_side = c.PAPER_SIZE if c.PROTOCOL == "paper" else c.WINDOW_SIZE
        auto_eps, auto_min_samples = dbscan_for_grid(input_side // patch_size(clip_model.visual)[0])
        vfm = None  # ProxyCLIP's vision foundation model, in CLIP's precision
        if c.HEAD == "proxyclip":
            dtype = clip_model.visual.conv1.weight.dtype
            vfm = build_vfm(c.PROXYCLIP.VFM, c.PROXYCLIP.VFM_WEIGHTS, dtype)
        return {
            "clip_model": clip_model,
            "built_from_weights": cfg.MODEL.WEIGHTS,
            "tokenizer": get_tokenizer(c.CLIP_MODEL),
            "vocabulary": vocabulary or None,
            "default_dataset": cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) == 1 else None,
            "templates": templates,
            "head": c.HEAD,
            "logit_scale": c.LOGIT_SCALE,
            "refinement": refinement_settings(c, auto_eps, auto_min_samples),
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
            "vfm": vfm,
            "window_multiple": c.WINDOW_MULTIPLE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def vocabulary_for(self, record: Dict) -> Vocabulary:
        """The vocabulary one input is segmented with (see the class docstring for the order)."""
        if record.get("vocabulary") is not None:
            spec = record["vocabulary"]
            return resolve_vocabulary(spec, (), self.paper_vocabulary_quirks, files=False)
        dataset = record.get("dataset_name") or self.default_dataset
        if dataset is None:
            if self.vocabulary is None:
                raise InputError(
                    "no vocabulary for this input: give it a 'vocabulary' (the API's segment("
                    "image, vocabulary)), set MODEL.CLIPTRASE.VOCABULARY, or evaluate a "
                    "registered dataset (DATASETS.TEST)"
                )
            return self.vocabulary
        if dataset not in self._dataset_vocabularies:  # the explicit one checked once against it
            if self.vocabulary is not None:
                check_dataset_classes(self.vocabulary, dataset)
            self._dataset_vocabularies[dataset] = self.vocabulary or vocabulary_of_dataset(
                dataset, self.paper_vocabulary_quirks
            )
        return self._dataset_vocabularies[dataset]

    def text_embeddings(self, vocabulary: Vocabulary) -> torch.Tensor:
        """(C + B, E) unit-norm text embeddings of a vocabulary's classes then background words,
        kept for the last ``cached_vocabularies`` vocabularies (and on disk by ``text_cache``)."""
        return self._text_embeddings(vocabulary.text_rows, str(self.device))

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            message = "CLIPtrase is training-free: it has nothing to train. Run evaluation"
            raise RuntimeError(f"{message} (tools/train_net.py --eval-only) or the demo instead.")
        images = [rgb_pixels(record["image"], self.input_format) for record in batched_inputs]
        sizes = [
            (record.get("height", image.shape[0]), record.get("width", image.shape[1]))
            for record, image in zip(batched_inputs, images)
        ]
        for record, size in zip(batched_inputs, sizes):
            self.frame.check(*size, record.get("file_name", "an input image"))
        # images segmented with the same vocabulary (and asking the same scores) run together
        groups: Dict[Tuple[Vocabulary, Optional[str]], List[int]] = {}
        for index, record in enumerate(batched_inputs):
            key = (self.vocabulary_for(record), record.get("scores"))
            groups.setdefault(key, []).append(index)
        outputs: List[Dict] = [{} for _ in batched_inputs]
        run = self._paper_outputs if self.protocol == "paper" else self._standard_outputs
        for (vocabulary, scores), indices in groups.items():
            frames = [self.frame(images[i]) for i in indices]
            results = run(frames, [sizes[i] for i in indices], vocabulary, scores)
            for index, output in zip(indices, results):
                outputs[index] = output
        return outputs

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) CLIP-normalized float32 on the device."""
        pixels = pixels.to(self.device).movedim(-1, -3).float() / 255.0
        return (pixels - self.pixel_mean) / self.pixel_std

    @staticmethod
    def _output(labels, scores: torch.Tensor, asked: Optional[str]) -> Dict:
        if asked is None:
            return {"sem_seg": scores}
        return {"labels": labels} if asked == "none" else {"sem_seg": scores, "labels": labels}

    def _paper_outputs(self, frames, sizes, vocabulary: Vocabulary, scores) -> List[Dict]:
        """The paper protocol: a group's S x S frames predicted as one batch."""
        check_single_names(vocabulary, "the paper protocol")
        # contiguous (B, 3, S, S), the layout CLIP's patch embedding is given
        images = self._normalized(torch.from_numpy(np.stack(frames))).contiguous()
        soft = scores == "soft"
        prediction = predict_within_memory(lambda x: self._predict(x, vocabulary, soft), images)
        return [self._output(*p, scores) for p in zip(*prediction)]

    def _standard_outputs(self, frames, sizes, vocabulary: Vocabulary, scores) -> List[Dict]:
        """The standard protocol: the windows of a group's frames go through the backbone
        together (``sliding_windows``), each image's average finished alone at its size."""
        vote = self.refinement.refine == "vote"
        if vote:
            check_single_names(vocabulary, "REFINE 'vote' under the standard protocol")
        frames = [self._normalized(torch.from_numpy(frame)) for frame in frames]
        averages = sliding_windows(
            frames,
            lambda windows: self._window_scores(windows, vocabulary),
            self.window_size,
            self.window_stride,
            self.window_batch,
            multiple=self.window_multiple or patch_size(self.clip_model.visual)[0],
            padding=self.window_padding,
        )
        rows, num_classes = vocabulary.row_classes, len(vocabulary.classes)
        outputs = []
        for frame, size, average in zip(frames, sizes, averages):
            if scores == "none" and self.steps.labels_from_rows:
                outputs.append({"labels": class_labels(average, size, rows, num_classes, vote)})
                continue
            text = self.text_embeddings(vocabulary) if self.steps.tlp_grid else None
            image_scores = class_scores(
                average, frame, size, rows, num_classes, self.steps, text, self.logit_scale, vote
            )
            labels = None if scores is None else channel_argmax(image_scores)
            outputs.append(self._output(labels, image_scores, scores))
        return outputs

    def _window_scores(self, windows: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """(N, 3, h, w) -> (N, R, h, w) scores of every text row (names and background words,
        merged after averaging and resizing); under "vote" (N, C', h, w), each window voting
        with the one-hot of its merged labels."""
        vote = self.refinement.refine == "vote"
        rows = len(vocabulary.classes) if vote else len(vocabulary.text_rows)
        predict_rows = functools.partial(
            self._predict, vocabulary=vocabulary, soft_scores=False, num_classes=rows
        )
        return predict_within_memory(predict_rows, windows, "window").scores

    def _predict(
        self,
        images: torch.Tensor,
        vocabulary: Vocabulary,
        soft_scores: bool = True,
        num_classes: Optional[int] = None,
    ):
        """``pipeline.predict`` on normalized (B, 3, H, W) images. ``num_classes``: rows below it
        are classes, the rest background words merged into one (default: the vocabulary's C);
        the number of text rows keeps every row's scores."""
        num_classes = len(vocabulary.classes) if num_classes is None else num_classes
        text = self.text_embeddings(vocabulary)
        run = functools.partial(predict, self.clip_model.visual, self.head, text, num_classes)
        try:
            return run(images, self.refinement, self.logit_scale, soft_scores=soft_scores)
        except ValueError as error:
            # the method's checks of its input (a grid too small for a head)
            raise InputError(str(error)) from error


def _encoded(clip_model, tokenizer, templates, text_cache, names, device: str) -> torch.Tensor:
    """``text_embeddings`` of ``names`` as float32 on ``device``, through the on-disk cache when
    there is one (checked against the model's embedding width)."""
    compute = functools.partial(text_embeddings, clip_model, tokenizer, names, templates)
    if text_cache is not None:
        width = getattr(clip_model.visual, "output_dim", None)
        compute = functools.partial(text_cache.get_or_compute, names, templates, compute, width)
    return compute().to(device, torch.float32)
