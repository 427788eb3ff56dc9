"""Detectron2 dataset registrations: the benchmarks, the VOC sample and the reference fixtures.

Importing this package registers them all (see datasets/README.md for the folder layouts).
"""
from .register_benchmarks import (
    BENCHMARK_DATASETS,
    BENCHMARK_SPLITS,
    SemSegSplit,
    datasets_root,
    load_sem_seg_split,
    register_benchmark_datasets,
    register_split,
    require_registered,
)
from .register_sample import FIXTURE_SPLITS, SAMPLE_SPLITS, fixtures_root, register_sample_datasets

__all__ = [
    "BENCHMARK_DATASETS",
    "BENCHMARK_SPLITS",
    "FIXTURE_SPLITS",
    "SAMPLE_SPLITS",
    "SemSegSplit",
    "datasets_root",
    "fixtures_root",
    "load_sem_seg_split",
    "register_benchmark_datasets",
    "register_sample_datasets",
    "register_split",
    "require_registered",
]
