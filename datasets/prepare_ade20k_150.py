"""ADE20K-150 val (2,000 images of the SceneParsing benchmark) for ADE150.

Input: the extracted ADEChallengeData2016.zip (``images/validation/*.jpg`` and
``annotations/validation/*.png`` with 0 = other, 1..150 the classes). Output, under the root:

    ADEChallengeData2016/annotations_detectron2/validation/<id>.png   classes 0..149, other 255

When the input folder is not ``<root>/ADEChallengeData2016`` itself, the val images are copied too.

    python datasets/prepare_ade20k_150.py [--ade path/to/ADEChallengeData2016] [--root datasets]
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

LAYOUT = Path("ADEChallengeData2016")
SOURCE = (
    "ADEChallengeData2016.zip, "
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip "
    "(extract it under the root)"
)
ADE150_LABELS = {k: k - 1 for k in range(1, 151)}  # 0 ('other') and anything else -> 255


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare ADE20K-150 val for cliptrase_ade150_val.")
    parser.add_argument(
        "--ade",
        type=Path,
        default=None,
        help="extracted ADEChallengeData2016 folder (default: <root>/ADEChallengeData2016)",
    )
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    out = root / LAYOUT
    source = args.ade or out
    images_dir = require_dir(source / "images/validation", "ADE20K-150 val images", SOURCE)
    labels_dir = require_dir(
        source / "annotations/validation", "ADE20K-150 val annotations", SOURCE
    )
    copy_images = not same_folder(source, out)
    out_labels = out / "annotations_detectron2/validation"

    images = require_images(images_dir, "*.jpg", SOURCE)
    summary = Summary("ADE20K-150 val", "ade150")
    summary.images = len(images)
    for image in tqdm(images, desc="ADE20K-150 val"):
        if copy_images:
            summary.write(copy_file(image, out / "images/validation" / image.name))
        target = out_labels / f"{image.stem}.png"
        if target.exists():
            continue
        label_file = labels_dir / f"{image.stem}.png"
        if not label_file.is_file():
            summary.missing_file(label_file, "ADE20K-150 annotation", SOURCE)
            continue
        summary.save(remap(read_label_png(label_file), ADE150_LABELS, default=255), target, 255)
    return summary.finish({out_labels: 150}, "*.png")


if __name__ == "__main__":
    run(main)
