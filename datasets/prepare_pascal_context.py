"""PASCAL Context val (the 5,105 images of VOC2010's ImageSets/Main/val.txt) for PC59, PC60 and PC459.

Inputs: the extracted VOCtrainval_03-May-2010.tar (``VOCdevkit/VOC2010`` with JPEGImages/ and
ImageSets/Main/val.txt) and PASCAL Context's trainval.tar.gz (``trainval/<id>.mat``, each with
a ``LabelMap`` of the 459 classes numbered 1..459 in labels.txt order). Output, under the
dataset root:

    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif  16-bit: classes 0..458 (void 65535)
    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<id>.png   classes 0..58, every other pixel 255
    VOCdevkit/VOC2010/annotations_detectron2/pc60_val/<id>.png   classes 0..58, every other pixel 59

PC59 keeps the 59 most frequent of the 459 classes (their names in vocabularies.json, with
'diningtable' for 459's 'table'); the rest is background, ignored in PC59 and class 59 in PC60,
unlabelled pixels (LabelMap 0) included.
When the VOC2010 folder is not ``<root>/VOCdevkit/VOC2010`` itself, the val images and the split
file are copied there too.

    python datasets/prepare_pascal_context.py [--voc2010 path/to/VOCdevkit/VOC2010]
        [--context path/to/trainval] [--root datasets]
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import scipy.io
from tqdm import tqdm

from prepare_common import (add_root_argument, benchmark_classes, copy_file, read_ids, remap, report, require,
                            resolve_root, run, same_folder, save_label_png, save_label_tiff16)

LAYOUT = Path("VOCdevkit/VOC2010")
VOC2010_SOURCE = ("VOCtrainval_03-May-2010.tar, http://host.robots.ox.ac.uk/pascal/VOC/voc2010/"
                  "VOCtrainval_03-May-2010.tar (extract it under the root)")
CONTEXT_SOURCE = ("PASCAL Context's trainval.tar.gz, https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz "
                  "(extract it into VOCdevkit/VOC2010, or pass --context)")
PC59_ALIASES = {"diningtable": "table"}  # PC59 name -> PC459 name, where they differ
VOID_16BIT = 65535


def pc459_to_pc59() -> Dict[int, int]:
    """0-based PC459 class id -> PC59 class id, checked to keep both vocabularies' order."""
    pc459 = benchmark_classes("pc459")
    pc59 = benchmark_classes("pc59")
    ids_459 = [pc459.index(PC59_ALIASES.get(name, name)) for name in pc59]
    if ids_459 != sorted(ids_459):
        raise RuntimeError("vocabularies.json: the PC59 classes are not in PC459 order")
    return {id_459: id_59 for id_59, id_459 in enumerate(ids_459)}


def check_labels_txt(context_dir: Path) -> None:
    """Compares the archive's labels.txt (when present) with the PC459 vocabulary order."""
    for candidate in (context_dir / "labels.txt", context_dir.parent / "labels.txt"):
        if candidate.is_file():
            names = [line.split(":", 1)[1].strip() for line in candidate.read_text().splitlines() if ":" in line]
            expected = benchmark_classes("pc459")
            squash = [n.replace(" ", "").lower() for n in names]
            if squash != [n.replace(" ", "").lower() for n in expected]:
                raise ValueError(f"{candidate} does not list the 459 classes of vocabularies.json in order")
            return


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare PASCAL Context val for cliptrase_pc59/pc60/pc459_val.")
    parser.add_argument("--voc2010", type=Path, default=None,
                        help="extracted VOC2010 folder (default: <root>/VOCdevkit/VOC2010)")
    parser.add_argument("--context", type=Path, default=None,
                        help="folder of PASCAL Context's 459-class <id>.mat files (default: <voc2010>/trainval)")
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / LAYOUT
    source = args.voc2010 or out
    require(source, "VOC2010 folder", VOC2010_SOURCE)
    split_file = require(source / "ImageSets/Main/val.txt", "VOC2010 val split", VOC2010_SOURCE)
    images_dir = require(source / "JPEGImages", "VOC2010 images", VOC2010_SOURCE)
    context_dir = require(args.context or source / "trainval", "PASCAL Context label folder", CONTEXT_SOURCE)
    check_labels_txt(context_dir)
    to_pc59 = pc459_to_pc59()
    # PC60 as mmseg defines it (and SCLIP, ClearCLIP, NACLIP evaluate it): every pixel outside
    # the 59 classes is background, unlabelled ones (LabelMap 0) included; nothing is ignored.
    to_pc60 = {**to_pc59, VOID_16BIT: 59}
    copy_images = not same_folder(source, out)
    annotations = out / "annotations_detectron2"
    folders = [annotations / "pc459_val", annotations / "pc59_val", annotations / "pc60_val"]

    written = copy_file(split_file, out / "ImageSets/Main/val.txt") if copy_images else 0
    for image_id in tqdm(read_ids(split_file), desc="PASCAL Context val"):
        if copy_images:
            image = require(images_dir / f"{image_id}.jpg", "VOC2010 image", VOC2010_SOURCE)
            written += copy_file(image, out / "JPEGImages" / f"{image_id}.jpg")
        pc459_path, pc59_path, pc60_path = (folders[0] / f"{image_id}.tif", folders[1] / f"{image_id}.png",
                                            folders[2] / f"{image_id}.png")
        if pc459_path.exists() and pc59_path.exists() and pc60_path.exists():
            continue
        mat = require(context_dir / f"{image_id}.mat", "PASCAL Context label map", CONTEXT_SOURCE)
        label_map = scipy.io.loadmat(str(mat))["LabelMap"].astype(np.int64)  # 1..459, 0 unlabelled
        pc459 = np.where(label_map > 0, label_map - 1, VOID_16BIT)
        written += save_label_tiff16(pc459, pc459_path)
        written += save_label_png(remap(pc459, to_pc59, default=255), pc59_path)
        written += save_label_png(remap(pc459, to_pc60, default=59), pc60_path)
    report("PASCAL Context val", written, folders)
    return written


if __name__ == "__main__":
    run(main)
