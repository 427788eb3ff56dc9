#!/usr/bin/env python
"""A web page for trying CLIPtrase in the browser: upload a photo (or pick a sample), type class
names, see the segmentation that ``cliptrase_d2.api.Segmenter`` gives (docs/web_demo.md).

    python -m pip install --no-deps -r requirements/web.txt     # once: Gradio
    python tools/web_demo.py --opts MODEL.WEIGHTS weights/ViT-B-16.pt
    # then open http://127.0.0.1:7860

The server binds to 127.0.0.1 (this machine only) unless --host says otherwise. Every request
carries its own image and vocabulary, so nothing of one user's request reaches another's.
"""

import argparse
import errno
import glob
import html
import importlib.util
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


import cliptrase_d2  # noqa: F401
from detectron2.utils.logger import setup_logger
from PIL import Image

from cliptrase_d2.api import Segmenter, load_image
from cliptrase_d2.config import check_argument, check_opts
from cliptrase_d2.engine.allocator import tune_cpu_allocator
from cliptrase_d2.errors import ConfigError, InputError, UserError
from cliptrase_d2.method.heads import HEADS
from cliptrase_d2.modeling.settings import head_refinement
from cliptrase_d2.visualization import draw_labels, palette
from cliptrase_d2.vocabulary import benchmark_keys, refuse_near_key, resolve_vocabulary
from demo import PROTOCOL_CONFIGS, split_names

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from an offline box
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(
    os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))),
    "cliptrase_sample_voc21",
    "images",
)
SAMPLE_VOCABULARY = "person, dog, cat, horse, sofa, chair, table, car, bicycle, bottle, plant"
SAMPLE_BACKGROUND = "sky, wall, floor, grass, road, building, tree"
MAX_NAME_LENGTH = 100  # characters per class name (CLIP reads 77 tokens anyway)
TEST_SIZED_PARAMETERS = 20_000_000  # fewer than this: a test CLIP (ViT-B/16 has 150 M)
# options that must be finite and above 0: 0 or less would refuse every request
POSITIVE_OPTIONS = ("max_upload_mb", "max_megapixels", "max_classes", "concurrency", "queue_size")

logger = logging.getLogger("cliptrase_d2.web_demo")


def get_parser():
    parser = argparse.ArgumentParser(description="CLIPtrase web demo (Gradio)")
    parser.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="base config (default: the protocol's base config)",
    )
    parser.add_argument(
        "--head", default="cliptrase", choices=sorted(HEADS), help="head selected at start"
    )
    parser.add_argument(
        "--protocol",
        default="standard",
        choices=sorted(PROTOCOL_CONFIGS),
        help="protocol selected at start: standard (whole image) or paper (center crop)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes "
        "the page to the network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB"
    )
    parser.add_argument(
        "--max-megapixels", type=float, default=16.0, help="largest image accepted, in megapixels"
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=300,
        help="most classes (and most background words) one request may name",
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="requests processed at the same time"
    )
    parser.add_argument(
        "--queue-size", type=int, default=32, help="requests waiting at most; more are refused"
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser


def check_options(args) -> None:
    """Refuses, before any work, limits that are 0, negative or not finite, and a port this
    machine cannot serve on (in use, out of range, an unknown --host)."""
    check_opts(args.opts)  # before the page's own options are added to them
    for option in POSITIVE_OPTIONS:
        value = getattr(args, option)
        if not (math.isfinite(value) and value > 0):
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"{flag} must be a number above 0, got {value}: give e.g. {flag} 1")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            args.host, args.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind) as probe:
            # as the server sets it: a port left in TIME_WAIT is free, one listened on is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        # an unknown name, or an address of another machine: the --host is wrong, not the port
        wrong_host = isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL
        fix = (
            "give a --host of this machine (127.0.0.1, or 0.0.0.0 for all its addresses)"
            if wrong_host
            else "pass another --port, or stop the program that uses it"
        )
        raise ConfigError(
            f"cannot serve on {args.host}:{args.port} ({error.strerror or error}): {fix}"
        ) from None


