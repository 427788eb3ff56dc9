"""Heads: the ways of turning CLIP's last block into dense features.

A head is only a replacement for the vision tower's last block, plus the logit scale its
authors apply to cosine similarities. Everything else (loading, text, protocols, refinement,
evaluation) is shared. To add a method, write its last block as a function
``(block, x: (L, B, C), grid: (h, w)) -> (L, B, C)`` and register a ``Head``. A method that
combines several blocks (SC-CLIP) sets ``hidden_states=True``: its function then also receives
the outputs of every earlier block, ``(block, x, grid, hidden) -> (L, B, C)``.
"""

import functools
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from .dense_clip import (
    DenseFeatures,
    LastBlock,
    LastBlockWithHidden,
    correlative_block,
    dense_features,
    residual_block,
)

__all__ = ["Head", "HEADS", "get_head", "register_head", "resolve_logit_scale"]


@dataclass(frozen=True)
class Head:
    name: str
    last_block: Union[LastBlock, LastBlockWithHidden]  # (block, x: (L, B, C), grid) -> (L, B, C)
    logit_scale: Optional[float] = None  # None: CLIP's learned logit_scale.exp()
    description: str = ""
    hidden_states: bool = False  # last_block is a LastBlockWithHidden (reads blocks 0 .. N-2)
    options: Tuple[str, ...] = ()  # keyword arguments of last_block that a setting may change

    def features(self, visual: nn.Module, images: torch.Tensor) -> DenseFeatures:
        with torch.profiler.record_function("cliptrase/backbone"):
            return dense_features(visual, images, self.last_block, self.hidden_states)

    def configured(self, **options) -> "Head":
        """This head with keyword ``options`` of its last block set (only ones it declares)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"head {self.name!r} has no option {', '.join(unknown)}; its options: "
                f"{', '.join(self.options) or 'none'}"
            )
        if not options:
            return self
        return replace(self, last_block=functools.partial(self.last_block, **options))


HEADS: Dict[str, Head] = {}


def register_head(head: Head) -> Head:
    if head.name in HEADS:
        raise ValueError(f"head {head.name!r} is already registered")
    HEADS[head.name] = head
    return head


def get_head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    return HEADS[name]


def resolve_logit_scale(head: Head, clip_model: nn.Module, override: float = 0.0) -> float:
    """The scale for cosine logits: ``override`` when > 0, else the head's own, else CLIP's learned
    one."""
    if override > 0:
        return float(override)
    if head.logit_scale is not None:
        return float(head.logit_scale)
    return float(clip_model.logit_scale.detach().exp())


def plain_last_block(block: nn.Module, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The unmodified last block."""
    return residual_block(block, x)


register_head(
    Head(
        "cliptrase",
        correlative_block,
        None,
        "CLIPtrase (Shao et al., ECCV 2024): q-q, k-k and v-v attention in the last block, "
        "residual and MLP kept",
    )
)
register_head(
    Head("clip", plain_last_block, None, "plain CLIP: the unmodified last block's patch tokens")
)
