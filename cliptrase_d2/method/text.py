"""Text classifier from class names and prompt templates (docs/method.md section 5)."""

import logging
from typing import Callable, Sequence

import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["text_embeddings", "count_tokens"]


def count_tokens(tokenizer: Callable, text: str) -> int:
    """Number of BPE tokens of ``text`` including start and end tokens (before any truncation)."""
    encoder = getattr(tokenizer, "encode", None)
    if encoder is None:  # not open_clip's SimpleTokenizer: count non-padding ids of a long context
        return int((tokenizer([text], context_length=10_000)[0] != 0).sum())
    return len(encoder(text)) + 2


@torch.no_grad()
def text_embeddings(
    model: nn.Module,
    tokenizer: Callable,
    class_names: Sequence[str],
    templates: Sequence[str],
    classes_per_batch: int = 10,
) -> torch.Tensor:
    """One unit-norm embedding per class name: encode every ``template.format(name)``,
    L2-normalize, average over templates, L2-normalize again (open_clip's zero-shot classifier,
    which computes exactly this). -> (K, E) float32 on the model's device.

    Prompts longer than the tokenizer's context are truncated by the tokenizer (a warning is
    logged).
    """
    device = next(model.parameters()).device
    context = getattr(tokenizer, "context_length", 77)
    too_long = sorted(
        {
            name
            for name in class_names
            for template in templates
            if count_tokens(tokenizer, template.format(name)) > context
        }
    )
    for name in too_long:
        logger.warning(
            "class name %r does not fit CLIP's %d-token context in some templates; "
            "its prompts are truncated",
            name[:80],
            context,
        )
    with torch.profiler.record_function("cliptrase/text embeddings"):
        classifier = build_zero_shot_classifier(
            model,
            tokenizer,
            list(class_names),
            list(templates),
            num_classes_per_batch=classes_per_batch,
            device=device,
            use_tqdm=len(class_names) >= 100,
        )  # progress for long lists
    return classifier.t().float().contiguous()  # (E, K) -> (K, E)
