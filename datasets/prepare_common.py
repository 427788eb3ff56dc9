"""What every ``datasets/prepare_<family>.py`` script shares: the arguments and the dataset root,
clear errors for missing inputs, atomic writes that make the scripts idempotent, the walk over
image / label-map pairs, and the summary each script ends with.

A script writes each output to a hidden temporary name in the output folder and renames it into
place (``os.replace``) only once it is complete, so an interrupted run never leaves a file that
looks done; a second run skips every output that already exists.

A missing input folder stops a script with a message naming it and where it comes from; a single
missing file is reported as a warning, skipped, and counted in the summary.

The scripts need only NumPy, Pillow and tqdm (plus SciPy / OpenCV / pycocotools for PASCAL
Context and ADE20K-847): they read the package's vocabularies.json and splits.json from the
repository but do not import cliptrase_d2 (which would bring Detectron2 and torch), hence their
own small atomic writer.
"""

import argparse
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import (
    Callable,
    Collection,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import numpy as np
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger("prepare")

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "cliptrase_d2" / "data"
VOCABULARIES_JSON = PACKAGE_DATA / "vocabularies.json"
# Each benchmark family's validation split: its image count ('images'), the file listing its ids
# ('list', relative to the root) and what it is ('what'); the dataset registration reads it too.
SPLITS = json.loads((PACKAGE_DATA / "splits.json").read_text(encoding="utf-8"))


def add_paths(parser, paths: Mapping[str, str]) -> None:
    """Adds each option of ``paths`` (option -> help) as a path that defaults to None; a leading
    ``~`` the shell left (quoted, or ``--root=~/...``) is the home folder, not a folder named ~."""
    for option, help in paths.items():
        parser.add_argument(option, type=lambda text: Path(text).expanduser(), help=help)


def argument_parser(
    description: str, paths: Optional[Mapping[str, str]] = None
) -> argparse.ArgumentParser:
    """A script's parser: ``--root`` and the input folders ``paths`` (see ``add_paths``)."""
    parser = argparse.ArgumentParser(description=description)
    root_help = (
        "dataset root the layout is written under (default: $DETECTRON2_DATASETS, else ./datasets)"
    )
    add_paths(parser, {"--root": root_help, **(paths or {})})
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """The parsed arguments, ``root`` resolved (``--root``, else ``$DETECTRON2_DATASETS``, else
    ``./datasets``, as Detectron2 and the dataset registration use) and checked before any work:
    NotADirectoryError / PermissionError naming it when it is a file, lies under a file, or cannot
    be written (nor created in its nearest existing parent)."""
    args = parser.parse_args(argv)
    root = os.getenv("DETECTRON2_DATASETS", "datasets") if args.root is None else args.root
    args.root = Path(root).expanduser()
    what = f"dataset root (--root or $DETECTRON2_DATASETS) {args.root}"
    existing = args.root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(
            f"{what}: {existing} is a file, not a folder; give a folder to write into"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what} is not writable ({existing} denies writing); give a folder you can write to"
        )
    return args


def require(path: Path, what: str, source: str, folder: bool = False) -> Path:
    """``path`` if it exists (and is a folder when ``folder``); FileNotFoundError naming it and
    where it comes from otherwise, NotADirectoryError when a file stands where a folder goes."""
    if not path.exists():
        a_file = next((p for p in path.parents if p.is_file()), None)
        if a_file is not None:  # e.g. the downloaded archive given instead of its folder
            raise NotADirectoryError(
                f"{what} not found: {path}: {a_file} is a file, not a folder; extract it and "
                f"give the extracted folder (it comes from {source}; see datasets/README.md)"
            )
        raise FileNotFoundError(
            f"{what} not found: {path}\n  It comes from {source}. See datasets/README.md."
        )
    if folder and not path.is_dir():
        raise NotADirectoryError(
            f"{what} {path} is a file, not a folder: give the extracted folder (it comes from "
            f"{source}; see datasets/README.md)"
        )
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file (it comes from {source})")
    return path


def require_images(folder: Path, pattern: str, source: str) -> List[Path]:
    """The files matching ``pattern`` under ``folder``, sorted; FileNotFoundError when there are
    none."""
    images = sorted(folder.glob(pattern))
    if not images:
        raise FileNotFoundError(f"no {pattern} images in {folder}\n  They come from {source}.")
    return images


def read_input(path: Path, what: str, source: str, read: Callable, faults=()):
    """``read(path)``; ValueError naming the file, what it should be and where it comes from when
    it is not that (another format, truncated, entries missing: a parser's own message names no
    file). ``faults``: a parser's own exception types, beside INPUT_FAULTS and missing entries."""
    try:
        return read(path)
    except (*INPUT_FAULTS, SyntaxError, KeyError, TypeError, *faults) as error:
        reason = f"no entry {error}" if isinstance(error, KeyError) else str(error)
        reason = reason.replace(f" '{path}'", "")  # PIL's messages name it
        raise ValueError(
            f"{path} cannot be read as {what} ({reason or type(error).__name__}); replace it "
            f"with the file from {source}"
        ) from None


