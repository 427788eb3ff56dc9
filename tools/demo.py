#!/usr/bin/env python
"""Segments your own images or videos with any vocabulary.

    python tools/demo.py --input photo.jpg "photos/*.png" --output out/ \
        --vocabulary "sky, dog, frisbee"
    python tools/demo.py --video-input clip.mp4 --output out/ --vocabulary "road, car, tree, sky"
    python tools/demo.py --config-file configs/paper/voc21_224.yaml --input img/ --output out/ \
        --opts MODEL.WEIGHTS weights/ViT-B-16.pt

Per input, in --output: <stem>_labels.png (class index per pixel), <stem>.png (the regions drawn
by Detectron2's Visualizer, with a legend) and <stem>.json (pixel shares), all of them or none;
--video-input writes one mp4 of overlays. The README's "Segment your own images" says what each
file holds and which files are never replaced. Without --config-file the whole image is
segmented at its own size (the standard protocol); --protocol paper, or a paper config, segments
the S x S center crop the paper evaluates.
"""

import argparse
import glob
import logging
import os
import signal
import sys

import cliptrase_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
import cv2
import numpy as np
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

from cliptrase_d2.api import Segmenter, load_image
from cliptrase_d2.atomic import atomic_paths, atomic_save_image, atomic_write_json
from cliptrase_d2.config import check_images_per_batch, check_opts, load_config
from cliptrase_d2.engine.allocator import tune_cpu_allocator
from cliptrase_d2.engine.checks import check_writable_folder
from cliptrase_d2.errors import InputError, MissingFileError, OutputError, OutputExistsError
from cliptrase_d2.errors import exit_on_user_error
from cliptrase_d2.visualization import draw_labels, side_by_side, with_legend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL_CONFIGS = {
    "paper": os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml"),
    "standard": os.path.join(REPO, "configs", "standard", "Base-standard.yaml"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

logger = logging.getLogger("cliptrase_d2.demo")


def get_parser():
    parser = argparse.ArgumentParser(description="CLIPtrase: segment images with any vocabulary")
    parser.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="config file (default: the --protocol's base config)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOL_CONFIGS),
        default=None,
        help="standard (the whole image at its own size; the default without "
        "--config-file) or paper (the S x S center crop)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", help="image files, folders or glob patterns (quote globs)"
    )
    source.add_argument(
        "--video-input",
        metavar="FILE",
        type=os.path.expanduser,
        help="a video file, segmented frame by frame into an mp4 with the overlay",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=os.path.expanduser,  # "~/out", quoted: the home folder's, not a folder named ~
        help="folder for the outputs (created if needed); with --video-input "
        "also a file name ending in .mp4",
    )
    parser.add_argument(
        "--vocabulary",
        default=None,
        help="benchmark key (voc21, ade150, ...), comma-separated names, or a text file",
    )
    parser.add_argument(
        "--background",
        type=split_names,
        default=[],
        help="comma-separated background words, merged into one class",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="text-embedding cache folder ('none' to disable)"
    )
    parser.add_argument(
        "--side-by-side", action="store_true", help="also write <stem>_panel.png: input | overlay"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images (or frames) per forward pass (default: the config's TEST.IMS_PER_BATCH)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (e.g. from an earlier run)",
    )
    parser.add_argument(
        "--skip-bad-inputs",
        action="store_true",
        help="report and skip input images that cannot be read or segmented (default: an error "
        "naming the first)",
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser


def split_names(text: str):
    """Comma- (or line-) separated names -> list of names, stripped, empty ones dropped."""
    return [name.strip() for line in text.splitlines() for name in line.split(",") if name.strip()]


def expand_inputs(patterns):
    """Files, folders (their images, sorted) and globs -> list of image paths; errors name the
    pattern."""
    paths = []
    for pattern in map(os.path.expanduser, patterns):  # "~/photos", quoted: still a folder
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise MissingFileError(
                    f"--input folder {pattern} contains no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = sorted(glob.glob(pattern, recursive=True))
            if not found:
                raise MissingFileError(f"--input {pattern!r} matches no file")
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
                raise InputError(
                    f"the output {target} would overwrite the input {sources[real]}: "
                    "choose another --output folder"
                )
            if real in writers:  # inputs are distinct files (expand_inputs)
                raise InputError(
                    f"two inputs would write the same outputs ({os.path.basename(target)}): "
                    f"{writers[real]} and {path}; rename one or run them separately"
                )
            writers[real] = path
            if os.path.isdir(target):
                raise OutputExistsError(
                    f"a folder stands where the output file {target} goes: remove it or "
                    "choose another --output folder"
                )
            if os.path.lexists(target):
                existing.append(target)
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise OutputExistsError(
            f"{len(existing)} output file(s) already exist: {shown}. Pass --overwrite to "
            "replace them, or choose another --output folder"
        )


def readable_inputs(paths, skip: bool):
    """The inputs whose image header can be read. An unreadable one raises InputError naming it,
    or with ``skip`` is reported (a warning) and left out."""
    kept = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if not skip:
                raise InputError(
                    f"cannot read the input image {path} ({error}): fix or remove it, or pass "
                    "--skip-bad-inputs to skip unreadable images"
                ) from None
            logger.warning("skipped %s: cannot read it (%s)", path, error)
            continue
        kept.append(path)
    return kept


def load_inputs(paths, skip: bool, frame):
    """[(path, (H, W, 3) uint8 image)] of ``paths``; with ``skip``, one that cannot be decoded
    (e.g. truncated after its header) or that the model's ``frame`` refuses (e.g. smaller than a
    CLIP patch) is reported and left out."""
    loaded = []
    for path in paths:
        try:
            image = load_image(path)
            frame.check(*image.shape[:2], path)  # the model's check, naming the file
            loaded.append((path, image))
        except InputError as error:
            if not skip:
                raise
            logger.warning("skipped %s: %s", path, error)
    return loaded


def write_outputs(result, path: str, output: str, panel: bool) -> None:
    """Writes the input's files together: all of them appear, or (on any failure, e.g. a full
    disk) none."""
    targets = output_paths(path, output, panel)
    shares = result.pixel_shares()
    legend = [
        (result.class_names.index(name), f"{name} ({share * 100:.1f}%)")
        for name, share in shares.items()
    ]
    shown = with_legend(draw_labels(result.image, result.labels, result.class_names), legend)
    with atomic_paths(list(targets.values())) as temporaries:
        written = dict(zip(targets, temporaries))
        result.save_labels(written["labels"])
        atomic_save_image(written["overlay"], shown)
        if panel:
            atomic_save_image(written["panel"], side_by_side(Image.fromarray(result.image), shown))
        description = {
            "image": path,
            "class_names": result.class_names,
            "height": int(result.labels.shape[0]),
            "width": int(result.labels.shape[1]),
            "pixel_share": shares,
        }
        atomic_write_json(written["json"], description)


def video_target(video: str, output: str, overwrite: bool) -> str:
    """The mp4 that --video-input ``video`` is written to (``output`` itself when it ends in .mp4,
    else <stem>.mp4 in it), refused before any work if it is the input or exists already."""
    if os.path.isdir(video):
        raise InputError(f"--video-input {video} is a folder: give a video file (.mp4, ...)")
    if not os.path.isfile(video):
        raise MissingFileError(f"--video-input {video} does not exist")
    target = output
    if not output.lower().endswith(".mp4"):
        target = os.path.join(output, os.path.splitext(os.path.basename(video))[0] + ".mp4")
    if os.path.realpath(target) == os.path.realpath(video):
        raise InputError(
            f"the output {target} would overwrite the input video: choose another --output"
        )
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(
            f"the output {target} already exists. Pass --overwrite to replace "
            "it, or choose another --output"
        )
    return target


def segment_video(segmenter, video: str, target: str, vocabulary, batch_size: int) -> int:
    """Writes ``target`` (mp4): every frame's overlay beside a legend of every class of
    ``vocabulary`` (the same on every frame). Returns the number of frames."""
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise InputError(
            f"cannot read the video {video}: OpenCV could not open it (a video file "
            "such as .mp4, .avi or .mov is needed)"
        )
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    check_writable_folder(os.path.dirname(os.path.abspath(target)), "--output")
    legend = list(enumerate(vocabulary.class_names))
    writer, frames = None, 0
    try:
        progress = tqdm(total=total, desc="video", unit="frame")
        with atomic_paths([target]) as (partial,), progress:
            while batch := read_frames(capture, batch_size):
                segmenter.model.frame.check(*batch[0].shape[:2], f"the video {video}")
                for result in segmenter.segment(batch, vocabulary, scores=False):
                    drawn = draw_labels(result.image, result.labels, result.class_names)
                    shown = np.asarray(with_legend(drawn, legend))
                    # codecs want even sides: a white row or column where a side is odd
                    pad = ((0, shown.shape[0] % 2), (0, shown.shape[1] % 2), (0, 0))
                    shown = np.pad(shown, pad, constant_values=255)
                    if writer is None:  # OpenCV picks the container by the temporary's .mp4
                        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                        writer = cv2.VideoWriter(partial, fourcc, fps, shown.shape[1::-1])
                        if not writer.isOpened():  # else every frame is dropped, unsaid
                            raise OutputError(
                                f"OpenCV cannot write the mp4 video {target} (its build may lack "
                                "the mp4v encoder): pip install opencv-python-headless"
                            )
                    writer.write(np.ascontiguousarray(shown[:, :, ::-1]))
                frames += len(batch)
                progress.update(len(batch))
            if frames == 0:
                raise InputError(f"the video {video} has no readable frames")
            writer.release()
    finally:
        capture.release()
    return frames


def read_frames(capture, count: int):
    """Up to ``count`` next (H, W, 3) uint8 RGB frames of an open cv2.VideoCapture."""
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(frame[:, :, ::-1]))
    return frames


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="cliptrase_d2")
    tune_cpu_allocator()
    if args.batch_size is not None:
        check_images_per_batch(args.batch_size, "--batch-size")
    check_opts(args.opts)  # before the demo's own options are added to them
    opts = list(args.opts)
    if args.protocol:
        opts += ["MODEL.CLIPTRASE.PROTOCOL", args.protocol]
    if args.cache_dir is not None:
        opts += ["MODEL.CLIPTRASE.TEXT_CACHE_DIR", args.cache_dir]
    # before any work: the config file, its keys and values, the device (a CUDA fallback logged)
    cfg = load_config(args.config_file or PROTOCOL_CONFIGS[args.protocol or "standard"], opts)
    batch_size = args.batch_size or cfg.TEST.IMS_PER_BATCH
    if args.video_input:
        target = video_target(args.video_input, args.output, args.overwrite)
    else:
        found = expand_inputs(args.input)
        inputs = readable_inputs(found, args.skip_bad_inputs)
        check_outputs(inputs, args.output, args.side_by_side, args.overwrite)
        check_writable_folder(args.output, "--output")
    segmenter = Segmenter(build_model(cfg), batch_size)
    # resolved once for every image or frame, with the config's paper quirks for benchmark keys
    vocabulary = segmenter.resolve_vocabulary(args.vocabulary, args.background)
    if args.video_input:
        frames = segment_video(segmenter, args.video_input, target, vocabulary, batch_size)
        logger.info("segmented %d frames of %s -> %s", frames, args.video_input, target)
        return 0
    logger.info("segmenting %d image(s) -> %s", len(inputs), args.output)
    written = 0
    with tqdm(total=len(inputs), desc="demo", unit="img") as progress:
        for start in range(0, len(inputs), batch_size):
            paths = inputs[start : start + batch_size]
            batch = load_inputs(paths, args.skip_bad_inputs, segmenter.model.frame)
            results = segmenter.segment([image for _, image in batch], vocabulary, scores=False)
            for (path, _), result in zip(batch, results):
                write_outputs(result, path, args.output, args.side_by_side)
            written += len(batch)
            progress.update(len(paths))
    if not written:  # every input skipped: a run that wrote nothing did not succeed
        raise InputError(
            f"none of the {len(found)} input image(s) could be read or segmented (each is "
            "reported above): nothing was written; fix or replace them"
        )
    if written < len(found):
        logger.warning(
            "skipped %d input(s) of %d (--skip-bad-inputs; each is named in a warning above: "
            "unreadable, or refused by the model); the others' outputs are in %s",
            len(found) - written,
            len(found),
            args.output,
        )
    return 0


if __name__ == "__main__":
    # a kill (SIGTERM) unwinds like Ctrl-C: an input's files being written are removed
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        sys.exit(exit_on_user_error(main))  # bad input: one line; a bug keeps its traceback
    except KeyboardInterrupt:
        sys.exit("interrupted: the outputs written so far are complete, no partial file is left")
