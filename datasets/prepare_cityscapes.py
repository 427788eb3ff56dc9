"""Cityscapes val (500 images) for Cityscapes19.

Inputs: the extracted leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
(``leftImg8bit/val/<city>/<name>_leftImg8bit.png``,
``gtFine/val/<city>/<name>_gtFine_labelIds.png``).
Output, under the dataset root, next to the labelIds maps as cityscapesScripts'
createTrainIdLabelImgs names them:

    cityscapes/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png   trainIds 0..18, everything else
    255

Existing labelTrainIds files (e.g. from cityscapesScripts) are kept. When the input folder is
not ``<root>/cityscapes`` itself, the val images are copied there too.

    python datasets/prepare_cityscapes.py [--cityscapes path/to/cityscapes] [--root datasets]
"""

import argparse
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

from prepare_common import (
    Summary,
    add_root_argument,
    copy_file,
    read_label_png,
    remap,
    require_dir,
    require_images,
    resolve_root,
    run,
    same_folder,
)

LAYOUT = Path("cityscapes")
SOURCE = (
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ "
    "(free registration; extract both into <root>/cityscapes)"
)

# Cityscapes labelId -> trainId of the 19 evaluated classes (road, sidewalk, ..., bicycle).
LABEL_ID_TO_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
IMAGE_SUFFIX = "_leftImg8bit.png"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare Cityscapes val for cliptrase_cityscapes19_val."
    )
    parser.add_argument(
        "--cityscapes",
        type=Path,
        default=None,
        help="folder holding leftImg8bit/ and gtFine/ (default: <root>/cityscapes)",
    )
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / LAYOUT
    source = args.cityscapes or out
    images_dir = require_dir(source / "leftImg8bit/val", "Cityscapes val images", SOURCE)
    labels_dir = require_dir(source / "gtFine/val", "Cityscapes val fine annotations", SOURCE)
    copy_images = not same_folder(source, out)

    images = require_images(images_dir, f"*/*{IMAGE_SUFFIX}", SOURCE)
    summary = Summary("Cityscapes val", "cityscapes")
    summary.images = len(images)
    for image in tqdm(images, desc="Cityscapes val"):
        city, name = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
        if copy_images:
            summary.write(copy_file(image, out / "leftImg8bit/val" / city / image.name))
        target = out / "gtFine/val" / city / f"{name}_gtFine_labelTrainIds.png"
        if target.exists():
            continue
        label_file = labels_dir / city / f"{name}_gtFine_labelIds.png"
        if not label_file.is_file():
            summary.missing_file(label_file, "Cityscapes labelIds map", SOURCE)
            continue
        train_ids = remap(read_label_png(label_file), LABEL_ID_TO_TRAIN_ID, default=255)
        summary.save(train_ids, target, 255)
    return summary.finish({out / "gtFine/val": 19}, "*/*_gtFine_labelTrainIds.png")


if __name__ == "__main__":
    run(main)