@dataclass
class Limits:
    """What one request may ask for (the command line's --max-* options)."""

    max_upload_mb: float = 10.0
    max_megapixels: float = 16.0
    max_classes: int = 300


class Models:
    """One Segmenter per (head, protocol), built on first use and kept; each has its own lock, so
    requests to one model run one at a time while requests to different models may overlap."""

    def __init__(self, config_file: str = "", opts: Sequence[str] = ()):
        self.config_file = config_file
        self.opts = list(opts)
        self._models: Dict[Tuple[str, str], Tuple[Segmenter, threading.Lock]] = {}
        self._building = threading.Lock()

    def options(self, head: str, protocol: str) -> List[str]:
        # a request's own values (the page's choices are not preprocessed: see build_page)
        check_argument("head", head, choices=sorted(HEADS))
        check_argument("protocol", protocol, choices=sorted(PROTOCOL_CONFIGS))
        options = ["MODEL.CLIPTRASE.HEAD", head, "MODEL.CLIPTRASE.PROTOCOL", protocol]
        refine = head_refinement(head)  # the head's authors' (PEARL's TLP), as compare runs it
        return self.opts + options + (["MODEL.CLIPTRASE.REFINE", refine] if refine else [])

    def get(self, head: str, protocol: str) -> Tuple[Segmenter, threading.Lock]:
        key = (head, protocol)
        with self._building:
            if key not in self._models:
                config = self.config_file or PROTOCOL_CONFIGS[protocol]
                logger.info("loading the %s head under the %s protocol", head, protocol)
                self._models[key] = (
                    Segmenter.from_config(config, self.options(head, protocol)),
                    threading.Lock(),
                )
            return self._models[key]


def parse_vocabulary(
    text: Optional[str], background_text: Optional[str], max_classes: int
) -> Tuple[object, List[str]]:
    """(vocabulary, background words) for ``Segmenter.segment`` from the page's two text boxes.
    A benchmark key or comma- (or line-) separated names; never a file on the server."""
    background = split_names(background_text or "")
    text = (text or "").strip()
    if not split_names(text):
        raise InputError(
            "Type at least one class name, e.g. 'cat, sofa, floor' (or a benchmark key "
            f"such as voc21; keys: {', '.join(benchmark_keys())})."
        )
    spec = text.lower() if text.lower() in benchmark_keys() else split_names(text)
    if isinstance(spec, list):  # 'voc-21' is refused as the demo and the API refuse it
        refuse_near_key(text, spec)
    for name in ([] if isinstance(spec, str) else spec) + background:
        if len(name) > MAX_NAME_LENGTH:
            raise InputError(
                f"The name {name[:40]!r}... is {len(name)} characters long; "
                f"use at most {MAX_NAME_LENGTH}."
            )
    vocabulary = resolve_vocabulary(spec, background)  # empty, duplicate, 'background' clashes
    # each background word costs as much text encoding as a class: the same limit bounds both
    count, what = max((vocabulary.num_classes, "classes"), (len(background), "background words"))
    if count > max_classes:
        raise InputError(
            f"{count} {what}: this server accepts at most {max_classes} per request "
            "(--max-classes)."
        )
    return spec, background


