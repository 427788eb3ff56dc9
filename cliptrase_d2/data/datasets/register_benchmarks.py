"""The ten evaluation benchmarks as Detectron2 datasets (``cliptrase_<benchmark>_val``).

Each split is a folder of images and a folder of single-channel label maps laid out as SAN,
CAT-Seg and Mask2Former users already have them under ``$DETECTRON2_DATASETS`` (default
``./datasets``); ``datasets/README.md`` gives the layouts and ``datasets/prepare_<family>.py``
creates them from the official archives. Label values are class indices in vocabularies.json
order: classes 0..C-1, the background class C where the benchmark has background words, and
``ignore_label`` for void (255; 65535 in the 16-bit TIFFs of PC459 and ADE847, whose class ids
pass 255).

Registration runs at import time and never touches the disk: a split's folders are only looked
at when its dataset is loaded, and a missing folder or ground-truth file then raises
FileNotFoundError naming the path and the script that creates it. When a split's own folders are
missing, the folders SAN's, CAT-Seg's or the CLIPtrase authors' scripts make with the same content
are used instead (``SemSegSplit.alternatives``; datasets/README.md, "Folders you already have").
"""

import functools
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cliptrase_d2.compat  # noqa: F401  (must run before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from cliptrase_d2.vocabulary import load_vocabularies
from ...errors import MissingFileError, UnknownNameError

