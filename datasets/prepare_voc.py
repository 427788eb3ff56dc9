"""PASCAL VOC 2012 val (1,449 images) for the VOC20 and VOC21 benchmarks: the extracted
VOCtrainval_11-May-2012.tar (SegmentationClass: 0 background, 1..20 the classes, 255 void)
becomes, under the root, ``VOCdevkit/VOC2012/annotations_detectron2/val`` (VOC20: classes 0..19,
background and void 255) and ``annotations_detectron2_bg/val`` (VOC21: background 20). When the
input is elsewhere, the val images and the split file are copied there too. SAN's and the
CLIPtrase authors' ``VOC2012`` folder (JPEGImages/, SegmentationClassAug/, val.txt) is read the
same way. datasets/README.md, 'PASCAL VOC 2012', has the layout.

    python datasets/prepare_voc.py [--voc2012 path/to/VOCdevkit/VOC2012] [--root datasets]
"""

from functools import partial
from pathlib import Path
from typing import List, Optional

from prepare_common import (
    Pair,
    Summary,
    argument_parser,
    convert_pairs,
    copy_file,
    parse_args,
    read_ids,
    read_label_png,
    remap,
    require,
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
    parser = argument_parser(
        "Prepare PASCAL VOC 2012 val for cliptrase_voc20_val / _voc21_val.",
        {"--voc2012": "extracted VOC2012 folder (default: <root>/VOCdevkit/VOC2012)"},
    )
    args = parse_args(parser, argv)
    out = args.root / LAYOUT
    source = args.voc2012 or out
    require(source, "VOC2012 folder", SOURCE, folder=True)
    split_file = source / "ImageSets/Segmentation/val.txt"
    labels_dir = source / "SegmentationClass"
    if not split_file.is_file() and (source / "val.txt").is_file():  # SAN's VOC2012/ folder
        split_file = source / "val.txt"
    if not labels_dir.is_dir() and (source / "SegmentationClassAug").is_dir():
        labels_dir = source / "SegmentationClassAug"
    require(split_file, "VOC2012 segmentation split", SOURCE)
    require(labels_dir, "VOC2012 class labels", SOURCE, folder=True)
    images_dir = require(source / "JPEGImages", "VOC2012 images", SOURCE, folder=True)
    copy_images = not same_folder(source, out)
    voc20_dir, voc21_dir = out / "annotations_detectron2/val", out / "annotations_detectron2_bg/val"
    to_voc20 = (partial(remap, mapping=VOC20_LABELS, default=255), 255)
    to_voc21 = (partial(remap, mapping=VOC21_LABELS, default=255), 255)

    image_ids = read_ids(split_file)
    summary = Summary("VOC2012 val", "voc2012", len(image_ids))
    if copy_images:
        summary.write(copy_file(split_file, out / "ImageSets/Segmentation/val.txt"))
    pairs = [
        Pair(
            images_dir / f"{image_id}.jpg",
            labels_dir / f"{image_id}.png",
            out / "JPEGImages" / f"{image_id}.jpg" if copy_images else None,
            {voc20_dir / f"{image_id}.png": to_voc20, voc21_dir / f"{image_id}.png": to_voc21},
        )
        for image_id in image_ids
    ]
    read = partial(read_label_png, values=VOC21_LABELS.keys())
    convert_pairs(summary, pairs, "VOC2012 label map", SOURCE, "VOC2012 image", read)
    return summary.finish({voc20_dir: 20, voc21_dir: 21})


if __name__ == "__main__":
    run(main)
