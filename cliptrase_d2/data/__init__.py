"""Data: the benchmark vocabularies, the test-time mapper and the Detectron2 dataset registrations.

Importing this package registers every CLIPtrase dataset (``cliptrase_<benchmark>_val``, the
VOC sample and the reference fixtures) with Detectron2's catalogs.
"""

from .datasets import BENCHMARK_DATASETS, require_registered

__all__ = ["BENCHMARK_DATASETS", "require_registered"]
