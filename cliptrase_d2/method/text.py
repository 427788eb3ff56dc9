"""Text classifier from class names and prompt templates (SPEC section 5)."""
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
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
def text_embeddings(model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                    templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """One unit-norm embedding per class name: encode every ``template.format(name)``,
    L2-normalize, average over templates, L2-normalize again. -> (K, E) float32 on the model's device.

    Prompts longer than the tokenizer's context are truncated by the tokenizer (a warning is logged).
    """
    device = next(model.parameters()).device
    context = getattr(tokenizer, "context_length", 77)
    prompts = [template.format(name) for name in class_names for template in templates]
    too_long = sorted({name for name in class_names for template in templates
                       if count_tokens(tokenizer, template.format(name)) > context})
    for name in too_long:
        logger.warning("class name %r does not fit CLIP's %d-token context in some templates; "
                       "its prompts are truncated", name[:80], context)
    features = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        features.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(features).view(len(class_names), len(templates), -1)  # (K, T, E)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