def _text_lines(path: Path) -> List[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not an id


def read_ids(split_file: Path) -> List[str]:
    """Image ids of a split file, one a line (a byte-order mark ignored); ValueError naming it
    when it lists none."""
    source = "the dataset's archive or prepare script (see datasets/README.md)"
    lines = read_input(split_file, "a list of image ids", source, _text_lines)
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise ValueError(f"{split_file} lists no image ids; replace it with the file from {source}")
    return ids


def benchmark_classes(key: str) -> List[str]:
    """Class names of a benchmark in vocabularies.json order (the label ids the scripts write)."""
    with open(VOCABULARIES_JSON, encoding="utf-8") as f:
        return list(json.load(f)["benchmarks"][key]["classes"])


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def write_atomic(path: Path, write: Callable[[Path], None]) -> bool:
    """Calls ``write(temporary_path)`` and renames the result to ``path``; skips (returns False)
    when ``path`` already exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return True


def save_labels(labels: np.ndarray, path: Path) -> bool:
    """Writes an (H, W) label map: an 8-bit grayscale PNG (values 0..255) for a ``.png`` path, a
    16-bit TIFF (0..65535, for more than 255 classes) for a ``.tif`` one."""
    bits = 16 if path.suffix == ".tif" else 8
    if labels.min() < 0 or labels.max() >= 2**bits:
        raise ValueError(
            f"label values {labels.min()}..{labels.max()} do not fit {bits} bits ({path})"
        )
    image = Image.fromarray(labels.astype(np.uint16 if bits == 16 else np.uint8))
    return write_atomic(path, lambda tmp: image.save(tmp, format="TIFF" if bits == 16 else "PNG"))


def copy_file(source: Path, destination: Path) -> bool:
    """Copies a file unchanged (images, split lists) unless the destination exists."""
    return write_atomic(destination, lambda tmp: shutil.copyfile(source, tmp))


def read_label_png(path: Path, values: Optional[Collection[int]] = None) -> np.ndarray:
    """(H, W) int64 values of a single-channel (palette or grayscale) label PNG (read it through
    ``read_input``, whose error names the file); ValueError when it holds values outside
    ``values`` (when given), which the remapping would silently turn into void."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(
                f"a {image.mode} image; expected a single-channel label map (palette or "
                "grayscale PNG)"
            )
        labels = np.asarray(image, dtype=np.int64)
    wrong = np.setdiff1d(labels, list(values)) if values is not None else []
    if len(wrong):
        raise ValueError(f"it holds {wrong[:5].tolist()}, values such a map does not hold")
    return labels


def remap(labels: np.ndarray, mapping: Mapping[int, int], default: int) -> np.ndarray:
    """Replaces each value by ``mapping[value]``; values not in ``mapping`` become ``default``."""
    size = max(int(labels.max()), max(mapping)) + 1
    table = np.full(size, default, dtype=np.int64)
    table[list(mapping)] = list(mapping.values())
    return table[labels]


class Pair(NamedTuple):
    """One input image and its label map, and what a script makes of them: the copy of the image
    in the layout (None: it is in the layout already) and each output label map with the function
    that converts the input labels into it and the output's void value."""

    image: Path
    labels: Path
    image_copy: Optional[Path]
    outputs: Mapping[Path, Tuple[Callable[[np.ndarray], np.ndarray], int]]


def jpg_png_pairs(
    images_dir: Path,
    labels_dir: Path,
    copy_dir: Optional[Path],
    outputs: Mapping[Path, Tuple[Callable[[np.ndarray], np.ndarray], int]],
    source: str,
) -> List[Pair]:
    """A Pair for each ``*.jpg`` of ``images_dir`` (see ``require_images``): its label map
    ``<stem>.png`` in ``labels_dir``, its copy in ``copy_dir`` (None: not copied) and its
    ``<stem>.png`` in each folder of ``outputs`` (folder -> conversion and void value)."""
    return [
        Pair(
            image,
            labels_dir / f"{image.stem}.png",
            copy_dir / image.name if copy_dir else None,
            {folder / f"{image.stem}.png": convert for folder, convert in outputs.items()},
        )
        for image in require_images(images_dir, "*.jpg", source)
    ]


def convert_pairs(
    summary: "Summary",
    pairs: Sequence[Pair],
    what: str,
    source: str,
    image_what: str = "image",
    read: Callable[[Path], np.ndarray] = read_label_png,
) -> None:
    """Copies each image that is to be copied and, for each label map whose outputs are not all
    there yet, reads it (``read``) and writes its outputs. A missing
    input image (``image_what``) or label map (``what``) is a warning naming it and ``source``, and
    skipped: the label maps of a missing image are not written (the dataset could not load them).
    When none of the label maps is there, the folder is the wrong one: FileNotFoundError."""
    if pairs and not any(pair.labels.is_file() for pair in pairs):  # e.g. the archive's top
        raise FileNotFoundError(
            f"none of the {len(pairs)} {what}s is in {pairs[0].labels.parent} (e.g. "
            f"{pairs[0].labels.name}): give the folder that holds them (it comes from {source}; "
            "see datasets/README.md)"
        )
    for image, labels_file, image_copy, outputs in tqdm(pairs, desc=summary.name):
        if image_copy is not None and image.is_file():
            summary.write(copy_file(image, image_copy))
        if not (image_copy or image).is_file():
            summary.missing_file(image, image_what, source)
            continue
        if all(path.exists() for path in outputs):
            continue
        if not labels_file.is_file():
            summary.missing_file(labels_file, what, source)
            continue
        labels = read_input(labels_file, what, source, read)
        for path, (convert, void) in outputs.items():
            summary.save(convert(labels), path, void)


