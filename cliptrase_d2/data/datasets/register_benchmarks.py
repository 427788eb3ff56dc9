"""The ten evaluation benchmarks as Detectron2 datasets (``cliptrase_<benchmark>_val``), and the
one loader every CLIPtrase dataset uses.

A dataset is a folder of images and a folder of single-channel label maps with the same relative
names, as Detectron2's ``load_sem_seg`` pairs them, laid out as SAN, CAT-Seg and Mask2Former
users already have them under ``$DETECTRON2_DATASETS`` (default ``./datasets``);
``datasets/README.md`` gives the layouts and ``datasets/prepare_<family>.py`` creates them.
Label values are class indices in vocabulary order: classes 0..C-1, the background class C where
the vocabulary has background words, and ``ignore_label`` for void (255; 65535 in the 16-bit TIFFs
of PC459 and ADE847, whose class ids pass 255).

Each benchmark's split (the images its published numbers used, how many, and the file listing
them) and the datasets registered on it (folders, vocabulary, label format) are stated once, in
``cliptrase_d2/data/splits.json``, which the preparation scripts read too. Registration never
touches the disk: a dataset's folders are read when it is loaded.
"""

import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cliptrase_d2.compat  # noqa: F401  (must run before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ...errors import InputError, MissingFileError, UnknownNameError, UserError
from ...vocabulary import resolve_vocabulary

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
SHOWN = 5  # file names or ids quoted in one log line; the rest are counted

with open(os.path.join(os.path.dirname(__file__), "..", "splits.json"), encoding="utf-8") as _f:
    OFFICIAL_SPLITS: Dict[str, dict] = {k: v for k, v in json.load(_f).items() if k[0] != "_"}

_registered_names = set()  # every dataset name this package registered


def datasets_root(root: Optional[str] = None) -> str:
    """``root`` if given, else Detectron2's dataset root: ``$DETECTRON2_DATASETS``, else
    ``datasets`` (relative to the cwd). A leading ``~`` the shell left (quoted) is the home
    folder, as the prepare scripts and Detectron2 after 0.6 read it."""
    return os.path.expanduser(
        os.getenv("DETECTRON2_DATASETS", "datasets") if root is None else root
    )


@dataclass(frozen=True)
class SemSegSplit:
    """One dataset: where its images and label maps live, relative to a root folder, and the
    vocabulary it is segmented with.

    The label map ``<gt_dir>/<rel>/<id><gt_suffix>`` belongs to the image
    ``<image_dir>/<rel>/<id><image suffix>``; the suffixes carry the extension (and, for
    Cityscapes, the ``_leftImg8bit`` / ``_gtFine_labelTrainIds`` parts of the file names).
    """

    name: str  # DatasetCatalog name
    vocabulary: Union[str, Sequence[str]]  # benchmark key, class names, or a file of names
    image_dir: str
    gt_dir: str
    how_to_create: str = ""  # sentence telling how to create the folders, for error messages
    image_suffixes: Tuple[str, ...] = (".jpg",)
    gt_suffix: str = ".png"
    official: Optional[str] = None  # key of the benchmark's split in splits.json
    recursive: bool = False  # images in sub-folders (Cityscapes: one per city)
    ignore_label: int = IGNORE_LABEL
    paper_void_as_background: bool = False  # the paper protocol counts void as background (C)
    # (image_dir, gt_dir) of other projects' layouts holding the same label maps, tried in order
    # when image_dir or gt_dir is missing.
    alternatives: Tuple[Tuple[str, str], ...] = ()


def _created_by(script: str) -> str:
    return (
        f"Create it with `python datasets/{script}`, a script of the cliptrase-d2 repository "
        "(the installed package does not carry datasets/; see datasets/README.md there)."
    )


def _benchmark_splits() -> Tuple[SemSegSplit, ...]:
    """The datasets splits.json registers on each benchmark family's split (its ``labels``
    only documents the label values)."""
    splits = []
    for family, split in OFFICIAL_SPLITS.items():
        for name, fields in split["datasets"].items():
            fields = {key: value for key, value in fields.items() if key != "labels"}
            if "image_suffixes" in fields:
                fields["image_suffixes"] = tuple(fields["image_suffixes"])
            fields["alternatives"] = tuple(map(tuple, fields.get("alternatives", ())))
            how_to_create = _created_by(split["script"])
            splits.append(SemSegSplit(name, how_to_create=how_to_create, official=family, **fields))
    return tuple(splits)


BENCHMARK_SPLITS = _benchmark_splits()

# vocabulary key -> the dataset evaluated with it (the standard-layout split of each benchmark)
BENCHMARK_DATASETS: Dict[str, str] = {
    split.vocabulary: split.name
    for split in BENCHMARK_SPLITS
    if not split.name.endswith("_paper_val")
}