__all__ = [
    "BENCHMARK_DATASETS",
    "BENCHMARK_SPLITS",
    "SemSegSplit",
    "datasets_root",
    "load_sem_seg_split",
    "register_benchmark_datasets",
    "register_split",
    "require_registered",
    "split_metadata",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
IGNORE_LABEL_16BIT = 65535  # void in the 16-bit label maps of benchmarks with more than 255 classes

_registered_names = set()  # every dataset name this package registered


def datasets_root() -> str:
    """Detectron2's dataset root: ``$DETECTRON2_DATASETS``, else ``datasets`` (relative to the
    cwd)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


@dataclass(frozen=True)
class SemSegSplit:
    """Where one split's images and label maps live, relative to a root folder.

    An image ``<image_dir>/<rel>/<stem><image suffix>`` has its labels in
    ``<gt_dir>/<rel>/<stem><gt_suffix>``; the suffixes carry the extension (and, for Cityscapes,
    the ``_leftImg8bit`` / ``_gtFine_labelTrainIds`` parts of the file names).
    """

    name: str  # DatasetCatalog name
    vocabulary: str  # benchmark key in vocabularies.json
    image_dir: str
    gt_dir: str
    how_to_create: str  # sentence telling how to create the folders, for error messages
    image_suffixes: Tuple[str, ...] = (".jpg",)
    gt_suffix: str = ".png"
    split_file: Optional[str] = None  # image ids, one a line; None: every image under image_dir
    recursive: bool = False  # images in sub-folders (Cityscapes: one per city)
    ignore_label: int = IGNORE_LABEL
    paper_void_as_background: bool = False  # SPEC section 9: paper protocol counts void as class C
    # (image_dir, gt_dir) of other projects' layouts holding the same label maps, tried in order
    # when image_dir or gt_dir is missing; their images are those that have a label map.
    alternatives: Tuple[Tuple[str, str], ...] = ()


def _created_by(script: str) -> str:
    return f"Create it with `python datasets/{script}` (see datasets/README.md)."


def _benchmark(name, vocabulary, image_dir, gt_dir, script, **options) -> SemSegSplit:
    return SemSegSplit(name, vocabulary, image_dir, gt_dir, _created_by(script), **options)


_VOC = "VOCdevkit/VOC2012"
_CONTEXT = "VOCdevkit/VOC2010"
_16BIT_TIFF = dict(gt_suffix=".tif", ignore_label=IGNORE_LABEL_16BIT)

BENCHMARK_SPLITS: Tuple[SemSegSplit, ...] = (
    # VOC20: classes 0..19; background and void both 255 (the authors' layout).
    # Also read from the CLIPtrase authors' and SAN's VOC2012/ folders.
    _benchmark(
        "cliptrase_voc20_val",
        "voc20",
        f"{_VOC}/JPEGImages",
        f"{_VOC}/annotations_detectron2/val",
        "prepare_voc.py",
        split_file=f"{_VOC}/ImageSets/Segmentation/val.txt",
        alternatives=(
            ("VOC2012/images_detectron2/val", "VOC2012/annotations_detectron2/val"),
            ("VOC2012/JPEGImages", "VOC2012/annotations_detectron2/val"),
        ),
    ),
    # VOC21: background is class 20, void stays 255.
    _benchmark(
        "cliptrase_voc21_val",
        "voc21",
        f"{_VOC}/JPEGImages",
        f"{_VOC}/annotations_detectron2_bg/val",
        "prepare_voc.py",
        split_file=f"{_VOC}/ImageSets/Segmentation/val.txt",
        paper_void_as_background=True,
    ),
    # PASCAL Context: 59 classes with background 255, 60 with background 59, 459 as 16-bit TIFF
    # (PC59 and PC459 also from SAN's and the CLIPtrase authors' pcontext/ and pcontext_full/).
    _benchmark(
        "cliptrase_pc59_val",
        "pc59",
        f"{_CONTEXT}/JPEGImages",
        f"{_CONTEXT}/annotations_detectron2/pc59_val",
        "prepare_pascal_context.py",
        split_file=f"{_CONTEXT}/ImageSets/Main/val.txt",
        alternatives=(("pcontext/val/image", "pcontext/val/label"),),
    ),
    _benchmark(
        "cliptrase_pc60_val",
        "pc60",
        f"{_CONTEXT}/JPEGImages",
        f"{_CONTEXT}/annotations_detectron2/pc60_val",
        "prepare_pascal_context.py",
        split_file=f"{_CONTEXT}/ImageSets/Main/val.txt",
        paper_void_as_background=True,
    ),
    _benchmark(
        "cliptrase_pc459_val",
        "pc459",
        f"{_CONTEXT}/JPEGImages",
        f"{_CONTEXT}/annotations_detectron2/pc459_val",
        "prepare_pascal_context.py",
        split_file=f"{_CONTEXT}/ImageSets/Main/val.txt",
        alternatives=(("pcontext_full/val/image", "pcontext_full/val/label"),),
        **_16BIT_TIFF,
    ),
    # COCO: 171 stuff+thing classes (also from CAT-Seg's coco-stuff/); COCO-Object maps every
    # stuff and unlabelled pixel to background 80.
    _benchmark(
        "cliptrase_coco_stuff171_val",
        "coco_stuff171",
        "coco/val2017",
        "coco/stuffthingmaps_detectron2/val2017",
        "prepare_coco_stuff.py",
        alternatives=(("coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017"),),
    ),
    _benchmark(
        "cliptrase_coco_object80_val",
        "coco_object80",
        "coco/val2017",
        "coco/objectmaps_detectron2/val2017",
        "prepare_coco_stuff.py",
        paper_void_as_background=True,
    ),
    # The paper's COCO-Object quirk, baked into the labels: stuff class 80 ('banner') and void are
    # background
    # (80), stuff ids 81-170 are dropped (255). Only meaningful under the paper protocol.
    _benchmark(
        "cliptrase_coco_object80_paper_val",
        "coco_object80",
        "coco/val2017",
        "coco/objectmaps_paper_detectron2/val2017",
        "prepare_coco_stuff.py",
    ),
    _benchmark(
        "cliptrase_ade150_val",
        "ade150",
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation",
        "prepare_ade20k_150.py",
    ),
    _benchmark(
        "cliptrase_ade847_val",
        "ade847",
        "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation",
        "prepare_ade20k_847.py",
        **_16BIT_TIFF,
    ),
    _benchmark(
        "cliptrase_cityscapes19_val",
        "cityscapes19",
        "cityscapes/leftImg8bit/val",
        "cityscapes/gtFine/val",
        "prepare_cityscapes.py",
        image_suffixes=("_leftImg8bit.png",),
        gt_suffix="_gtFine_labelTrainIds.png",
        recursive=True,
    ),
)

# vocabulary key -> the dataset evaluated with it (the standard-layout split of each benchmark)
BENCHMARK_DATASETS: Dict[str, str] = {
    split.vocabulary: split.name
    for split in BENCHMARK_SPLITS
    if not split.name.endswith("_paper_val")
}


def _image_files(split: SemSegSplit, image_dir: str) -> List[Tuple[str, str]]:
    """(image path, path relative to image_dir without its suffix) of every image in image_dir."""
    found = []
    for folder, subfolders, files in os.walk(image_dir):
        subfolders.sort()
        if not split.recursive:
            subfolders.clear()
        for file_name in sorted(files):
            suffix = next((s for s in split.image_suffixes if file_name.endswith(s)), None)
            if suffix is None or file_name.startswith("."):
                continue
            path = os.path.join(folder, file_name)
            found.append((path, os.path.relpath(path, image_dir)[: -len(suffix)]))
    return found


def _listed_image_files(
    split: SemSegSplit, image_dir: str, split_file: str
) -> List[Tuple[str, str]]:
    """(image path, image id) of every image listed in the split file."""
    with open(split_file) as f:
        image_ids = [line.strip() for line in f if line.strip()]
    found = []
    for image_id in image_ids:
        candidates = [os.path.join(image_dir, image_id + suffix) for suffix in split.image_suffixes]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise MissingFileError(
                f"Dataset '{split.name}': image {candidates[0]} (listed in {split_file}) does not "
                "exist. "
                f"{split.how_to_create}"
            )
        found.append((path, image_id))
    return found


def _labelled_image_files(split: SemSegSplit, image_dir: str, gt_dir: str) -> List[Tuple[str, str]]:
    """(image path, image id) of every label map in gt_dir (another project's layout)."""
    found = []
    for file_name in sorted(os.listdir(gt_dir)):
        if not file_name.endswith(split.gt_suffix) or file_name.startswith("."):
            continue
        stem = file_name[: -len(split.gt_suffix)]
        candidates = [os.path.join(image_dir, stem + suffix) for suffix in split.image_suffixes]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise MissingFileError(
                f"Dataset '{split.name}': label map {os.path.join(gt_dir, file_name)} has no "
                f"image; "
                f"expected {candidates[0]}. {split.how_to_create}"
            )
        found.append((path, stem))
    return found


def _alternative_layout(split: SemSegSplit, root: str) -> Optional[Tuple[str, str]]:
    """The first of ``split.alternatives`` whose two folders exist under ``root``, else None."""
    for image_dir, gt_dir in split.alternatives:
        folders = (os.path.join(root, image_dir), os.path.join(root, gt_dir))
        if all(os.path.isdir(folder) for folder in folders):
            return folders
    return None


def load_sem_seg_split(split: SemSegSplit, root: str) -> List[dict]:
    """Detectron2 dataset dicts of a split under ``root``: ``file_name``, ``sem_seg_file_name``,
    ``height``, ``width`` (read from the image header), ``image_id`` (the image's file stem) and
    ``dataset_name`` (``split.name``)."""
    image_dir = os.path.join(root, split.image_dir)
    gt_dir = os.path.join(root, split.gt_dir)
    alternative = None
    if not (os.path.isdir(image_dir) and os.path.isdir(gt_dir)):
        alternative = _alternative_layout(split, root)
    if alternative is not None:
        image_dir, gt_dir = alternative
        logger.info(
            "Dataset '%s': %s not found; reading the same label maps from %s",
            split.name,
            os.path.join(root, split.gt_dir),
            gt_dir,
        )
        images = _labelled_image_files(split, image_dir, gt_dir)
        return _dataset_dicts(split, images, image_dir, gt_dir)
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            also = "".join(
                f" (or {os.path.join(root, g)} with {os.path.join(root, i)})"
                for i, g in split.alternatives
            )
            raise MissingFileError(
                f"Dataset '{split.name}': folder {folder} does not exist{also}. "
                f"{split.how_to_create}"
            )
    if split.split_file is not None:
        split_file = os.path.join(root, split.split_file)
        if not os.path.isfile(split_file):
            raise MissingFileError(
                f"Dataset '{split.name}': split file {split_file} does not exist. "
                f"{split.how_to_create}"
            )
        images = _listed_image_files(split, image_dir, split_file)
    else:
        images = _image_files(split, image_dir)
    return _dataset_dicts(split, images, image_dir, gt_dir)


def _dataset_dicts(
    split: SemSegSplit, images: List[Tuple[str, str]], image_dir: str, gt_dir: str
) -> List[dict]:
    if not images:
        raise MissingFileError(
            f"Dataset '{split.name}': no images ({', '.join(split.image_suffixes)}) in "
            f"{image_dir}. "
            f"{split.how_to_create}"
        )
    dataset_dicts = []
    for image_path, relative_stem in images:
        gt_path = os.path.join(gt_dir, relative_stem + split.gt_suffix)
        if not os.path.isfile(gt_path):
            raise MissingFileError(
                f"Dataset '{split.name}': image {image_path} has no ground truth; expected "
                f"{gt_path}. "
                f"{split.how_to_create}"
            )
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
        dataset_dicts.append(
            {
                "file_name": image_path,
                "sem_seg_file_name": gt_path,
                "height": height,
                "width": width,
                "image_id": os.path.splitext(os.path.basename(image_path))[0],
                # the model segments each record with its dataset's vocabulary
                "dataset_name": split.name,
            }
        )
    logger.info("Loaded %d images of %s from %s", len(dataset_dicts), split.name, image_dir)
    return dataset_dicts


def split_metadata(split: SemSegSplit, root: str) -> dict:
    """MetadataCatalog entries of a split (see datasets/README.md, 'Metadata')."""
    benchmark = load_vocabularies()["benchmarks"][split.vocabulary]
    background_words = list(benchmark.get("background", []))
    # Names as shown in results (stripped: ADE150's published 'bed ' is reported as 'bed').
    stuff_classes = [name.strip() for name in benchmark["classes"]] + (
        ["background"] if background_words else []
    )
    return {
        "stuff_classes": stuff_classes,
        "ignore_label": split.ignore_label,
        "evaluator_type": "sem_seg",
        "vocabulary": split.vocabulary,
        "background_words": background_words,
        "image_root": os.path.join(root, split.image_dir),
        "sem_seg_root": os.path.join(root, split.gt_dir),
        "paper_void_as_background": split.paper_void_as_background,
    }


def register_split(split: SemSegSplit, root: str) -> None:
    """Registers (or re-registers, replacing the previous root) one split under ``root``."""
    if split.name in DatasetCatalog.list():
        DatasetCatalog.remove(split.name)
    if split.name in MetadataCatalog.list():
        MetadataCatalog.remove(split.name)
    DatasetCatalog.register(split.name, functools.partial(load_sem_seg_split, split, root))
    MetadataCatalog.get(split.name).set(**split_metadata(split, root))
    _registered_names.add(split.name)


def register_benchmark_datasets(root: Optional[str] = None) -> None:
    """Registers every benchmark split under ``root`` (default: :func:`datasets_root` now)."""
    root = datasets_root() if root is None else str(root)
    for split in BENCHMARK_SPLITS:
        register_split(split, root)


def require_registered(name: str):
    """The Metadata of a registered dataset; KeyError listing this package's datasets otherwise."""
    if name not in DatasetCatalog.list():
        raise UnknownNameError(
            f"Dataset '{name}' is not registered. CLIPtrase datasets: "
            f"{', '.join(sorted(_registered_names))} "
            "(Detectron2's own are in DatasetCatalog.list()). Import cliptrase_d2 before using "
            "them."
        )
    return MetadataCatalog.get(name)


register_benchmark_datasets()
