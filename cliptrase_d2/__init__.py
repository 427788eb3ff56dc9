"""cliptrase-d2: CLIPtrase (ECCV 2024) training-free open-vocabulary segmentation for Detectron2.

Importing the package registers the ``CLIPtrase`` meta-architecture and the datasets.
"""

import warnings

from . import compat  # noqa: F401  (must run before detectron2 is imported)

with warnings.catch_warnings():
    # detectron2 0.6 scripts a few helpers at import time; torch >= 2.10 deprecates
    # torch.jit.script.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from .config import add_cliptrase_config
    from .modeling.meta_arch import CLIPtrase
    from . import data  # noqa: F401  (registers the datasets)

from . import model_zoo  # noqa: E402  (the project's configs by name)
from .vocabulary import Vocabulary, resolve_vocabulary

__all__ = ["add_cliptrase_config", "CLIPtrase", "Vocabulary", "model_zoo", "resolve_vocabulary"]