MISSING_SHOWN = 5  # missing files named one by one in the log; the rest are only counted


class Summary:
    """Counts what a run did and logs it at the end: files written, label maps per output
    folder, the classes seen in the maps written now, missing inputs, and the number of
    validation images against the official count (a warning when they differ)."""

    def __init__(self, name: str, split: str, images: int):
        self.name, self.split, self.images = name, split, images
        self.expected = SPLITS[split]["images"]
        self.written = 0
        self.missing: List[Path] = []
        self.classes: Dict[Path, Set[int]] = {}

    def write(self, written: bool) -> None:
        self.written += int(written)

    def save(self, labels: np.ndarray, path: Path, void: int) -> None:
        """Saves a label map (see ``save_labels``) and notes its classes."""
        if save_labels(labels, path):
            self.written += 1
            values = np.unique(labels)
            self.classes.setdefault(path.parent, set()).update(int(v) for v in values if v != void)

    def missing_file(self, path: Path, what: str, source: str) -> None:
        """Warns about one missing input file (the first few by name) and counts it."""
        self.missing.append(path)
        if len(self.missing) <= MISSING_SHOWN:
            logger.warning(
                "warning: %s not found: %s (it comes from %s); skipped", what, path, source
            )

    def finish(self, outputs: Mapping[Path, int], pattern: str = "*") -> int:
        """Logs the summary; ``outputs`` maps each output folder to its number of classes.
        Returns the number of files written."""
        if self.missing:
            logger.warning(
                "warning: %d input files were missing (%s%s); their outputs were not "
                "written: put those files in place and run the script again (it writes only "
                "what is missing).",
                len(self.missing),
                ", ".join(str(p) for p in self.missing[:MISSING_SHOWN]),
                ", ..." if len(self.missing) > MISSING_SHOWN else "",
            )
        if self.images != self.expected:
            logger.warning(
                "warning: %s: %d validation images, the official split has %d (%s); "
                "results will not be comparable with published numbers (is every archive "
                "fully extracted, and the release the one named in datasets/README.md?).",
                self.name,
                self.images,
                self.expected,
                SPLITS[self.split]["what"],
            )
        logger.info(
            "%s: %d files written, %d validation images", self.name, self.written, self.images
        )
        for folder, num_classes in outputs.items():
            maps = len([p for p in folder.glob(pattern) if not p.name.startswith(".")])
            # the classes of the maps written now into the folder (or its sub-folders)
            seen = [c for f, c in self.classes.items() if f == folder or folder in f.parents]
            classes = (
                f"; classes seen in the maps written now: {len(set().union(*seen))} of "
                f"{num_classes}"
                if seen
                else ""
            )
            logger.info("  %s: %d label maps%s", folder, maps, classes)
            if maps != self.images:
                logger.warning(
                    "warning: %s holds %d label maps for %d validation images (fewer: the "
                    "missing inputs above; more: maps of other images, which loading passes "
                    "over)",
                    folder,
                    maps,
                    self.images,
                )
        return self.written


# Input or environment faults a script reports in one line: a missing, unreadable or unwritable
# path, a file where a folder goes, a full disk, an archive or index that is not what it should be.
INPUT_FAULTS = (
    OSError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
    tarfile.TarError,
    subprocess.CalledProcessError,
)


def fault_message(error: BaseException) -> str:
    """One line for an input fault: the script's own message, or the system's with the path."""
    if isinstance(error, subprocess.CalledProcessError):
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else ""
        return f"{' '.join(map(str, error.cmd))} failed: {stderr.strip()[-300:] or error}"
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        hint = {
            "PermissionError": "give a path you can read, and an output root you can write",
            "NotADirectoryError": "a file stands where a folder is expected",
            "IsADirectoryError": "a folder stands where a file is expected",
        }.get(type(error).__name__, "check the path and the free disk space")
        return f"{error.strerror}: {error.filename} ({hint})"
    return str(error) or type(error).__name__


def run(main: Callable[[Optional[List[str]]], int]) -> None:
    """Runs a script's ``main`` with logging to stderr; a missing, unreadable or unwritable path,
    a file where a folder goes, or an input that does not match what the script expects exits
    with one message (no traceback). Anything else is a bug and keeps its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main(None)
    except INPUT_FAULTS as error:
        sys.exit(f"error: {fault_message(error)}")
