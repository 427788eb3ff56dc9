"""PASCAL VOC 2012 val (1,449 images) for the VOC20 and VOC21 benchmarks.

Input: the extracted VOCtrainval_11-May-2012.tar (``VOCdevkit/VOC2012`` with JPEGImages/,
SegmentationClass/ and ImageSets/Segmentation/val.txt). SegmentationClass holds palette PNGs:
0 background, 1..20 the classes, 255 void (object borders). Output, under the dataset root:

    VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png     VOC20: classes 0..19, background and
    void 255
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png  VOC21: classes 0..19, background 20,
    void 255

When the input folder is not ``<root>/VOCdevkit/VOC2012`` itself, the val images and the split
file are copied there too. The ``VOC2012`` folder SAN's and the CLIPtrase authors' instructions
make (JPEGImages/, DeepLab's SegmentationClassAug/ and val.txt; the 1,449 val maps there are the
official ones as grayscale PNGs) is read the same way: ``--voc2012 <root>/VOC2012``.

    python datasets/prepare_voc.py [--voc2012 path/to/VOCdevkit/VOC2012] [--root datasets]
"""

import argparse
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

from prepare_common import (
    Summary,
    add_root_argument,
    copy_file,
    read_ids,
    read_label_png,
    remap,
    require,
    require_dir,
    resolve_root,
    run,
    same_folder,
)

LAYOUT = Path("VOCdevkit/VOC2012")
SOURCE = (
    "VOCtrainval_11-May-2012.tar, "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar (extract it under "
    "the root)"
)

VOC_CLASSES = {k: k - 1 for k in range(1, 21)}  # official 1..20 -> 0..19
VOC20_LABELS = {**VOC_CLASSES, 0: 255, 255: 255}  # background joins void
VOC21_LABELS = {**VOC_CLASSES, 0: 20, 255: 255}  # background is class 20


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare PASCAL VOC 2012 val for cliptrase_voc20_val / _voc21_val."
    )
    parser.add_argument(
        "--voc2012",
        type=Path,
        default=None,
        help="extracted VOC2012 folder (default: <root>/VOCdevkit/VOC2012)",
    )
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / LAYOUT
    source = args.voc2012 or out
    require_dir(source, "VOC2012 folder", SOURCE)
    split_file = source / "ImageSets/Segmentation/val.txt"
    labels_dir = source / "SegmentationClass"
    if not split_file.is_file() and (source / "val.txt").is_file():  # SAN's VOC2012/ folder
        split_file = source / "val.txt"
    if not labels_dir.is_dir() and (source / "SegmentationClassAug").is_dir():
        labels_dir = source / "SegmentationClassAug"
    require(split_file, "VOC2012 segmentation split", SOURCE)
    require_dir(labels_dir, "VOC2012 class labels", SOURCE)
    images_dir = require_dir(source / "JPEGImages", "VOC2012 images", SOURCE)
    copy_images = not same_folder(source, out)
    outputs = {
        "voc20": (out / "annotations_detectron2/val", VOC20_LABELS),
        "voc21": (out / "annotations_detectron2_bg/val", VOC21_LABELS),
    }

    image_ids = read_ids(split_file)
    summary = Summary("VOC2012 val", "voc2012")
    summary.images = len(image_ids)
    if copy_images:
        summary.write(copy_file(split_file, out / "ImageSets/Segmentation/val.txt"))
    for image_id in tqdm(image_ids, desc="VOC2012 val"):
        if copy_images:
            image = images_dir / f"{image_id}.jpg"
            if image.is_file():
                summary.write(copy_file(image, out / "JPEGImages" / f"{image_id}.jpg"))
            else:
                summary.missing_file(image, "VOC2012 image", SOURCE)
        targets = [(folder / f"{image_id}.png", mapping) for folder, mapping in outputs.values()]
        if all(path.exists() for path, _ in targets):
            continue
        label_file = labels_dir / f"{image_id}.png"
        if not label_file.is_file():
            summary.missing_file(label_file, "VOC2012 label map", SOURCE)
            continue
        labels = read_label_png(label_file)
        for path, mapping in targets:
            summary.save(remap(labels, mapping, default=255), path, 255)
    return summary.finish({outputs["voc20"][0]: 20, outputs["voc21"][0]: 21})


if __name__ == "__main__":
    run(main)
