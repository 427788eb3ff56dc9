"""Detectron2 dataset registrations: the benchmarks and the VOC sample.

Importing this package registers them all (see datasets/README.md for the folder layouts);
``python -m cliptrase_d2.data.datasets.check`` checks prepared folders before an evaluation.
"""

from .register_benchmarks import (
    BENCHMARK_DATASETS,
    BENCHMARK_SPLITS,
    OFFICIAL_SPLITS,
    SemSegSplit,
    datasets_root,
    load_split,
    register_benchmark_datasets,
    register_split,
    require_registered,
)
from .register_sample import SAMPLE_SPLITS, register_sample_datasets

__all__ = [
    "BENCHMARK_DATASETS",
    "BENCHMARK_SPLITS",
    "SAMPLE_SPLITS",
    "OFFICIAL_SPLITS",
    "SemSegSplit",
    "datasets_root",
    "load_split",
    "register_benchmark_datasets",
    "register_sample_datasets",
    "register_split",
    "require_registered",
]
