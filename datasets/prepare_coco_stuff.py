"""COCO val2017 (5,000 images) for COCO-Stuff171 and COCO-Object80, the latter in two protocols.

Inputs: val2017.zip (``coco/val2017/*.jpg``) and COCO-Stuff's stuffthingmaps_trainval2017.zip
(``val2017/<id>.png`` holding COCO category id - 1: things 0..89 and stuff 91..181, with the
unused ids left out; 255 unlabelled). Output, under the dataset root:

    coco/stuffthingmaps_detectron2/val2017/<id>.png     COCO-Stuff171: classes 0..170 (things
    0..79), void 255
    coco/objectmaps_detectron2/val2017/<id>.png         COCO-Object80: things 0..79; every stuff
                                                        and every unlabelled pixel background 80
    coco/objectmaps_paper_detectron2/val2017/<id>.png   the paper's quirk: things 0..79; stuff
    class 80
                                                        ('banner') and void 80; stuff classes
                                                        81..170 255

COCO-Object80 is the peers' conversion (GroupViT's, which SCLIP, ClearCLIP and NACLIP evaluate
on): things keep their class, stuff and unlabelled pixels (255) become background, nothing is
void. The paper's COCO-Object numbers were computed on the 171-class maps with 81 classes: ground
truth 80 counted as background, 81..170 fell outside the classes and were dropped, and void
counted as background (docs/method.md, 'Vocabulary quirks' and section 9); the third folder
bakes that in, so its dataset does not map void to background again.

The 171-class maps can also be the input (``--stuff171``): COCO-Stuff171 maps made by SAN's,
the CLIPtrase authors' or CAT-Seg's scripts hold the same values, so the COCO-Object maps are
derived from them without the raw stuffthingmaps. When ``coco/stuffthingmaps/val2017`` is missing
and ``coco/stuffthingmaps_detectron2/val2017`` exists, that folder is used this way.
When the images are not in ``<root>/coco/val2017`` they are copied there.

    python datasets/prepare_coco_stuff.py [--val2017 path/to/val2017]
        [--stuffthingmaps path/to/stuffthingmaps/val2017 | --stuff171 path/to/171-class/val2017]
        [--root datasets]
"""

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional

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


# The peers' COCO-Object: stuff (80..170) and unlabelled (255) pixels are background.
STANDARD_OBJECT80 = {
    **{i: i for i in range(NUM_THINGS)},
    **{i: NUM_THINGS for i in range(NUM_THINGS, NUM_STUFF_AND_THINGS)},
    VOID: NUM_THINGS,
}
# The paper's: 'banner' (80) and void are background; stuff 81..170 -> 255.
PAPER_OBJECT80 = {**{i: i for i in range(NUM_THINGS)}, NUM_THINGS: NUM_THINGS, VOID: NUM_THINGS}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare COCO val2017 for cliptrase_coco_stuff171_val and "
        "cliptrase_coco_object80_(paper_)val."
    )
    parser.add_argument(
        "--val2017",
        type=Path,
        default=None,
        help="COCO val2017 images (default: <root>/coco/val2017)",
    )
    maps = parser.add_mutually_exclusive_group()
    maps.add_argument(
        "--stuffthingmaps",
        type=Path,
        default=None,
        help="COCO-Stuff's val2017 stuffthingmaps (default: <root>/coco/stuffthingmaps/val2017)",
    )
    maps.add_argument(
        "--stuff171",
        type=Path,
        default=None,
        help="existing COCO-Stuff171 maps (0..170, void 255), e.g. CAT-Seg's "
        "coco-stuff/annotations_detectron2/val2017: derive the COCO-Object "
        "maps from them",
    )
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / "coco"
    images_dir = require_dir(args.val2017 or out / "val2017", "COCO val2017 images", IMAGES_SOURCE)
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
    if stuff171_dir is not None:
        maps_dir = require_dir(stuff171_dir, "COCO-Stuff171 maps", STUFF171_SOURCE)
        if same_folder(stuff171_dir, folders["stuff171"]):
            del folders["stuff171"]  # the input itself
    else:
        maps_dir = require_dir(raw_maps, "COCO-Stuff val2017 maps", MAPS_SOURCE)
    copy_images = not same_folder(images_dir, out / "val2017")
    to_171 = stuffthing_to_171()

    images = require_images(images_dir, "*.jpg", IMAGES_SOURCE)
    summary = Summary("COCO val2017", "coco")
    summary.images = len(images)
    for image in tqdm(images, desc="COCO val2017"):
        if copy_images:
            summary.write(copy_file(image, out / "val2017" / image.name))
        targets = {key: folder / f"{image.stem}.png" for key, folder in folders.items()}
        if all(path.exists() for path in targets.values()):
            continue
        map_file = maps_dir / f"{image.stem}.png"
        if not map_file.is_file():
            source = STUFF171_SOURCE if stuff171_dir else MAPS_SOURCE
            summary.missing_file(map_file, "COCO-Stuff map", source)
            continue
        labels = read_label_png(map_file)
        stuff171 = labels if stuff171_dir is not None else remap(labels, to_171, default=VOID)
        if "stuff171" in targets:
            summary.save(stuff171, targets["stuff171"], VOID)
        object80 = remap(stuff171, STANDARD_OBJECT80, default=NUM_THINGS)
        summary.save(object80, targets["object80"], -1)
        summary.save(remap(stuff171, PAPER_OBJECT80, default=VOID), targets["paper"], VOID)
    classes = {
        "stuff171": NUM_STUFF_AND_THINGS,
        "object80": NUM_THINGS + 1,
        "paper": NUM_THINGS + 1,
    }
    return summary.finish({folder: classes[key] for key, folder in folders.items()}, "*.png")


if __name__ == "__main__":
    run(main)
