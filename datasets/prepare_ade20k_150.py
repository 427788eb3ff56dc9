"""ADE20K-150 val (2,000 images of the SceneParsing benchmark) for ADE150: the extracted
ADEChallengeData2016.zip (annotations 0 = other, 1..150 the classes) becomes
``ADEChallengeData2016/annotations_detectron2/validation/<id>.png`` (classes 0..149, other 255)
under the root, copying the val images there when the input is elsewhere. datasets/README.md,
'ADE20K-150', has the layout.

    python datasets/prepare_ade20k_150.py [--ade path/to/ADEChallengeData2016] [--root datasets]
"""

from functools import partial
from pathlib import Path
from typing import List, Optional

from prepare_common import (
    Summary,
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

LAYOUT = Path("ADEChallengeData2016")
SOURCE = (
    "ADEChallengeData2016.zip, "
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip "
    "(extract it under the root)"
)
ADE150_LABELS = {k: k - 1 for k in range(1, 151)}  # 0 ('other') and anything else -> 255


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(
        "Prepare ADE20K-150 val for cliptrase_ade150_val.",
        {"--ade": "extracted ADEChallengeData2016 folder (default: <root>/ADEChallengeData2016)"},
    )
    args = parse_args(parser, argv)
    out = args.root / LAYOUT
    source = args.ade or out
    images_dir = require(source / "images/validation", "ADE20K-150 val images", SOURCE, folder=True)
    labels_dir = require(
        source / "annotations/validation", "ADE20K-150 val annotations", SOURCE, folder=True
    )
    copy_dir = None if same_folder(source, out) else out / "images/validation"
    out_labels = out / "annotations_detectron2/validation"
    to_ade150 = (partial(remap, mapping=ADE150_LABELS, default=255), 255)

    pairs = jpg_png_pairs(images_dir, labels_dir, copy_dir, {out_labels: to_ade150}, SOURCE)
    summary = Summary("ADE20K-150 val", "ade150", len(pairs))
    read = partial(read_label_png, values=range(151))  # 0 'other', 1..150 the classes
    convert_pairs(summary, pairs, "ADE20K-150 annotation", SOURCE, read=read)
    return summary.finish({out_labels: 150}, "*.png")


if __name__ == "__main__":
    run(main)
