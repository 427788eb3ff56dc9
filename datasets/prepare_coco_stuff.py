"""COCO val2017 (5,000 images) for COCO-Stuff171 and COCO-Object80, the latter in two protocols.
From val2017.zip and COCO-Stuff's stuffthingmaps_trainval2017.zip (``val2017/<id>.png``: COCO
category id - 1, 255 unlabelled) it writes, under the root:

    coco/stuffthingmaps_detectron2/val2017/<id>.png    COCO-Stuff171: classes 0..170, void 255
    coco/objectmaps_detectron2/val2017/<id>.png        COCO-Object80: things 0..79, all else 80
    coco/objectmaps_paper_detectron2/val2017/<id>.png  the paper's: things 0..79, 'banner' (80)
                                                       and void 80, stuff 81..170 255

The first COCO-Object80 is the peers' (GroupViT's) conversion; the second bakes in how the
paper's numbers were computed (datasets/README.md, 'Ground-truth decisions'). The 171-class maps
(SAN's, the CLIPtrase authors', CAT-Seg's) can be the input instead: ``--stuff171``, or
``coco/stuffthingmaps_detectron2/val2017`` by itself when the raw maps are missing. Images not in
``<root>/coco/val2017`` are copied there.

    python datasets/prepare_coco_stuff.py [--val2017 path/to/val2017]
        [--stuffthingmaps path/to/stuffthingmaps/val2017 | --stuff171 path/to/171-class/val2017]
        [--root datasets]
"""

import logging
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from prepare_common import (
    Summary,
    add_paths,
    argument_parser,
    convert_pairs,
    jpg_png_pairs,
    parse_args,
    read_label_png,
    remap,
    require,
    run,
    same_folder,
)

logger = logging.getLogger("prepare")

IMAGES_SOURCE = (
    "COCO's val2017.zip, http://images.cocodataset.org/zips/val2017.zip "
    "(extract it into <root>/coco)"
)
MAPS_SOURCE = (
    "COCO-Stuff's stuffthingmaps_trainval2017.zip, "
    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"  # noqa: E501 (a URL)
    "stuffthingmaps_trainval2017.zip "
    "(extract it into <root>/coco/stuffthingmaps)"
)
STUFF171_SOURCE = (
    "an earlier run of this script, or SAN's / CAT-Seg's COCO-Stuff preparation (--stuff171)"
)

# COCO category ids 1..182 that no annotation uses: 11 thing ids of the 2014 paper's 91.
UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
NUM_THINGS = 80
NUM_STUFF_AND_THINGS = 171
VOID = 255


def stuffthing_to_171() -> Dict[int, int]:
    """stuffthingmaps value (category id - 1) -> contiguous COCO-Stuff171 class id."""
    used_ids = [i for i in range(1, 183) if i not in UNUSED_CATEGORY_IDS]
    return {category_id - 1: index for index, category_id in enumerate(used_ids)}


def read_stuff171(path: Path, to_171: Optional[Dict[int, int]]) -> np.ndarray:
    """The COCO-Stuff171 labels of a map: a stuffthingmaps one (category id - 1: 0..181, 255)
    converted with ``to_171``, a 171-class one (``to_171`` None: 0..170, 255) as it is."""
    labels = read_label_png(path, [*range(182 if to_171 else NUM_STUFF_AND_THINGS), VOID])
    return labels if to_171 is None else remap(labels, to_171, default=VOID)


# The peers' COCO-Object: stuff (80..170) and unlabelled (255) pixels are background.
STANDARD_OBJECT80 = {
    **{i: i for i in range(NUM_THINGS)},
    **{i: NUM_THINGS for i in range(NUM_THINGS, NUM_STUFF_AND_THINGS)},
    VOID: NUM_THINGS,
}
# The paper's: 'banner' (80) and void are background; stuff 81..170 -> 255.
PAPER_OBJECT80 = {**{i: i for i in range(NUM_THINGS)}, NUM_THINGS: NUM_THINGS, VOID: NUM_THINGS}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(
        "Prepare COCO val2017 for cliptrase_coco_stuff171_val and "
        "cliptrase_coco_object80_(paper_)val.",
        {"--val2017": "COCO val2017 images (default: <root>/coco/val2017)"},
    )
    add_paths(
        parser.add_mutually_exclusive_group(),
        {
            "--stuffthingmaps": "COCO-Stuff's val2017 stuffthingmaps "
            "(default: <root>/coco/stuffthingmaps/val2017)",
            "--stuff171": "existing COCO-Stuff171 maps (0..170, void 255), e.g. CAT-Seg's "
            "coco-stuff/annotations_detectron2/val2017: derive the COCO-Object maps from them",
        },
    )
    args = parse_args(parser, argv)
    out = args.root / "coco"
    images_dir = require(
        args.val2017 or out / "val2017", "COCO val2017 images", IMAGES_SOURCE, folder=True
    )
    folders = {
        "stuff171": out / "stuffthingmaps_detectron2/val2017",
        "object80": out / "objectmaps_detectron2/val2017",
        "paper": out / "objectmaps_paper_detectron2/val2017",
    }
    raw_maps = args.stuffthingmaps or out / "stuffthingmaps/val2017"
    stuff171_dir = args.stuff171
    no_raw_maps = args.stuffthingmaps is None and not raw_maps.is_dir()
    if stuff171_dir is None and no_raw_maps and folders["stuff171"].is_dir():
        stuff171_dir = folders["stuff171"]
        logger.info(
            "COCO: no %s; deriving the COCO-Object maps from the COCO-Stuff171 maps in %s",
            raw_maps,
            stuff171_dir,
        )
    to_171 = None  # the input holds the 171 classes already
    if stuff171_dir is not None:
        maps_dir = require(stuff171_dir, "COCO-Stuff171 maps", STUFF171_SOURCE, folder=True)
        if same_folder(stuff171_dir, folders["stuff171"]):
            del folders["stuff171"]  # the input itself
    else:
        maps_dir = require(raw_maps, "COCO-Stuff val2017 maps", MAPS_SOURCE, folder=True)
        to_171 = stuffthing_to_171()
    conversions = {
        "stuff171": (lambda stuff171: stuff171, VOID),
        "object80": (partial(remap, mapping=STANDARD_OBJECT80, default=NUM_THINGS), -1),
        "paper": (partial(remap, mapping=PAPER_OBJECT80, default=VOID), VOID),
    }
    copy_dir = None if same_folder(images_dir, out / "val2017") else out / "val2017"
    outputs = {folder: conversions[key] for key, folder in folders.items()}

    pairs = jpg_png_pairs(images_dir, maps_dir, copy_dir, outputs, IMAGES_SOURCE)
    summary = Summary("COCO val2017", "coco", len(pairs))
    source = STUFF171_SOURCE if stuff171_dir else MAPS_SOURCE
    convert_pairs(
        summary, pairs, "COCO-Stuff map", source, read=partial(read_stuff171, to_171=to_171)
    )
    classes = {
        "stuff171": NUM_STUFF_AND_THINGS,
        "object80": NUM_THINGS + 1,
        "paper": NUM_THINGS + 1,
    }
    return summary.finish({folder: classes[key] for key, folder in folders.items()}, "*.png")


if __name__ == "__main__":
    run(main)