def check_image(path: Optional[str], limits: Limits) -> Tuple[int, int]:
    """(width, height) of an uploaded image file, or an InputError saying what to upload instead
    (never naming the server's copy of the upload)."""
    if not path:
        raise InputError("Upload a photo (or pick one of the samples below) first.")
    size = os.path.getsize(path)
    if size > limits.max_upload_mb * 2**20:
        raise InputError(
            f"The file is {size / 2**20:.1f} MB; this server accepts up to "
            f"{limits.max_upload_mb:g} MB: upload a smaller one."
        )
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's limit (see main): twice --max-megapixels
        raise InputError(
            f"The image has far more pixels than the {limits.max_megapixels:g} megapixels this "
            "server accepts: upload a smaller one."
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise InputError(
            "The upload is not an image this server can read: upload a PNG, JPEG, ... photo."
        ) from None
    if width * height > limits.max_megapixels * 1e6:
        raise InputError(
            f"The image is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); "
            f"this server accepts up to {limits.max_megapixels:g}: upload a smaller one."
        )
    return width, height


class Outputs:
    """Per-request folders for the label PNGs. Made under GRADIO_TEMP_DIR (as the server sets
    it), Gradio serves them without a copy and deletes them with its own files, after an hour
    (``delete_cache``); all of them go with this object."""

    def __init__(self):
        folder = os.environ.get("GRADIO_TEMP_DIR")
        self._root = tempfile.TemporaryDirectory(prefix="cliptrase_web_", dir=folder)

    def new_folder(self) -> str:
        return tempfile.mkdtemp(dir=self._root.name)


def segment_request(
    models: Models,
    limits: Limits,
    outputs: Outputs,
    image_path: Optional[str],
    vocabulary_text: str,
    background_text: str,
    head: str,
    protocol: str,
):
    """One page request -> (overlay, legend rows [[class, share %, colour], ...], label PNG
    path). Everything it uses comes in as arguments; the model sees the vocabulary only through
    ``Segmenter.segment``."""
    check_image(image_path, limits)
    vocabulary, background = parse_vocabulary(vocabulary_text, background_text, limits.max_classes)
    try:
        image = load_image(image_path)
    except InputError:  # its message names the server's copy of the upload
        raise InputError(
            "The upload cannot be decoded (a damaged or truncated image?): upload another file."
        ) from None
    segmenter, lock = models.get(head, protocol)
    with lock:
        result = segmenter.segment(image, vocabulary, background=background, scores=False)
    shown = draw_labels(result.image, result.labels, result.class_names)
    hex_colors = ["#%02x%02x%02x" % tuple(color) for color in palette(len(result.class_names))]
    colors = dict(zip(result.class_names, hex_colors))
    shares = [
        [name, f"{share * 100:.2f}", colors[name]] for name, share in result.pixel_shares().items()
    ]
    stem = os.path.splitext(os.path.basename(image_path))[0]
    label_path = os.path.join(outputs.new_folder(), f"{stem}_labels.png")
    result.save_labels(label_path)
    return shown, shares, label_path


def legend_table(rows) -> str:
    """[[class, share %, colour], ...] as the page's legend: an HTML table beside the overlay,
    where the image's toolbar cannot cover it (names escaped: they are user input)."""
    swatch = '<span style="display:inline-block;width:1em;height:1em;background:{}"></span>'
    body = "".join(
        f"<tr><td>{swatch.format(color)}</td><td>{html.escape(name)}</td><td>{share}</td></tr>"
        for name, share, color in rows
    )
    return (
        "<table><thead><tr><th></th><th>class</th><th>pixel share (%)</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def describe_weights(segmenter: Segmenter) -> str:
    """The page's line on which CLIP runs, with a warning for test-sized models."""
    cfg = segmenter.cfg
    parameters = list(segmenter.model.parameters())
    count = sum(p.numel() for p in parameters)
    line = (
        f"Model: CLIP `{cfg.MODEL.CLIPTRASE.CLIP_MODEL}` "
        f"with weights `{cfg.MODEL.WEIGHTS or 'openai'}` "
        f"({count / 1e6:.1f} M parameters), on {parameters[0].device}."
    )
    if count < TEST_SIZED_PARAMETERS:
        line += (
            "\n\n**This is a test-sized CLIP, not trained weights: the segments and their colours "
            "mean nothing.** For real results start the server with "
            "`--opts MODEL.WEIGHTS weights/ViT-B-16.pt` (see weights/README.md)."
        )
    return line


def build_page(
    models: Models, limits: Limits, outputs: Outputs, head: str, protocol: str, weights_line: str
):
    import gradio as gr

    def run(photo, vocabulary_text, background_text, head, protocol):
        """The page's request; ``photo`` is Gradio's upload record, not preprocessed, so that an
        upload which is not an image gets this demo's message, not Gradio's."""
        try:
            shown, shares, label_path = segment_request(
                models,
                limits,
                outputs,
                photo and photo["path"],
                vocabulary_text,
                background_text,
                head,
                protocol,
            )
            return shown, legend_table(shares), label_path
        except (UserError, MemoryError) as error:  # bad input: shown on the page; others are bugs
            raise gr.Error(str(error), duration=None, print_exception=False) from None

    # uploads and results older than an hour are deleted every hour
    with gr.Blocks(title="CLIPtrase web demo", delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            "## CLIPtrase: training-free open-vocabulary segmentation\n"
            "Upload a photo (or pick a sample), name the classes to look for, press **Segment**."
        )
        gr.Markdown(weights_line, elem_id="weights")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload"],
                    label="Photo",
                    elem_id="photo",
                )
                vocabulary = gr.Textbox(
                    label="Class names (comma-separated) or a benchmark key (voc21, ...)",
                    placeholder="cat, sofa, floor",
                    elem_id="vocabulary",
                )
                background = gr.Textbox(
                    label="Background words (optional, comma-separated; merged into "
                    "one class 'background')",
                    placeholder="sky, wall",
                    elem_id="background",
                )
                with gr.Row():
                    head_choice = gr.Dropdown(
                        sorted(HEADS), value=head, label="Head", elem_id="head"
                    )
                    protocol_choice = gr.Radio(
                        sorted(PROTOCOL_CONFIGS),
                        value=protocol,
                        elem_id="protocol",
                        label="Protocol (standard: whole image; paper: center crop)",
                    )
                submit = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                shown = gr.Image(
                    type="numpy",
                    format="png",
                    label="Segmentation",
                    elem_id="overlay",
                    interactive=False,
                )
                shares = gr.HTML(label="Legend: pixel shares", elem_id="shares")
                labels = gr.File(label="Label map (PNG, class index per pixel)", elem_id="labels")
        photos = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*")))
        photos = [path for path in photos if path.lower().endswith((".jpg", ".jpeg", ".png"))]
        if photos:
            gr.Examples(
                [[path, SAMPLE_VOCABULARY, SAMPLE_BACKGROUND] for path in photos],
                inputs=[photo, vocabulary, background],
                label="Sample photos (PASCAL VOC)",
            )
        submit.click(
            run,
            inputs=[photo, vocabulary, background, head_choice, protocol_choice],
            outputs=[shown, shares, labels],
            concurrency_id="segment",
            preprocess=False,
        )
    return page


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="cliptrase_d2")
    tune_cpu_allocator()
    check_options(args)
    if importlib.util.find_spec("gradio") is None:
        raise ImportError(
            "the web demo needs Gradio: python -m pip install --no-deps -r requirements/web.txt"
        )
    limits = Limits(args.max_upload_mb, args.max_megapixels, args.max_classes)
    # the images check_image passes are decoded: not refused by Pillow's own (default) limit
    Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1e6)
    models = Models(args.config_file, args.opts)
    # first the model (weights problems stop the server here, in seconds), then Gradio's import
    segmenter, _ = models.get(args.head, args.protocol)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "binding to %s: anyone who can reach this machine can use the page", args.host
        )
    # Gradio keeps uploads and its copies of files (the sample photos' too), and Outputs the
    # label PNGs, under GRADIO_TEMP_DIR: here in a folder of this server's own, removed when it
    # stops
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cliptrase_web_gradio_", dir=parent) as folder:
        os.environ["GRADIO_TEMP_DIR"] = folder
        import gradio as gr

        weights_line = describe_weights(segmenter)
        page = build_page(models, limits, Outputs(), args.head, args.protocol, weights_line)
        page.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
        theme = gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "monospace"],
        )  # no web fonts: works offline
        page.launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=int(args.max_upload_mb * 2**20),
            allowed_paths=[SAMPLE_IMAGES],
            ssr_mode=False,
            theme=theme,
            show_error=True,
        )
    return 0


if __name__ == "__main__":
    # a kill (SIGTERM) stops the server as Ctrl-C does, and the uploads and results are deleted
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(main())
    except (UserError, ImportError) as error:  # bad input, or the web extra not installed
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:  # before the server started (Gradio handles it once running)
        sys.exit("interrupted")
