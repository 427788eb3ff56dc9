#!/usr/bin/env python
"""Segments your own images with any vocabulary.

    python tools/demo.py --input photo.jpg "photos/*.png" --output out/ --vocabulary "sky, dog, frisbee"
    python tools/demo.py --config-file configs/paper/voc21_224.yaml --input img/ --output out/ \
        --opts MODEL.WEIGHTS weights/ViT-B-16.pt

Per input, in --output: <stem>_labels.png (class index per pixel, 16-bit when more than 255
classes), <stem>.png (colour overlay with a legend of the classes present), <stem>.json
(class names and each class's pixel share), and with --side-by-side <stem>_panel.png.
Existing files are never replaced unless --overwrite is given, and an input is never an output.
Labels are in the frame the protocol predicts: the S x S center crop under the paper protocol,
the original image under the standard one.
"""
import argparse
import glob
import logging
import os
import sys
import tempfile

import cliptrase_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
import numpy as np
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

from cliptrase_d2.api import Segmenter
from cliptrase_d2.errors import UserError
from cliptrase_d2.evaluation.results_io import atomic_save_image, atomic_write_json, atomic_write_png
from cliptrase_d2.visualization import legend_entries, overlay, side_by_side, with_legend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL_CONFIGS = {
    "paper": os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"),
    "standard": os.path.join(REPO, "configs", "standard", "Base-standard.yaml"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

logger = logging.getLogger("cliptrase_d2.demo")


def get_parser():
    parser = argparse.ArgumentParser(description="CLIPtrase: segment images with any vocabulary")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="config file (default: the --protocol's base config)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOL_CONFIGS), default=None,
                        help="paper (center crop S x S) or standard (sliding window, full image)")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders or glob patterns (quote globs)")
    parser.add_argument("--output", required=True, help="folder for the outputs (created if needed)")
    parser.add_argument("--vocabulary", default=None,
                        help="benchmark key (voc21, ade150, ...), comma-separated names, or a text file")
    parser.add_argument("--background", default="", help="comma-separated background words, merged into one class")
    parser.add_argument("--cache-dir", default=None, help="text-embedding cache folder ('none' to disable)")
    parser.add_argument("--side-by-side", action="store_true", help="also write <stem>_panel.png: input | overlay")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (e.g. from an earlier run)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def expand_inputs(patterns):
    """Files, folders (their images, sorted) and globs -> list of image paths; errors name the pattern."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"--input folder {pattern} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if not found:
                raise FileNotFoundError(f"--input {pattern!r} matches no file")
        paths.extend(found)
    unique = {}  # one entry per file, however often or under whichever name it was given
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def output_paths(path: str, output: str, panel: bool) -> dict:
    """The files written for input ``path``: kind -> path in ``output``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    names = {"labels": f"{stem}_labels.png", "overlay": f"{stem}.png", "json": f"{stem}.json"}
    if panel:
        names["panel"] = f"{stem}_panel.png"
    return {kind: os.path.join(output, name) for kind, name in names.items()}


def check_outputs(inputs, output: str, panel: bool, overwrite: bool) -> None:
    """Refuses, before any work, outputs that would replace an input, collide with another
    input's outputs, or (without --overwrite) replace a file that already exists."""
    sources = {os.path.realpath(path): path for path in inputs}
    writers, existing = {}, []
    for path in inputs:
        for target in output_paths(path, output, panel).values():
            real = os.path.realpath(target)
            if real in sources:
                raise ValueError(f"the output {target} would overwrite the input {sources[real]}: "
                                 "choose another --output folder")
            if real in writers and os.path.realpath(writers[real]) != os.path.realpath(path):
                raise ValueError(f"two inputs would write the same outputs ({os.path.basename(target)}): "
                                 f"{writers[real]} and {path}; rename one or run them separately")
            writers[real] = path
            if os.path.lexists(target):
                existing.append(target)
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{len(existing)} output file(s) already exist: {shown}. Pass --overwrite to "
                              "replace them, or choose another --output folder")


def check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to the --output folder {folder}: {error.strerror}") from None


def write_outputs(result, path: str, output: str, panel: bool) -> None:
    targets = output_paths(path, output, panel)
    labels = result.labels
    dtype = np.uint16 if len(result.class_names) > 255 else np.uint8
    entries = legend_entries(labels, result.class_names)
    shown = with_legend(overlay(result.image, labels), entries)
    atomic_write_png(targets["labels"], labels.astype(dtype))
    atomic_save_image(targets["overlay"], shown)
    if panel:
        atomic_save_image(targets["panel"], side_by_side(Image.fromarray(result.image), shown))
    atomic_write_json(targets["json"], {
        "image": path,
        "class_names": result.class_names,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "pixel_share": {name: share for _, name, share in entries},
    })


def build_opts(args):
    opts = list(args.opts)
    if args.protocol:
        opts += ["MODEL.CLIPTRASE.PROTOCOL", args.protocol]
    if args.cache_dir is not None:
        opts += ["MODEL.CLIPTRASE.TEXT_CACHE_DIR", args.cache_dir]
    return opts


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="cliptrase_d2")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    inputs = expand_inputs(args.input)
    check_outputs(inputs, args.output, args.side_by_side, args.overwrite)
    check_writable(args.output)
    config_file = args.config_file or PROTOCOL_CONFIGS[args.protocol or "paper"]
    segmenter = Segmenter.from_config(config_file, build_opts(args))
    background = [w.strip() for w in args.background.split(",") if w.strip()]
    vocabulary = segmenter.resolve_vocabulary(args.vocabulary, background)
    logger.info("segmenting %d image(s) into %d classes -> %s", len(inputs), vocabulary.num_classes, args.output)
    with tqdm(total=len(inputs), desc="demo", unit="img") as progress:
        for start in range(0, len(inputs), args.batch_size):
            batch = inputs[start:start + args.batch_size]
            for path, result in zip(batch, segmenter.segment(batch, vocabulary, scores=False)):
                write_outputs(result, path, args.output, args.side_by_side)
            progress.update(len(batch))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:  # bad input: one line; anything else is a bug and keeps its traceback
        sys.exit(f"error: {error}")
