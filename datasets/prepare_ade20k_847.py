"""ADE20K-847 val (the 2,000 validation images of the full ADE20K) for ADE847.

Input: the extracted ADE20K_2021_17_01.zip: ``index_ade20k.pkl`` (lists ``folder``,
``filename`` and ``objectnames``) and ``images/ADE/validation/.../ADE_val_<n>.jpg`` with their
``_seg.png``, whose red and green channels encode the object class: R // 10 * 256 + G is the
1-based index into ``objectnames`` (0 unlabelled). Output, under the dataset root, in the
layout Mask2Former, SAN and CAT-Seg use (shorter side at most 512 pixels):

    ADE20K_2021_17_01/images_detectron2/validation/<name>.jpg       images with a shorter side above
                                                                    512 resized to 512 (bilinear), others copied
    ADE20K_2021_17_01/annotations_detectron2/validation/<name>.tif  16-bit: the 847 classes of
                                                                    vocabularies.json 0..846, everything else 65535

The 847 classes are found in ``objectnames`` by their full names (vocabularies.json keeps them
as the index spells them, e.g. 'building, edifice').

    python datasets/prepare_ade20k_847.py [--ade-full path/to/ADE20K_2021_17_01] [--root datasets]

(The index is a pickle: load only the official file.)
"""
import argparse
import logging
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from prepare_common import (add_root_argument, benchmark_classes, copy_file, remap, report, require, resolve_root,
                            run, save_label_tiff16, write_atomic)

logger = logging.getLogger("prepare")

LAYOUT = Path("ADE20K_2021_17_01")
SOURCE = ("ADE20K_2021_17_01.zip from https://groups.csail.mit.edu/vision/datasets/ADE20K/ "
          "(free registration; extract it under the root)")
MAX_SHORTER_SIDE = 512
VOID_16BIT = 65535


def ade_id_to_class(objectnames: List[str]) -> Dict[int, int]:
    """ADE object class (1-based index into ``objectnames``) -> ADE847 class id."""
    ids_by_name: Dict[str, List[int]] = {}
    for index, name in enumerate(objectnames):
        ids_by_name.setdefault(name, []).append(index + 1)
    classes = benchmark_classes("ade847")
    missing = [name for name in classes if name not in ids_by_name]
    if missing:
        raise ValueError(f"{len(missing)} ADE847 classes are not in index_ade20k.pkl's objectnames "
                         f"(another ADE20K release?): {missing[:10]}")
    mapping = {}
    for class_id, name in enumerate(classes):
        if len(ids_by_name[name]) > 1:
            logger.warning("'%s' names %d ADE objects %s; all of them become class %d",
                           name, len(ids_by_name[name]), ids_by_name[name], class_id)
        mapping.update({ade_id: class_id for ade_id in ids_by_name[name]})
    return mapping


def decode_classes(seg_png: Path) -> np.ndarray:
    """(H, W) ADE object class per pixel from a ``_seg.png`` (R // 10 * 256 + G)."""
    with Image.open(seg_png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return rgb[:, :, 0] // 10 * 256 + rgb[:, :, 1]


def resized_shape(height: int, width: int) -> Optional[Tuple[int, int]]:
    """(height, width) with the shorter side at MAX_SHORTER_SIDE, or None when it already fits."""
    shorter = min(height, width)
    if shorter <= MAX_SHORTER_SIDE:
        return None
    scale = MAX_SHORTER_SIDE / shorter
    if height <= width:
        return MAX_SHORTER_SIDE, round(width * scale)
    return round(height * scale), MAX_SHORTER_SIDE


def image_path(source: Path, folder: str, filename: str) -> Path:
    """The index's folders start with the release folder's name ('ADE20K_2021_17_01/images/...')."""
    parts = Path(folder).parts
    if parts and parts[0] == LAYOUT.name:
        parts = parts[1:]
    return source.joinpath(*parts, filename)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare ADE20K-847 val for cliptrase_ade847_val.")
    parser.add_argument("--ade-full", type=Path, default=None,
                        help="extracted ADE20K_2021_17_01 folder (default: <root>/ADE20K_2021_17_01)")
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / LAYOUT
    source = args.ade_full or out
    index_file = require(source / "index_ade20k.pkl", "ADE20K index", SOURCE)
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    to_class = ade_id_to_class(list(index["objectnames"]))
    out_images = out / "images_detectron2/validation"
    out_labels = out / "annotations_detectron2/validation"

    val = [(folder, name) for folder, name in zip(index["folder"], index["filename"]) if name.startswith("ADE_val_")]
    if not val:
        raise FileNotFoundError(f"{index_file} lists no validation images (ADE_val_*.jpg)\n  It comes from {SOURCE}.")
    written = 0
    for folder, filename in tqdm(val, desc="ADE20K-847 val"):
        stem = Path(filename).stem
        image_out, label_out = out_images / f"{stem}.jpg", out_labels / f"{stem}.tif"
        if image_out.exists() and label_out.exists():
            continue
        jpg = require(image_path(source, folder, filename), "ADE20K image", SOURCE)
        classes = decode_classes(require(jpg.with_name(f"{stem}_seg.png"), "ADE20K segmentation", SOURCE))
        labels = remap(classes, to_class, default=VOID_16BIT)
        size = resized_shape(*labels.shape)
        if size is None:
            written += copy_file(jpg, image_out)
        else:
            height, width = size
            with Image.open(jpg) as image:
                rgb = np.asarray(image.convert("RGB"))
            resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
            written += write_atomic(image_out, lambda tmp: Image.fromarray(resized).save(tmp, format="JPEG"))
            labels = cv2.resize(labels.astype(np.uint16), (width, height), interpolation=cv2.INTER_NEAREST)
        written += save_label_tiff16(labels, label_out)
    report("ADE20K-847 val", written, [out_images, out_labels])
    return written


if __name__ == "__main__":
    run(main)
