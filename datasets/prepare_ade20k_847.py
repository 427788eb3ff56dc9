"""ADE20K-847 val (the 2,000 validation images of the full ADE20K) for ADE847, exactly as
MaskFormer's script (which SAN and CAT-Seg use) makes it from the extracted ADE20K_2021_17_01.zip:

    ADE20K_2021_17_01/images_detectron2/validation/<name>.jpg        decoded and saved again as
        JPEG (Pillow's defaults), shorter side resized to 512 (bilinear) when it is longer
    ADE20K_2021_17_01/annotations_detectron2/validation/<name>.tif   16-bit: classes 0..846,
        everything else 65535

The classes are mapped by id: ``ade847_ids.json`` (next to this script) gives the ADE object
class (in a ``_seg.png``, R // 10 * 256 + G, a 1-based index into ``index_ade20k.pkl``'s
``objectnames``) of each ADE847 class; a release whose ``objectnames`` names those ids otherwise
stops the script. datasets/README.md, 'ADE20K-847', has the layout.

    python datasets/prepare_ade20k_847.py [--ade-full path/to/ADE20K_2021_17_01] [--root datasets]

(The index is a pickle: load only the official file.)
"""

import json
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from prepare_common import (
    Summary,
    argument_parser,
    benchmark_classes,
    parse_args,
    read_input,
    remap,
    require,
    run,
    write_atomic,
)

LAYOUT = Path("ADE20K_2021_17_01")
SOURCE = (
    "ADE20K_2021_17_01.zip from https://groups.csail.mit.edu/vision/datasets/ADE20K/ "
    "(free registration; extract it under the root)"
)
IDS_FILE = Path(__file__).resolve().with_name("ade847_ids.json")
MAX_SHORTER_SIDE = 512
VOID_16BIT = 65535
NUM_CLASSES = 847


def ade_id_to_class(objectnames: List[str], index_file: Path) -> Dict[int, int]:
    """ADE object class (1-based index into ``objectnames``) -> ADE847 class id, from
    ade847_ids.json (one distinct id per class, as a test checks); ValueError listing the ids
    whose name in ``objectnames`` disagrees."""
    with open(IDS_FILE, encoding="utf-8") as f:
        ade_ids = json.load(f)["ade_ids"]
    classes = benchmark_classes("ade847")
    disagree = [
        f"class {k} '{name}': id {ade_id} is "
        + (f"'{objectnames[ade_id - 1]}'" if ade_id <= len(objectnames) else "missing")
        for k, (name, ade_id) in enumerate(zip(classes, ade_ids))
        if ade_id > len(objectnames) or objectnames[ade_id - 1] != name
    ]
    if disagree:
        raise ValueError(
            f"{len(disagree)} ADE847 classes are named differently in {index_file}'s "
            "objectnames (another ADE20K release? this script needs "
            "ADE20K_2021_17_01): "
            f"{disagree[:5]}"
        )
    return {ade_id: class_id for class_id, ade_id in enumerate(ade_ids)}


def read_index(index_file: Path) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(objectnames, [(folder, filename) of each image]) of ``index_ade20k.pkl``."""
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    return list(index["objectnames"]), list(zip(index["folder"], index["filename"]))


def read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def decode_classes(seg_png: Path) -> np.ndarray:
    """(H, W) ADE object class per pixel from a ``_seg.png`` (R // 10 * 256 + G)."""
    with Image.open(seg_png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return rgb[:, :, 0] // 10 * 256 + rgb[:, :, 1]


def resized_shape(height: int, width: int) -> Optional[Tuple[int, int]]:
    """(height, width) with the shorter side at MAX_SHORTER_SIDE (MaskFormer's rounding), or
    None when it already fits."""
    if width >= height > MAX_SHORTER_SIDE:
        return MAX_SHORTER_SIDE, round(width / float(height) * MAX_SHORTER_SIDE)
    if height >= width > MAX_SHORTER_SIDE:
        return round(height / float(width) * MAX_SHORTER_SIDE), MAX_SHORTER_SIDE
    return None


def image_path(source: Path, folder: str, filename: str) -> Path:
    """The index's folders start with the release folder's name ('ADE20K_2021_17_01/images/...')."""
    parts = Path(folder).parts
    if parts and parts[0] == LAYOUT.name:
        parts = parts[1:]
    return source.joinpath(*parts, filename)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(
        "Prepare ADE20K-847 val for cliptrase_ade847_val.",
        {"--ade-full": "extracted ADE20K_2021_17_01 folder (default: <root>/ADE20K_2021_17_01)"},
    )
    args = parse_args(parser, argv)
    out = args.root / LAYOUT
    source = args.ade_full or out
    index_file = require(source / "index_ade20k.pkl", "ADE20K index", SOURCE)
    objectnames, files = read_input(index_file, "the ADE20K index", SOURCE, read_index)
    to_class = ade_id_to_class(objectnames, index_file)
    out_images = out / "images_detectron2/validation"
    out_labels = out / "annotations_detectron2/validation"

    val = [(folder, name) for folder, name in files if name.startswith("ADE_val_")]
    if not val:
        raise FileNotFoundError(
            f"{index_file} lists no validation images (ADE_val_*.jpg)\n  It comes from {SOURCE}."
        )
    summary = Summary("ADE20K-847 val", "ade847", len(val))
    for folder, filename in tqdm(val, desc=summary.name):
        stem = Path(filename).stem
        image_out, label_out = out_images / f"{stem}.jpg", out_labels / f"{stem}.tif"
        if image_out.exists() and label_out.exists():
            continue
        jpg = image_path(source, folder, filename)
        seg = jpg.with_name(f"{stem}_seg.png")
        if not (jpg.is_file() and seg.is_file()):
            missing = seg if jpg.is_file() else jpg
            summary.missing_file(missing, "ADE20K image or segmentation", SOURCE)
            continue
        classes = read_input(seg, "an ADE20K segmentation", SOURCE, decode_classes)
        labels = remap(classes, to_class, default=VOID_16BIT)
        pixels = read_input(jpg, "an ADE20K image", SOURCE, read_pixels)
        size = resized_shape(*pixels.shape[:2])
        if size is not None:
            height, width = size
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
            labels = cv2.resize(
                labels.astype(np.uint16), (width, height), interpolation=cv2.INTER_NEAREST
            )
        save_jpeg = lambda tmp: Image.fromarray(pixels).save(tmp, format="JPEG")  # noqa: E731
        summary.write(write_atomic(image_out, save_jpeg))
        summary.save(labels, label_out, VOID_16BIT)
    return summary.finish({out_labels: NUM_CLASSES}, "*.tif")


if __name__ == "__main__":
    run(main)
