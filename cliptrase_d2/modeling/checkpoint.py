"""What Detectron2's checkpointer loads into CLIPtrase.

``DefaultPredictor`` (and any ``DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)``) loads
MODEL.WEIGHTS into the whole model after ``build_model`` has built CLIP from that same file.
Its keys are the CLIP model's own (``visual.conv1.weight``), not the meta-architecture's
(``clip_model.visual.conv1.weight``): read as such, every parameter would be reported missing and
every key unexpected, and nothing loaded.
"""

from torch import nn

__all__ = ["read_clip_keys"]


def read_clip_keys(model: nn.Module, state_dict, prefix: str, *_) -> None:
    """A ``load_state_dict`` pre-hook of CLIPtrase: keys of a CLIP checkpoint become
    ``clip_model``'s (the values it was built with, loaded again), and the entries that
    open_clip's loader drops as well (OpenAI's ``input_resolution``, ``context_length``,
    ``vocab_size``) are dropped, so that the checkpointer loads every parameter and reports
    nothing."""
    clip_keys = set(model.clip_model.state_dict())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix) :]
        if name in clip_keys:
            state_dict[f"{prefix}clip_model.{name}"] = state_dict.pop(key)
        elif name in ("input_resolution", "context_length", "vocab_size"):
            del state_dict[key]
