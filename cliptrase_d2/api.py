"""Python API: segment any image with any vocabulary.

from cliptrase_d2.api import Segmenter
segmenter = Segmenter.from_config("configs/paper/Base-paper-224.yaml", ["MODEL.WEIGHTS",
"weights/ViT-B-16.pt"])
result = segmenter.segment("photo.jpg", "sky, dog, frisbee")
result.labels            # (H, W) int64 class index per pixel
result.class_names       # ["sky", "dog", "frisbee"]
result.pixel_shares()    # {"sky": 0.41, ...}
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .atomic import atomic_write_png
from .config import check_images_per_batch
from .data.dataset_mapper import SemSegTestMapper, rgb_pixels
from .data.image_io import read_rgb, to_rgb
from .evaluation.sem_seg_evaluation import prediction_png_dtype
from .vocabulary import Vocabulary, resolve_vocabulary
from .errors import InputError

__all__ = ["Segmenter", "SegmentationResult", "load_image"]

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


def load_image(image: ImageLike) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB array. Paths and
    PIL images get their EXIF orientation applied, so both give the same pixels."""
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(os.fspath(image))
    if isinstance(image, Image.Image):
        try:  # an opened file is decoded here: it may be truncated, or closed already
            return np.asarray(to_rgb(ImageOps.exif_transpose(image)))
        except (OSError, SyntaxError, ValueError) as error:
            name = getattr(image, "filename", "") or "given"
            raise InputError(
                f"cannot read the PIL image {name}: {error}. Give a complete image file, "
                "opened and not closed yet (or its path)"
            ) from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(
                f"an image array must be (H, W, 3) uint8 RGB, got shape {image.shape} "
                f"dtype {image.dtype}"
            )
        return np.ascontiguousarray(image)
    raise TypeError(
        f"cannot segment a {type(image).__name__}: give a path, a PIL image or an (H, W, 3) uint8 "
        "array"
    )


@dataclass
class SegmentationResult:
    labels: np.ndarray  # (H, W) int64 index into class_names
    # (K, H, W) float32 soft scores (region-mean logits); None if not asked for
    scores: Optional[torch.Tensor]
    class_names: List[str]
    # (H, W, 3) uint8 RGB: the pixels the labels refer to (the crop, under the paper protocol)
    image: np.ndarray

    def pixel_shares(self) -> Dict[str, float]:
        """Fraction of the pixels given to each class present, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(counts.sum()), 1)
        order = np.argsort(-counts, kind="stable")
        return {self.class_names[i]: float(counts[i]) / total for i in order if counts[i] > 0}

    def save_labels(self, path: str) -> None:
        """Writes ``labels`` as a PNG, atomically, of the type evaluation saves them in
        (``prediction_png_dtype``: 8-bit, 16-bit beyond 255 classes)."""
        atomic_write_png(path, self.labels.astype(prediction_png_dtype(len(self.class_names))))


class Segmenter:
    """Wraps a CLIPtrase model for single images and small batches (CPU or GPU)."""

    def __init__(self, model, batch_size: Optional[int] = None, cfg=None):
        """``batch_size``: at most that many images per model call in ``segment`` (None: each
        call's whole list at once). ``cfg``: the config the model was built from, if known (kept
        as DefaultPredictor keeps it)."""
        if batch_size is not None:
            check_images_per_batch(batch_size, "batch_size")
        self.model = model.eval()
        self.batch_size = batch_size
        self.cfg = cfg

    @classmethod
    def from_config(cls, config_file: str = "", opts: Sequence[str] = ()) -> "Segmenter":
        """Builds the model from a config file (and KEY VALUE overrides), on MODEL.DEVICE; images
        go to the model TEST.IMS_PER_BATCH at a time, as in evaluation."""
        from detectron2.modeling import build_model

        from .config import load_config

        cfg = load_config(config_file, opts)
        return cls(build_model(cfg), batch_size=cfg.TEST.IMS_PER_BATCH, cfg=cfg)

    def resolve_vocabulary(
        self, vocabulary=None, background: Optional[Sequence[str]] = None
    ) -> Vocabulary:
        """The Vocabulary ``segment`` uses: ``vocabulary`` (a benchmark key, comma-separated names,
        a file, a list of names or a Vocabulary), or when None the model's default
        (MODEL.CLIPTRASE.VOCABULARY, else the vocabulary of the config's one dataset in
        DATASETS.TEST); ``background`` adds background words to it."""
        if vocabulary is None:
            vocabulary = self.model.vocabulary_for({})
        quirks = self.model.paper_vocabulary_quirks
        return resolve_vocabulary(vocabulary, () if background is None else background, quirks)

    def segment(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        vocabulary=None,
        background: Optional[Sequence[str]] = None,
        scores: bool = True,
        batch_size: Optional[int] = None,
    ):
        """Segments one image (returns a SegmentationResult) or a list (returns a list).

        vocabulary, background: see ``resolve_vocabulary``; they belong to this call only (the
        model keeps no vocabulary between calls, only text embeddings per vocabulary).
        scores=False: the same labels without the (K, H, W) soft scores (``result.scores`` is
        None), which for large photos under the standard protocol saves gigabytes (but at
        near-ties: docs/SPEED.md, "Labels only"). batch_size: at most that many images per model
        call (None: the Segmenter's own); any batch size gives the same results (but in the last
        digits of PEARL's TLP scores under the paper protocol: docs/EVALUATION.md).
        """
        if batch_size is not None:
            check_images_per_batch(batch_size, "batch_size")
        batch_size = batch_size or self.batch_size
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        resolved = self.resolve_vocabulary(vocabulary, background)
        arrays = [load_image(image) for image in batch]
        names = [  # what the model's errors name: the file, else the image's place in the list
            os.fspath(x)
            if isinstance(x, (str, os.PathLike))
            else getattr(x, "filename", "") or ("the image" if single else f"image {i} of the list")
            for i, x in enumerate(batch)
        ]
        # DefaultPredictor's call: the framed image with its original size, made (and refused
        # before any resize) by the loader's own mapper
        mapper = SemSegTestMapper(image_format=self.model.input_format, frame=self.model.frame)
        asked = {"vocabulary": resolved, "scores": "soft" if scores else "none"}
        records = [
            mapper.model_input({"file_name": name, **asked}, array)
            for name, array in zip(names, arrays)
        ]
        step = batch_size or max(len(records), 1)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(records), step):
                outputs += self.model(records[start : start + step])
        paper, image_format = self.model.frame.protocol == "paper", self.model.input_format
        results = [
            SegmentationResult(
                output["labels"].cpu().numpy().astype(np.int64),
                output["sem_seg"].cpu() if scores else None,
                resolved.class_names,
                # the pixels the labels refer to: the paper protocol's crop, else the image
                rgb_pixels(record["image"], image_format) if paper else array,
            )
            for output, record, array in zip(outputs, records, arrays)
        ]
        return results[0] if single else results