def _folders(split: SemSegSplit, root: str) -> Tuple[str, str, Optional[str]]:
    """(image folder, label-map folder, file listing the split's ids or None) under ``root``:
    the split's own layout, else the first alternative whose folders exist (one with images
    first: SAN's VOC script leaves an empty ``images_detectron2/val``); MissingFileError naming
    the folder and how to create it otherwise."""
    image_dir, gt_dir = os.path.join(root, split.image_dir), os.path.join(root, split.gt_dir)
    if os.path.isdir(image_dir) and os.path.isdir(gt_dir):
        listed = OFFICIAL_SPLITS.get(split.official, {}).get("list")
        listed = listed and os.path.join(root, listed)
        return image_dir, gt_dir, listed if listed and os.path.isfile(listed) else None
    alternatives = [(os.path.join(root, i), os.path.join(root, g)) for i, g in split.alternatives]
    present = [(i, g) for i, g in alternatives if os.path.isdir(i) and os.path.isdir(g)]
    if present:
        images, maps = next((pair for pair in present if os.listdir(pair[0])), present[0])
        logger.info("Dataset '%s': reading the label maps of %s", split.name, maps)
        return images, maps, None
    missing = image_dir if not os.path.isdir(image_dir) else gt_dir
    also = "".join(
        f" (or {os.path.join(root, g)} with {os.path.join(root, i)})" for i, g in split.alternatives
    )
    raise MissingFileError(
        f"Dataset '{split.name}': folder {missing} does not exist{also}. {split.how_to_create}"
    )


def _files(folder: str, suffixes: Sequence[str], recursive: bool):
    """({id: [paths with one of ``suffixes``]}, [other file names]) of the files in ``folder``
    (and its sub-folders when ``recursive``); an id is the path relative to ``folder`` without
    the suffix. Suffixes match exactly (``.JPG`` is not ``.jpg``); hidden files are others."""
    found, others = {}, []
    for current, subfolders, names in os.walk(folder):
        subfolders.sort()
        if not recursive:
            subfolders.clear()
        for name in sorted(names):
            suffix = next((s for s in suffixes if name.endswith(s)), None)
            if suffix is None or name.startswith("."):
                others.append(name)
                continue
            path = os.path.join(current, name)
            found.setdefault(os.path.relpath(path, folder)[: -len(suffix)], []).append(path)
    return found, others


