"""COCO val2017 (5,000 images) for COCO-Stuff171 and COCO-Object80, the latter in two protocols.

Inputs: val2017.zip (``coco/val2017/*.jpg``) and COCO-Stuff's stuffthingmaps_trainval2017.zip
(``val2017/<id>.png`` holding COCO category id - 1: things 0..89 and stuff 91..181, with the
unused ids left out; 255 unlabelled). Output, under the dataset root:

    coco/stuffthingmaps_detectron2/val2017/<id>.png     COCO-Stuff171: classes 0..170 (things 0..79), void 255
    coco/objectmaps_detectron2/val2017/<id>.png         COCO-Object80: things 0..79, every stuff pixel 80, void 255
    coco/objectmaps_paper_detectron2/val2017/<id>.png   the paper's quirk: things 0..79; stuff class 80
                                                        ('banner') and void 80; stuff classes 81..170 255

The paper's COCO-Object numbers were computed on the 171-class maps with 81 classes: ground
truth 80 counted as background, 81..170 fell outside the classes and were dropped, and void
counted as background (SPEC.md, 'Vocabulary quirks' and section 9); the third folder bakes that
in, so its dataset does not map void to background again.
When the images are not in ``<root>/coco/val2017`` they are copied there.

    python datasets/prepare_coco_stuff.py [--val2017 path/to/val2017]
        [--stuffthingmaps path/to/stuffthingmaps/val2017] [--root datasets]
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

from prepare_common import (add_root_argument, copy_file, read_label_png, remap, report, require, require_images,
                            resolve_root, run, same_folder, save_label_png)

IMAGES_SOURCE = "COCO's val2017.zip, http://images.cocodataset.org/zips/val2017.zip (extract it into <root>/coco)"
MAPS_SOURCE = ("COCO-Stuff's stuffthingmaps_trainval2017.zip, "
               "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip "
               "(extract it into <root>/coco/stuffthingmaps)")

# COCO category ids 1..182 that no annotation uses: 11 thing ids of the 2014 paper's 91.
UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
NUM_THINGS = 80


def stuffthing_to_171() -> Dict[int, int]:
    """stuffthingmaps value (category id - 1) -> contiguous COCO-Stuff171 class id."""
    used_ids = [i for i in range(1, 183) if i not in UNUSED_CATEGORY_IDS]
    return {category_id - 1: index for index, category_id in enumerate(used_ids)}


STANDARD_OBJECT80 = {**{i: i for i in range(NUM_THINGS)}, **{i: NUM_THINGS for i in range(NUM_THINGS, 171)},
                     255: 255}
PAPER_OBJECT80 = {**{i: i for i in range(NUM_THINGS)}, NUM_THINGS: NUM_THINGS, 255: NUM_THINGS}  # 81..170 -> 255


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare COCO val2017 for cliptrase_coco_stuff171_val and "
                                                 "cliptrase_coco_object80_(paper_)val.")
    parser.add_argument("--val2017", type=Path, default=None, help="COCO val2017 images (default: <root>/coco/val2017)")
    parser.add_argument("--stuffthingmaps", type=Path, default=None,
                        help="COCO-Stuff's val2017 stuffthingmaps (default: <root>/coco/stuffthingmaps/val2017)")
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / "coco"
    images_dir = require(args.val2017 or out / "val2017", "COCO val2017 images", IMAGES_SOURCE)
    maps_dir = require(args.stuffthingmaps or out / "stuffthingmaps/val2017", "COCO-Stuff val2017 maps", MAPS_SOURCE)
    copy_images = not same_folder(images_dir, out / "val2017")
    to_171 = stuffthing_to_171()
    folders = {"stuff171": out / "stuffthingmaps_detectron2/val2017", "object80": out / "objectmaps_detectron2/val2017",
               "paper": out / "objectmaps_paper_detectron2/val2017"}

    images = require_images(images_dir, "*.jpg", IMAGES_SOURCE)
    written = 0
    for image in tqdm(images, desc="COCO val2017"):
        if copy_images:
            written += copy_file(image, out / "val2017" / image.name)
        targets = {key: folder / f"{image.stem}.png" for key, folder in folders.items()}
        if all(path.exists() for path in targets.values()):
            continue
        stuff_map = read_label_png(require(maps_dir / f"{image.stem}.png", "COCO-Stuff map", MAPS_SOURCE))
        stuff171 = remap(stuff_map, to_171, default=255)
        written += save_label_png(stuff171, targets["stuff171"])
        written += save_label_png(remap(stuff171, STANDARD_OBJECT80, default=255), targets["object80"])
        written += save_label_png(remap(stuff171, PAPER_OBJECT80, default=255), targets["paper"])
    report("COCO val2017", written, list(folders.values()))
    return written


if __name__ == "__main__":
    run(main)
