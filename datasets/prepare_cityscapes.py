"""Cityscapes val (500 images) for Cityscapes19: the extracted leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip give, under the root and next to the labelIds maps,

    cityscapes/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png   trainIds 0..18, else 255

as cityscapesScripts' createTrainIdLabelImgs names them; existing ones are kept. When the input
is elsewhere, the val images are copied there too. datasets/README.md, 'Cityscapes', has the layout.

    python datasets/prepare_cityscapes.py [--cityscapes path/to/cityscapes] [--root datasets]
"""

from functools import partial
from pathlib import Path
from typing import List, Optional

from prepare_common import (
    Pair,
    Summary,
    argument_parser,
    convert_pairs,
    parse_args,
    remap,
    require,
    require_images,
    run,
    same_folder,
)

LAYOUT = Path("cityscapes")
SOURCE = (
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ "
    "(free registration; extract both into <root>/cityscapes)"
)

# The labelIds of the 19 evaluated classes (road, sidewalk, ..., bicycle), in trainId order.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
LABEL_ID_TO_TRAIN_ID = {label_id: train_id for train_id, label_id in enumerate(TRAIN_LABEL_IDS)}
IMAGE_SUFFIX = "_leftImg8bit.png"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(
        "Prepare Cityscapes val for cliptrase_cityscapes19_val.",
        {"--cityscapes": "folder holding leftImg8bit/ and gtFine/ (default: <root>/cityscapes)"},
    )
    args = parse_args(parser, argv)
    out = args.root / LAYOUT
    source = args.cityscapes or out
    images_dir = require(source / "leftImg8bit/val", "Cityscapes val images", SOURCE, folder=True)
    labels_dir = require(
        source / "gtFine/val", "Cityscapes val fine annotations", SOURCE, folder=True
    )
    copy_images = not same_folder(source, out)
    to_train_ids = (partial(remap, mapping=LABEL_ID_TO_TRAIN_ID, default=255), 255)

    images = require_images(images_dir, f"*/*{IMAGE_SUFFIX}", SOURCE)
    pairs = []
    for image in images:
        city, name = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
        pairs.append(
            Pair(
                image,
                labels_dir / city / f"{name}_gtFine_labelIds.png",
                out / "leftImg8bit/val" / city / image.name if copy_images else None,
                {out / "gtFine/val" / city / f"{name}_gtFine_labelTrainIds.png": to_train_ids},
            )
        )
    summary = Summary("Cityscapes val", "cityscapes", len(images))
    convert_pairs(summary, pairs, "Cityscapes labelIds map", SOURCE)
    return summary.finish({out / "gtFine/val": 19}, "*/*_gtFine_labelTrainIds.png")


if __name__ == "__main__":
    run(main)
