"""Checks prepared datasets before a long evaluation:

    python -m cliptrase_d2.data.datasets.check [--root DIR] [DATASET ...]

Each dataset (default: every benchmark whose label-map folder is under the root) is loaded as an
evaluation loads it, then every label map is read: it must have its image's size and hold only
class ids of the dataset's vocabulary or its ``ignore_label``, and the number of images must be
the official split's. One line per dataset; the exit status is 1 when a check fails.
"""

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

from ...errors import UserError
from ...evaluation.paper_metric import unknown_label_ids
from ...evaluation.sem_seg_evaluation import (
    ground_truth_records,
    label_ids,
    open_label_map,
    sem_seg_metadata,
)
from ..image_io import read_rgb
from .register_benchmarks import (
    BENCHMARK_SPLITS,
    OFFICIAL_SPLITS,
    datasets_root,
    register_benchmark_datasets,
)
from .register_sample import register_sample_datasets

SHOWN = 3  # problems quoted per dataset
logger = logging.getLogger(__name__)


def label_map_problem(
    record: dict, dataset_name: str, num_classes: int, ignore_label: int
) -> Optional[str]:
    """What is wrong with one record's label map (its size, its values), or None."""
    path = record["sem_seg_file_name"]
    try:
        labels = label_ids(open_label_map(path, dataset_name), path)
        if "height" in record and "width" in record:
            height, width = record["height"], record["width"]
        else:  # Detectron2's load_sem_seg: evaluation's mapper takes the image's size
            height, width = read_rgb(record["file_name"], exif_orientation=False).shape[:2]
    except UserError as error:
        return str(error)
    if labels.ndim != 2:
        return f"{path} has {labels.shape[2]} channels; a label map has one"
    if labels.shape != (height, width):
        return f"{path} is {labels.shape[1]}x{labels.shape[0]}, its image {width}x{height}"
    wrong = unknown_label_ids(labels, num_classes, ignore_label)
    if wrong.size:
        return f"{path} holds {wrong[:5].tolist()}, not in 0..{num_classes - 1} or {ignore_label}"
    return None


def check_dataset(name: str) -> Tuple[str, List[str]]:
    """(what was checked, the problems found) of one registered dataset."""
    meta = sem_seg_metadata(name)
    records = ground_truth_records(name)
    official = next((s.official for s in BENCHMARK_SPLITS if s.name == name), None)
    expected = OFFICIAL_SPLITS[official]["images"] if official else len(records)
    problems = [] if len(records) == expected else [f"{len(records)} images, official {expected}"]
    num_classes = len(meta.stuff_classes)
    with ThreadPoolExecutor(4) as pool:
        found = pool.map(
            lambda r: label_map_problem(r, name, num_classes, meta.ignore_label), records
        )
        problems += [problem for problem in found if problem]
    checked = (
        f"{len(records)} images{' (the official count)' if official else ''}, label maps of "
        f"their images' sizes with values in 0..{num_classes - 1} or {meta.ignore_label}"
    )
    return checked, problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help="dataset names (default: the benchmarks found)")
    parser.add_argument("--root", default=None, help="dataset root (default: $DETECTRON2_DATASETS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = datasets_root(args.root)
    register_benchmark_datasets(root)
    register_sample_datasets(root)
    names = args.datasets or [
        split.name
        for split in BENCHMARK_SPLITS
        if any(
            os.path.isdir(os.path.join(root, g))
            for g in (split.gt_dir, *(g for _, g in split.alternatives))
        )
    ]
    if not names:
        logger.error("no prepared benchmark under %s (see datasets/README.md)", root)
    failed = not names
    for name in names:
        try:
            checked, problems = check_dataset(name)
        except UserError as error:
            checked, problems = "", [str(error)]
        failed |= bool(problems)
        if problems:
            more = f"; ... ({len(problems)} problems)" if len(problems) > SHOWN else ""
            logger.error("%s: FAILED: %s%s", name, "; ".join(problems[:SHOWN]), more)
        else:
            logger.info("%s: OK: %s", name, checked)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
