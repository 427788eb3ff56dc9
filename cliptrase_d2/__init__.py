from . import compat  # noqa: F401  (must run before detectron2 is imported)
