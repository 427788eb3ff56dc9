"""On-disk cache of text embeddings.

Encoding 80 templates for hundreds of class names takes minutes on a CPU. An entry is keyed by
the CLIP model, a fingerprint of the weights, the precision the text tower runs in, the exact
templates and the exact class names, so a changed name, template, checkpoint or precision never
reads a stale entry. Unreadable or invalid entries (shape, width, dtype, NaN/inf) are ignored
and rewritten; entries are written atomically, and a failed write only costs the cache.
"""

import hashlib
import json
import logging
import os
from typing import Callable, Optional, Sequence

import torch

from .atomic import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["TextEmbeddingCache", "default_cache_dir", "entry_problem"]


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "cliptrase_d2", "text_embeddings")


def entry_problem(embeddings, num_names: int, width: Optional[int] = None) -> Optional[str]:
    """Why ``embeddings`` cannot be the (num_names, width) text embeddings of a cache entry, or
    None when they can: a floating-point 2-D tensor of that shape with finite values."""
    if not isinstance(embeddings, torch.Tensor):
        return f"not a tensor but {type(embeddings).__name__}"
    if embeddings.dim() != 2 or embeddings.shape[0] != num_names:
        return f"shape {tuple(embeddings.shape)}, expected ({num_names}, E)"
    if width is not None and embeddings.shape[1] != width:
        return f"width {embeddings.shape[1]}, but the model's embeddings have {width}"
    if not embeddings.is_floating_point():
        return f"dtype {embeddings.dtype}, expected a floating-point tensor"
    if not bool(torch.isfinite(embeddings).all()):
        return "it holds NaN or infinite values"
    return None


class TextEmbeddingCache:
    def __init__(self, directory: str, model: str, weights_id: str, precision: str = "fp32"):
        self.directory = directory
        self.model = model
        self.weights_id = weights_id
        self.precision = precision

    @classmethod
    def from_setting(
        cls, setting: str, model: str, weights: str, precision: str = "fp32"
    ) -> Optional["TextEmbeddingCache"]:
        """``setting`` is MODEL.CLIPTRASE.TEXT_CACHE_DIR: "" = default directory, "none" = no
        cache."""
        if setting.lower() == "none":
            return None
        from .clip_loading import weights_fingerprint

        model_id, config = model, os.path.expanduser(model)  # "~/x": the home folder's
        if os.path.isfile(config):  # a model-config JSON: key by its content, not its path
            with open(config, "rb") as f:
                model_id = "config-" + hashlib.sha256(f.read()).hexdigest()[:16]
        directory = os.path.expanduser(setting) or default_cache_dir()
        return cls(directory, model_id, weights_fingerprint(weights), precision)

    def key(self, names: Sequence[str], templates: Sequence[str]) -> str:
        payload = json.dumps(
            {
                "model": self.model,
                "weights": self.weights_id,
                "precision": self.precision,
                "templates": list(templates),
                "names": list(names),
            },
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, names: Sequence[str], templates: Sequence[str]) -> str:
        return os.path.join(self.directory, self.key(names, templates) + ".pt")

    def get_or_compute(
        self,
        names: Sequence[str],
        templates: Sequence[str],
        compute: Callable[[], torch.Tensor],
        width: Optional[int] = None,
    ) -> torch.Tensor:
        """The (len(names), E) embeddings from the cache, or ``compute()`` stored in it unless
        ``entry_problem`` refuses it; ``width``: the E an entry must have, when given."""
        path = self.path(names, templates)
        cached = self._load(path, len(names), width)
        if cached is not None:
            return cached
        embeddings = compute()
        problem = entry_problem(embeddings, len(names), width)
        if problem is None:
            self._store(path, embeddings, names)
        else:
            logger.warning("not caching the text embeddings of %s: %s", path, problem)
        return embeddings

    @staticmethod
    def _load(path: str, num_names: int, width: Optional[int] = None) -> Optional[torch.Tensor]:
        if not os.path.exists(path):
            return None
        try:  # any unreadable or invalid entry is recomputed, never trusted
            embeddings = torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
            problem = entry_problem(embeddings, num_names, width)
        except Exception as error:
            problem = str(error)
        if problem is None:
            return embeddings
        logger.warning(
            "ignoring unreadable text-embedding cache entry %s (%s); recomputing", path, problem
        )
        return None

    def _store(self, path: str, embeddings: torch.Tensor, names: Sequence[str]) -> None:
        try:
            with atomic_open(path) as f:
                torch.save({"embeddings": embeddings.detach().cpu(), "names": list(names)}, f)
        except Exception as error:  # torch.save reports a full disk as RuntimeError, not OSError
            logger.warning(
                "could not write the text-embedding cache %s (%s); continuing without it",
                path,
                error,
            )
