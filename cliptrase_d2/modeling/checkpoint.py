"""What Detectron2's checkpointer loads into CLIPtrase.

``DefaultPredictor`` (and any ``DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)``) loads
MODEL.WEIGHTS into the whole model after ``build_model`` has built CLIP from that same source.
That source may be a tag (``openai``, which is no file) or OpenAI's TorchScript archive (which
``torch.load`` refuses), so the checkpointer leaves the weights the model was built from to the
model (``skip_built_weights``). Another file is read as ``build_clip`` reads weights (data only,
zip CRCs checked, a TorchScript archive without running its code, a file named like OpenAI's
release held to its sha256, one error naming a damaged file or a NaN or integer weight), not by
``torch.load``, and loaded by Detectron2; a CLIP state dict's keys are then CLIP's own
(``visual.conv1.weight``), read as ``clip_model``'s (``read_clip_keys``).
"""

import functools
import logging

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..clip_loading import OPENAI_EXTRA_KEYS, _existing_file, check_values, read_weights

__all__ = ["read_clip_keys", "skip_built_weights"]

logger = logging.getLogger(__name__)


def read_clip_keys(model: nn.Module, state_dict, prefix: str, *_) -> None:
    """A ``load_state_dict`` pre-hook of CLIPtrase: keys of a CLIP checkpoint become
    ``clip_model``'s, and the entries that open_clip's loader drops as well (OpenAI's
    ``input_resolution``, ``context_length``, ``vocab_size``) are dropped, so that the
    checkpointer loads every parameter and reports nothing."""
    clip_keys = set(model.clip_model.state_dict())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix) :]
        if name in clip_keys:
            state_dict[f"{prefix}clip_model.{name}"] = state_dict.pop(key)
        elif name in OPENAI_EXTRA_KEYS:
            del state_dict[key]


def skip_built_weights(load):
    """Wraps ``DetectionCheckpointer.load``: for a model that says which weights it was built
    from (``built_from_weights``), loading those again is skipped with one info line, and
    another file is read as those were."""

    @functools.wraps(load)
    def checked_load(self, path, *args, **kwargs):
        model = getattr(self.model, "module", self.model)  # DistributedDataParallel's
        built = getattr(model, "built_from_weights", None)
        # an empty MODEL.WEIGHTS is the tag "openai" (as the model was built from it)
        if built is not None and (path or "openai") == (built or "openai"):
            logger.info("CLIP weights %s: loaded when the model was built", path)
            return {}
        if built is None or not path:
            return load(self, path, *args, **kwargs)
        logger.info("Loading weights %s", path)
        tensors = read_weights(_existing_file(path))[0]
        # Detectron2's key names and CLIP's own: each tensor checked once
        check_values({**model.clip_model.state_dict(), **model.state_dict()}, tensors, path)
        self._log_incompatible_keys(self._load_model({"model": tensors}))
        return {}

    return checked_load


if not hasattr(DetectionCheckpointer.load, "__wrapped__"):
    DetectionCheckpointer.load = skip_built_weights(DetectionCheckpointer.load)
