"""The ``CLIPtrase`` meta-architecture: wires the pure method (cliptrase_d2.method) to Detectron2."""
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.memory import retry_if_cuda_oom
from PIL import Image
from torch import nn

from ..method.heads import get_head, resolve_logit_scale
from ..method.pipeline import RefinementSettings, predict_scores
from ..method.preprocess import CLIP_MEAN, CLIP_STD, resize_and_center_crop, to_clip_tensor
from ..method.sliding import sliding_window
from ..method.text import text_embeddings
from ..vocabulary import Vocabulary, resolve_vocabulary, template_set

__all__ = ["CLIPtrase", "PROTOCOLS"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("paper", "standard")


@META_ARCH_REGISTRY.register()
class CLIPtrase(nn.Module):
    """Training-free open-vocabulary semantic segmentation with a recalibrated CLIP.

    Inference only. ``forward`` takes a list of dicts, one per image, with
      - ``image``: (3, H, W) uint8 tensor in ``input_format`` channel order;
      - ``height``, ``width`` (optional): the size the prediction is wanted at (standard
        protocol; default the image's own size);
    and returns one dict per image with
      - ``sem_seg``: (K, H', W') float scores over the K output classes (``class_names``;
        background last when the vocabulary has background words). Under the ``paper``
        protocol H' = W' = ``paper_size`` (the center crop the paper evaluates); under the
        ``standard`` protocol (H', W') = (height, width).
    """

    @configurable
    def __init__(self, *, clip_model: nn.Module, tokenizer, vocabulary: Vocabulary,
                 templates: Sequence[str], head: str = "cliptrase", logit_scale: float = 0.0,
                 refinement: RefinementSettings = RefinementSettings(), protocol: str = "paper",
                 paper_size: int = 224, standard_short_side: int = 336, window_size: int = 224,
                 window_stride: int = 112, window_batch: int = 8, input_format: str = "RGB",
                 text_cache=None):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} (MODEL.CLIPTRASE.PROTOCOL); choose one of {PROTOCOLS}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {input_format!r}")
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.head = get_head(head)
        self.logit_scale = resolve_logit_scale(self.head, clip_model, logit_scale)
        self.refinement = refinement
        self.protocol = protocol
        self.paper_size = paper_size
        self.standard_short_side = standard_short_side
        self.window_size, self.window_stride, self.window_batch = window_size, window_stride, window_batch
        self.input_format = input_format
        self.text_cache = text_cache
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)
        self._text_embeddings: Optional[torch.Tensor] = None
        self.set_vocabulary(vocabulary)

    @classmethod
    def from_config(cls, cfg):
        from ..clip_loading import build_clip, get_tokenizer
        from ..text_cache import TextEmbeddingCache

        c = cfg.MODEL.CLIPTRASE
        vocabulary_spec = c.VOCABULARY
        if not vocabulary_spec:
            if not cfg.DATASETS.TEST:
                raise ValueError("no vocabulary: set MODEL.CLIPTRASE.VOCABULARY (a benchmark key, "
                                 "comma-separated names or a file) or DATASETS.TEST")
            vocabulary_spec = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("vocabulary", None)
            if vocabulary_spec is None:
                raise ValueError(f"dataset {cfg.DATASETS.TEST[0]!r} has no 'vocabulary' in its metadata; "
                                 "set MODEL.CLIPTRASE.VOCABULARY")
        return {
            "clip_model": build_clip(c.CLIP_MODEL, cfg.MODEL.WEIGHTS or "openai", precision=c.PRECISION),
            "tokenizer": get_tokenizer(c.CLIP_MODEL),
            "vocabulary": resolve_vocabulary(vocabulary_spec, tuple(c.BACKGROUND_WORDS)),
            "templates": template_set(c.TEMPLATES),
            "head": c.HEAD,
            "logit_scale": c.LOGIT_SCALE,
            "refinement": RefinementSettings(
                refine=c.REFINE, dbscan_eps=c.DBSCAN_EPS, dbscan_min_samples=c.DBSCAN_MIN_SAMPLES,
                region_upsample=c.REGION_UPSAMPLE, median_size=c.MEDIAN_SIZE,
                image_logit_weighting=c.IMAGE_LOGIT_WEIGHTING),
            "protocol": c.PROTOCOL,
            "paper_size": c.PAPER_SIZE,
            "standard_short_side": c.STANDARD_SHORT_SIDE,
            "window_size": c.WINDOW_SIZE,
            "window_stride": c.WINDOW_STRIDE,
            "window_batch": c.WINDOW_BATCH,
            "input_format": cfg.INPUT.FORMAT,
            "text_cache": TextEmbeddingCache.from_setting(c.TEXT_CACHE_DIR, c.CLIP_MODEL, cfg.MODEL.WEIGHTS or "openai"),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- vocabulary ------------------------------------------------------------------------
    def set_vocabulary(self, vocabulary) -> None:
        """Switches the classes (a Vocabulary, benchmark key, comma-separated names or a list)."""
        self.vocabulary = resolve_vocabulary(vocabulary)
        self._text_embeddings = None

    @property
    def class_names(self) -> List[str]:
        return self.vocabulary.class_names

    @property
    def text_embeddings(self) -> torch.Tensor:
        """(C + B, E) unit-norm text embeddings of classes then background words (cached)."""
        if self._text_embeddings is None or self._text_embeddings.device != self.device:
            names = self.vocabulary.text_rows

            def compute():
                return text_embeddings(self.clip_model, self.tokenizer, names, self.templates)

            if self.text_cache is not None:
                embeddings = self.text_cache.get_or_compute(names, self.templates, compute)
            else:
                embeddings = compute()
            self._text_embeddings = embeddings.to(self.device, torch.float32)
        return self._text_embeddings

    # ---- inference -------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            raise RuntimeError("CLIPtrase is training-free: it has nothing to train. "
                               "Run evaluation (tools/train_net.py --eval-only) or the demo instead.")
        if self.protocol == "paper":
            images = torch.stack([self._paper_input(x["image"]) for x in batched_inputs]).to(self.device)
            scores = retry_if_cuda_oom(self.predict)(images)  # (B, K, S, S)
            return [{"sem_seg": s} for s in scores]
        return [{"sem_seg": self._standard_prediction(x)} for x in batched_inputs]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalized images -> (B, K, H, W) scores at the same resolution."""
        return predict_scores(self.clip_model.visual, self.head, self.text_embeddings,
                              len(self.vocabulary.classes), images, self.refinement, self.logit_scale)

    def _rgb_uint8(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"'image' must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
        return image.flip(0) if self.input_format == "BGR" else image

    def _paper_input(self, image: torch.Tensor) -> torch.Tensor:
        """Paper protocol: shorter side to S (PIL bicubic), center crop S x S, CLIP normalization."""
        rgb = self._rgb_uint8(image).permute(1, 2, 0).cpu().numpy()
        crop = resize_and_center_crop(Image.fromarray(rgb), self.paper_size, Image.BICUBIC)
        return to_clip_tensor(crop)

    def _standard_prediction(self, record: Dict) -> torch.Tensor:
        """Standard protocol: shorter side to ``standard_short_side``, sliding window, scores
        resized to the requested (height, width)."""
        image = self._rgb_uint8(record["image"]).to(self.device, torch.float32) / 255.0
        height, width = image.shape[-2:]
        out_h, out_w = record.get("height", height), record.get("width", width)
        scale = self.standard_short_side / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        image = (image - self.pixel_mean) / self.pixel_std
        patch = self.clip_model.visual.conv1.kernel_size[0]
        scores = sliding_window(image, retry_if_cuda_oom(self.predict), self.window_size, self.window_stride,
                                self.window_batch, multiple=patch)  # (K, h, w)
        return F.interpolate(scores[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