def _image_size(split: SemSegSplit, path: str) -> Tuple[int, int]:
    """(width, height) from the image's header; InputError naming a file that is no image."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as error:
        reason = getattr(error, "strerror", None) or str(error).replace(f" {path!r}", "")
        raise InputError(
            f"Dataset '{split.name}': {path} cannot be read as an image ({reason}); replace or "
            "remove it"
        ) from None


def load_split(split: SemSegSplit, root: str) -> List[dict]:
    """Detectron2 dataset dicts of a split under ``root``, one per label map (of the ids the
    split's list names, where it has one): ``file_name``, ``sem_seg_file_name``, ``height``,
    ``width`` (from the image header), ``image_id`` (the image's file stem) and
    ``dataset_name``.

    Images and label maps are paired by name, never by position (Detectron2's ``load_sem_seg``
    pairs its two sorted lists when their lengths agree and drops unpaired files silently), so
    a label map without an image, or with two (``a.jpg`` and ``a.png``), is an error naming the
    files; what is passed over (images without a label map, label maps not in the list, other
    files) is counted in one log line, and a count that differs from the official split is a
    warning naming the ids the list has and the folder lacks."""
    image_dir, gt_dir, listed = _folders(split, root)
    maps, others = _files(gt_dir, (split.gt_suffix,), split.recursive)
    images, other_images = _files(image_dir, split.image_suffixes, split.recursive)
    others = sorted(others + other_images)
    ids = maps if listed is None else _read_ids(split, listed)
    records = []
    for image_id in (i for i in ids if i in maps):
        gt_path, image_paths = maps[image_id][0], images.get(image_id, [])
        if not image_paths:
            expected = os.path.join(image_dir, image_id + split.image_suffixes[0])
            raise MissingFileError(
                f"Dataset '{split.name}': label map {gt_path} has no image; expected {expected}. "
                f"{split.how_to_create}"
            )
        if len(image_paths) > 1:
            raise InputError(
                f"Dataset '{split.name}': label map {gt_path} has two images, "
                f"{' and '.join(image_paths)}: keep one of them"
            )
        width, height = _image_size(split, image_paths[0])
        records.append(
            {
                "file_name": image_paths[0],
                "sem_seg_file_name": gt_path,
                "height": height,
                "width": width,
                "image_id": os.path.splitext(os.path.basename(image_paths[0]))[0],
                # the model segments each record with its dataset's vocabulary
                "dataset_name": split.name,
            }
        )
    if not records:
        image_id, paths = next(iter(images.items()), (None, None))
        raise MissingFileError(
            f"Dataset '{split.name}': no label maps (*{split.gt_suffix}) in {gt_dir}"
            + (f" for the ids listed in {listed}" if listed else "")
            + (
                f"; image {paths[0]} has none, expected "
                f"{os.path.join(gt_dir, image_id + split.gt_suffix)}"
                if paths
                else ""
            )
            + f". {split.how_to_create}"
        )
    passed = [
        (len(images) - len(records), "other images"),
        (len(maps) - len(records), "label maps outside the split's list"),
        (len(others), f"other files ({', '.join(others[:SHOWN])})"),
    ]
    passed = ", ".join(f"{n} {what}" for n, what in passed if n)
    logger.info(
        "Loaded %d images of %s from %s%s",
        len(records),
        split.name,
        image_dir,
        f"; passed over: {passed}" if passed else "",
    )
    missing = [i for i in ids if i not in maps]
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        logger.warning(
            f"Dataset '{split.name}': {len(missing)} ids listed in {listed} have no label map in "
            f"{gt_dir} ({shown}); they are not evaluated"
        )
    official = OFFICIAL_SPLITS.get(split.official)
    if official and len(records) != official["images"]:
        logger.warning(
            f"Dataset '{split.name}': {len(records)} images, the official split has "
            f"{official['images']} ({official['what']}): results are not comparable with "
            "published numbers"
        )
    return records


def _read_ids(split: SemSegSplit, split_file: str) -> List[str]:
    """The ids of a split's list (a byte-order mark ignored); InputError naming it when it cannot
    be read as text or lists none."""
    try:
        with open(split_file, encoding="utf-8-sig") as f:
            ids, problem = [line.strip() for line in f if line.strip()], "lists no image ids"
    except (OSError, ValueError) as error:
        ids, problem = [], f"cannot be read as text ({error})"
    if not ids:
        raise InputError(
            f"Dataset '{split.name}': {split_file}, the list of the images to evaluate, {problem}; "
            "restore it from the dataset's download or prepare script (datasets/README.md)"
        )
    return ids


def split_metadata(split: SemSegSplit, root: str) -> dict:
    """MetadataCatalog entries of a split (see datasets/README.md, 'Metadata')."""
    vocabulary = resolve_vocabulary(split.vocabulary, paper_quirks=True)  # names as published
    return {
        # names as shown in results (stripped: ADE150's published 'bed ' is reported as 'bed')
        "stuff_classes": [name.strip() for name in vocabulary.class_names],
        "ignore_label": split.ignore_label,
        "evaluator_type": "sem_seg",
        "vocabulary": split.vocabulary,
        "background_words": list(vocabulary.background),
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
    DatasetCatalog.register(split.name, functools.partial(load_split, split, str(root)))
    MetadataCatalog.get(split.name).set(**split_metadata(split, str(root)))
    _registered_names.add(split.name)


def register_benchmark_datasets(root: Optional[str] = None) -> None:
    """Registers every benchmark split under ``root`` (default: :func:`datasets_root` now)."""
    root = datasets_root(root)
    for split in BENCHMARK_SPLITS:
        register_split(split, root)


def require_registered(name: str, files: bool = False):
    """The Metadata of a registered dataset; KeyError listing this package's datasets otherwise.
    ``files``: its file list is loaded too, so that a missing folder is named before any work
    (a run with several datasets would meet it only after evaluating the ones before)."""
    if name not in DatasetCatalog.list():
        ours = sorted(_registered_names & set(DatasetCatalog.list()))  # not those removed since
        raise UnknownNameError(
            f"Dataset '{name}' is not registered. CLIPtrase datasets: {', '.join(ours)} "
            "(Detectron2's own are in DatasetCatalog.list()). Import cliptrase_d2 before using "
            "them."
        )
    if files:
        try:
            records = DatasetCatalog.get(name)
        except UserError:  # this package's datasets name a missing folder and how to make it
            raise
        except FileNotFoundError as error:  # Detectron2's own datasets: a bare OSError
            raise MissingFileError(
                f"dataset '{name}': {error}: put its files there (Detectron2's "
                "datasets/README.md) or set $DETECTRON2_DATASETS to the folder holding them"
            ) from None
        if not records:  # Detectron2's loader: "Dataset 'x' is empty!"
            raise InputError(
                f"Dataset '{name}' lists no images: register it with its records (e.g. "
                "detectron2's load_sem_seg over its image and label-map folders)"
            )
    return MetadataCatalog.get(name)


register_benchmark_datasets()
