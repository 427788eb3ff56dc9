#!/usr/bin/env python
"""Speed and memory of CLIPtrase inference against a plain open_clip dense forward.

    python tools/benchmark.py                      # CPU, table
    python tools/benchmark.py --device cuda --json # one JSON object on stdout
    python tools/benchmark.py --stages             # also: where the time goes, stage by stage

All models have random weights (the cost of these computations does not depend on the weights'
values): ``open_clip.create_model(--model)``, fp32 unless --precision says otherwise, eval mode.
Every time is the median over --repeats runs after --warmup runs, all in this one process; CUDA
work is synchronized (``torch.cuda.synchronize``) before each clock reading. What is timed:

- ``plain_<S>``: open_clip's own vision tower on a normalized (1, 3, S, S) tensor with
  ``output_tokens=True`` (its fused attention fast path included), and every patch token
  projected to the embedding (``tokens @ visual.proj``): the dense CLIP features any
  training-free method starts from. The S = 336 tower is built with ``force_image_size=336``
  (its own 21 x 21 positional table).
- ``paper_<S>``: ``CLIPtrase.forward`` under the paper protocol (configs/paper/pc59_<S>.yaml,
  K = 59 classes) on what evaluation's test mapper gives it for one decoded uint8 photo: the
  S x S center crop, made by the mapper (the model's ``ProtocolFrame``: PIL bicubic resize and
  crop, in the loader's worker processes when DATALOADER.NUM_WORKERS > 0). Timed:
  normalization, the recalibrated tower, dense logits, upsampling, DBSCAN, region map (median
  filter), vote, the (K, S, S) ``sem_seg`` output. ``loader_ms_paper_<S>``: the mapper's crop
  itself; ``paper_<S>_photo``: ``forward`` given the whole decoded photo (the resize and crop
  inside, as the Python API and a direct caller pay them), ``ratio_paper_<S>_photo`` its ratio.
- ``standard_512x683``: ``CLIPtrase.forward`` under the standard protocol as ADE20K runs it
  (configs/standard/ade150.yaml: K = 150, shorter side 336, windows 224 / stride 112, ``mean``
  refinement), output (K, 512, 683).
- ``standard_1024x2048``: the same as Cityscapes runs it (configs/standard/cityscapes19.yaml:
  K = 19, shorter side 560), output (19, 1024, 2048); ``standard_1024x2048_k150`` is the stress
  case of a 1024 x 2048 image with ADE's 150 classes at shorter side 336.
  ``window_ratio_<case>`` = its time / (number of windows x ``plain_224_beside_standard``,
  the plain 224 forward timed in turns with the standard cases; the paper cases take turns
  among themselves, apart from the standard cases' multi-GB tensors).
- ``overhead_ms_<case>``: the time after the backbone, i.e. the forward's time minus the time
  before the first backbone call (decoding, resizing) and minus the backbone calls themselves
  (``head.features``: the recalibrated tower, each call synchronized); for the paper cases
  ``overhead_share_<case>`` = that time / ``plain_<S>``. Median over --repeats extra forwards,
  whose own whole time is ``overhead_forward_ms_<case>`` (the overhead's denominator within
  one measurement; ``time_ms_<case>`` comes from other forwards).
- ``throughput_batch<N>`` / ``plain_throughput_batch<N>`` for each N of --batch-sizes
  (default 1,8,32 on CUDA, none on a CPU): paper protocol at 224 with N images per forward,
  and the plain forward on their N crops as one tensor; ``throughput_ratio_batch<N>`` =
  CLIPtrase's images per second / the plain forward's.
- ``batch1`` / ``batch4``: paper protocol at 224, images per second when the same 4 photos go
  through ``forward`` one at a time or as one batch of 4. ``plain_batch4_speedup``: the same for
  the plain forward on their 224 crops, in the same rounds: the gain batching gives CLIP itself
  on this device, and so about the most it can give CLIPtrase.

Text embeddings are computed once per model before any timing (one template: the image path
does not depend on how they were made), as evaluation caches them. Peak memory is measured in a
fresh process per case that builds only that case's model: on CPU the peak resident set size
(VmHWM) while the case runs (reset through /proc/self/clear_refs after the model is built; the
model and libraries are included), on CUDA ``torch.cuda.max_memory_allocated`` (weights
included). ``--stages`` charges each step of paper_224, paper_336 and standard_512x683 to a
stage (exclusive time of the method's functions, median over the repeats).
"""

import argparse
import dataclasses
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple

import cliptrase_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
import numpy as np
import open_clip
import torch
from PIL import Image

from cliptrase_d2 import clip_loading
from cliptrase_d2.clip_loading import PRECISIONS
from cliptrase_d2.data.image_io import read_rgb
from cliptrase_d2.config import load_config
from cliptrase_d2.data import dataset_mapper
from cliptrase_d2.engine.allocator import tune_cpu_allocator
from cliptrase_d2.method import dense_clip, pipeline, refinement, sliding, standard
from cliptrase_d2.method.preprocess import CLIP_MEAN, CLIP_STD, keep_ratio_size, paper_crop
from cliptrase_d2.method.sliding import window_boxes
from cliptrase_d2.modeling import meta_arch
from cliptrase_d2.modeling.meta_arch import CLIPtrase
from cliptrase_d2.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(
    os.environ.get("CLIPTRASE_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures")), "images"
)
# case -> (config file, image size (H, W) or None for the paper's photo, config overrides)
CASES = {
    "paper_224": ("configs/paper/pc59_224.yaml", None, ()),
    "paper_336": ("configs/paper/pc59_336.yaml", None, ()),
    "standard_512x683": ("configs/standard/ade150.yaml", (512, 683), ()),
    "standard_1024x2048": ("configs/standard/cityscapes19.yaml", (1024, 2048), ()),
    "standard_1024x2048_k150": ("configs/standard/ade150.yaml", (1024, 2048), ()),
}
PLAIN_SIZES = (224, 336)
# The plain 224 forward timed in turns with the standard cases (their window ratios' unit).
STANDARD_PLAIN = "plain_224_beside_standard"
STAGE_CASES = ("paper_224", "paper_336", "standard_512x683")

logger = logging.getLogger("cliptrase_d2.benchmark")


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--model",
        default="ViT-B-16-quickgelu",
        help="open_clip model name or model-config JSON (random weights)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=sorted(PRECISIONS),
        help="dtype of the CLIP towers (MODEL.CLIPTRASE.PRECISION)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per case (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--image", default="", help="photo for every case (default: the fixtures' astronaut)"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES)
    )
    parser.add_argument("--stages", action="store_true", help="also print the per-stage cost table")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument(
        "--glibc-malloc-defaults",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the entry points tune them: "
        "cliptrase_d2/engine/allocator.py)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated batch sizes for the throughput rows "
        "(default 1,8,32 on CUDA, none on CPU)",
    )
    parser.add_argument(
        "--memory-case", default="", help=argparse.SUPPRESS
    )  # internal: one case's peak
    return parser


# ---- models and inputs -----------------------------------------------------------------------


def create_clip(model: str, device: torch.device, precision: str, image_size: Optional[int] = None):
    """A randomly initialised open_clip model (fp32 master copy cast to ``precision``), eval
    mode."""
    name = model
    if model.lower().endswith(".json"):
        open_clip.add_model_config(model)
        name = os.path.splitext(os.path.basename(model))[0]
    kwargs = {"force_image_size": image_size} if image_size else {}
    root = (
        logging.getLogger()
    )  # open_clip warns through it that the weights are random: they are meant to be
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        clip = open_clip.create_model(name, pretrained=None, **kwargs)
    finally:
        root.setLevel(level)
    return clip.to(device, PRECISIONS[precision]).eval()


def load_photos(path: str) -> List[np.ndarray]:
    """(H, W, 3) uint8 photos: --image, else the fixtures' four photos, else a synthetic scene."""
    if path:
        return [read_rgb(path)]
    names = ("astronaut.png", "coffee.png", "chelsea.png", "vocsample.png")
    if all(os.path.exists(os.path.join(PHOTOS, n)) for n in names):
        return [read_rgb(os.path.join(PHOTOS, n)) for n in names]
    rows, cols = np.mgrid[0:480, 0:640]
    scene = np.stack(
        [(rows * 255 // 480), (cols * 255 // 640), ((rows // 60 + cols // 80) % 2) * 255], -1
    )
    return [scene.astype(np.uint8)]


def resized(photo: np.ndarray, size) -> np.ndarray:
    return (
        photo
        if size is None
        else np.asarray(Image.fromarray(photo).resize((size[1], size[0]), Image.BICUBIC))
    )


def as_input(photo: np.ndarray, device: torch.device) -> Dict:
    """A Detectron2 input dict: decoded (3, H, W) uint8 image already on the model's device."""
    return {"image": torch.from_numpy(np.array(photo)).permute(2, 0, 1).contiguous().to(device)}


def case_frame(case: str, model: CLIPtrase, photo: np.ndarray) -> np.ndarray:
    """The pixels evaluation gives ``case``'s model for a photo: the paper protocol's crop made by
    the test mapper (the model's ``frame``), or the photo (resized to the case's image size)
    under the standard one."""
    if case.startswith("paper_"):
        return model.frame(photo)
    return resized(photo, CASES[case][1])


def build_case_model(case: str, clip, args) -> CLIPtrase:
    """CLIPtrase configured by the case's config file (through ``CLIPtrase.from_config``, so every
    setting is the project's own mapping), around the already built ``clip``; text embeddings
    cached."""
    config, _, opts = CASES[case]
    cfg = load_config(
        os.path.join(REPO, config),
        [
            "MODEL.CLIPTRASE.CLIP_MODEL",
            args.model,
            "MODEL.CLIPTRASE.TEXT_CACHE_DIR",
            "none",
            "MODEL.DEVICE",
            args.device,
            *opts,
        ],
    )
    original = clip_loading.build_clip
    clip_loading.build_clip = lambda *_, **__: clip  # from_config looks it up when called
    try:
        kwargs = CLIPtrase.from_config(cfg)
    finally:
        clip_loading.build_clip = original
    kwargs["templates"] = ("a photo of a {}.",)
    model = CLIPtrase(**kwargs).to(clip.logit_scale.device).eval()
    with torch.no_grad():
        model.text_embeddings(model.vocabulary_for({}))  # computed once, as evaluation caches them
    return model


def number_of_windows(model: CLIPtrase, size) -> int:
    """Sliding windows the standard protocol runs on an image of ``size`` (the model's own
    resize rule: mmseg's keep-ratio resize with its long-side cap)."""
    frame = model.frame
    height, width = keep_ratio_size(*size, frame.short_side, frame.long_side)
    return len(window_boxes(height, width, frame.window, frame.stride))


def plain_forward(visual):
    """open_clip's own dense forward: every token of the last block, patch tokens projected."""
    visual.output_tokens = True

    def run(images):
        _, tokens = visual(images)
        return tokens @ visual.proj  # (B, n, E)

    return run


def paper_tensor(photo: np.ndarray, size: int, device, dtype) -> torch.Tensor:
    """The normalized (1, 3, S, S) center crop the paper protocol feeds CLIP."""
    pixels = torch.from_numpy(paper_crop(photo, size).copy()).permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std)[None].contiguous().to(device, dtype)


# ---- clocks ----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(
    runs: Dict[str, Callable[[], object]], device, repeats: int, warmup: int
) -> Dict[str, float]:
    """Median wall time in milliseconds of each run, CUDA work included. The runs take turns
    (one of each per round, in reverse order every other round), so a change in the machine's
    load, and what a run leaves behind for the next one, reaches all of them alike."""
    times = defaultdict(list)
    with torch.no_grad():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for round_index in range(max(1, repeats)):
            order = list(runs.items())
            for name, run in order if round_index % 2 == 0 else order[::-1]:
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


class StageClock:
    """Exclusive wall time per stage of the functions it wraps: a call nested in another wrapped
    call is charged to its own stage, not to its caller's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: Dict[str, float] = defaultdict(float)
        self._open: List[float] = []  # time already charged to inner calls, per open call

    def wrap(self, function: Callable, stage) -> Callable:
        """``stage``: a label, or a function of the call's arguments returning one."""

        def timed(*args, **kwargs):
            label = stage(*args) if callable(stage) else stage
            synchronize(self.device)
            start = time.perf_counter()
            self._open.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                synchronize(self.device)
                elapsed = time.perf_counter() - start
                inner = self._open.pop()
                self.totals[label] += elapsed - inner
                if self._open:
                    self._open[-1] += elapsed

        return timed


def stage_map(model: CLIPtrase):
    """(stage label, function name) for every step of a prediction; the blocks by position."""
    blocks = model.clip_model.visual.transformer.resblocks

    def by_block(block, *_):
        if block is blocks[-2]:
            return "block N-1 + self-correlation"
        return "block N (correlative)" if block is blocks[-1] else "backbone (embed, blocks 1..N-2)"

    return [
        ("preprocess (resize, crop, normalize)", ("rgb_pixels", "paper_crop", "standard_frame")),
        ("backbone (embed, blocks 1..N-2)", ("embed_tokens",)),
        (by_block, ("residual_block", "block_qkv", "multi_head_attention", "finish_block")),
        ("block N-1 + self-correlation", ("self_correlation",)),
        ("block N (correlative)", ("correlative_attention",)),
        ("projection, logits", ("project_tokens", "dense_logits")),
        ("upsampling", ("resize_logits", "resize_maps", "resized_argmax")),
        (
            "argmax, background merge",
            ("channel_argmax", "merge_background_labels", "merge_background_scores"),
        ),
        ("clustering (DBSCAN)", ("suppress_global_patch", "cluster_patches")),
        ("region map: median filter", ("median_filter",)),
        ("region map: other", ("region_map",)),
        (
            "refinement (vote, region means)",
            ("vote_refine", "mean_refine", "region_means", "expand_regions"),
        ),
        ("sliding window", ("sliding_window", "sliding_windows")),
    ]


@contextmanager
def stage_clock(model: CLIPtrase, clock: StageClock):
    """Wraps the method's functions wherever they are looked up (module globals, the head's last
    block)."""
    modules = [dense_clip, refinement, pipeline, sliding, standard, dataset_mapper, meta_arch]
    if hasattr(refinement, "ndimage"):
        modules.append(
            refinement.ndimage
        )  # scipy's median filter, where refinement calls it through scipy
    saved = []
    for stage, names in stage_map(model):
        for name in names:
            for module in modules:
                original = getattr(module, name, None)
                if callable(original):
                    saved.append((module, name, original))
                    setattr(module, name, clock.wrap(original, stage))
    head = model.head
    model.head = dataclasses.replace(
        head, last_block=clock.wrap(head.last_block, "block N (correlative)")
    )
    try:
        yield clock
    finally:
        model.head = head
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def stage_table(model: CLIPtrase, inputs: List[Dict], device, repeats: int) -> Dict[str, float]:
    """Median milliseconds per stage over ``repeats`` forwards (after one untimed forward)."""
    runs = []
    with torch.no_grad():
        model(inputs)
        for _ in range(max(1, repeats)):
            clock = StageClock(device)
            with stage_clock(model, clock):
                synchronize(device)
                start = time.perf_counter()
                model(inputs)
                synchronize(device)
                total = time.perf_counter() - start
            clock.totals["other (output, glue)"] = total - sum(clock.totals.values())
            clock.totals["total"] = total
            runs.append(dict(clock.totals))
    labels = list(dict.fromkeys(label for run in runs for label in run))
    return {
        label: 1000 * statistics.median(run.get(label, 0.0) for run in runs) for label in labels
    }


class BackboneClock:
    """Stands in for a model's head and records when each backbone call (``features``) starts
    and ends, the device synchronized on both sides."""

    def __init__(self, head, device: torch.device):
        self.head, self.device, self.spans = head, device, []

    def __getattr__(self, name):
        return getattr(self.head, name)

    def features(self, visual, images):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            return self.head.features(visual, images)
        finally:
            synchronize(self.device)
            self.spans.append((start, time.perf_counter()))


def overhead_ms(model: CLIPtrase, inputs: List[Dict], device, repeats: int) -> Tuple[float, float]:
    """Median milliseconds of a forward spent after the backbone (the whole forward minus the
    time before the first backbone call and minus the backbone calls, see the module docstring),
    and the median milliseconds of those same forwards, whole."""
    overheads, totals = [], []
    head = model.head
    with torch.no_grad():
        model(inputs)
        try:
            for _ in range(max(1, repeats)):
                model.head = clock = BackboneClock(head, device)
                synchronize(device)
                start = time.perf_counter()
                model(inputs)
                synchronize(device)
                end = time.perf_counter()
                backbone = sum(stop - begin for begin, stop in clock.spans)
                overheads.append(end - clock.spans[0][0] - backbone)
                totals.append(end - start)
        finally:
            model.head = head
    return 1000 * statistics.median(overheads), 1000 * statistics.median(totals)


# ---- memory ----------------------------------------------------------------------------------


def resident_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(device: torch.device) -> bool:
    """Starts a new peak-memory window; False when the platform cannot (the peak then covers the
    setup)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def peak_mb(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mb("VmHWM")


def measure_case_memory(case: str, args) -> Dict:
    """In this (fresh) process: builds only ``case``'s model and reports the peak memory of two runs
    of it, and the memory in use before them (model, libraries)."""
    device = torch.device(args.device)
    photos = load_photos(args.image)
    with torch.no_grad():
        if case.startswith("plain_"):
            size = int(case.split("_")[1])
            visual = create_clip(args.model, device, args.precision, size).visual
            run, images = (
                plain_forward(visual),
                paper_tensor(photos[0], size, device, visual.conv1.weight.dtype),
            )
            work = lambda: run(images)  # noqa: E731
        else:
            model = build_case_model(case, create_clip(args.model, device, args.precision), args)
            inputs = [as_input(case_frame(case, model, photos[0]), device)]
            work = lambda: model(inputs)  # noqa: E731
        synchronize(device)
        setup = (
            torch.cuda.memory_allocated(device) / 2**20
            if device.type == "cuda"
            else resident_mb("VmRSS")
        )
        exact = reset_peak(device)
        for _ in range(2):  # a first (cold) run and a warm one
            work()
        synchronize(device)
    return {
        "case": case,
        "peak_mb": peak_mb(device),
        "setup_mb": setup,
        "peak_covers_setup": not exact,
    }


def case_memory(case: str, args) -> Dict:
    """Runs ``measure_case_memory`` in a fresh interpreter (no other model resident)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-case",
        case,
        "--device",
        args.device,
        "--model",
        args.model,
        "--precision",
        args.precision,
        "--threads",
        str(args.threads),
    ]
    if args.image:
        command += ["--image", args.image]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the benchmark ---------------------------------------------------------------------------


def run_benchmark(args) -> Dict:
    device = torch.device(args.device)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    photos = load_photos(args.image)
    clip = create_clip(args.model, device, args.precision)
    dtype = clip.visual.conv1.weight.dtype
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "precision": args.precision,
        "repeats": args.repeats,
        "photos": len(photos),
    }

    runs, models = {}, {}
    for size in PLAIN_SIZES:
        visual = (
            clip.visual
            if size == clip.visual.image_size[0]
            else create_clip(args.model, device, args.precision, size).visual
        )
        runs[f"plain_{size}"] = functools.partial(
            plain_forward(visual), paper_tensor(photos[0], size, device, dtype)
        )
    for case in cases:
        model = models[case] = build_case_model(case, clip, args)
        runs[case] = functools.partial(
            model, [as_input(case_frame(case, model, photos[0]), device)]
        )
        if case.startswith("paper_"):
            runs[f"{case}_photo"] = functools.partial(model, [as_input(photos[0], device)])
            runs[f"loader_{case}"] = functools.partial(model.frame, photos[0])
        result[f"classes_{case}"] = model.text_embeddings(model.vocabulary_for({})).shape[0]
    if "paper_224" in models:
        frame = models["paper_224"].frame  # the mapper's crop at 224, for every batch
        batch = [as_input(frame(p), device) for p in (photos * 4)[:4]]
        runs["batch1"] = functools.partial(
            lambda model, inputs: [model([x]) for x in inputs], models["paper_224"], batch
        )
        runs["batch4"] = functools.partial(models["paper_224"], batch)
        # The same 4 photos through the plain forward: the gain batching gives CLIP itself on this
        # device, which bounds what it can give CLIPtrase (whose cost is mostly that forward).
        crops = torch.cat([paper_tensor(p, 224, device, dtype) for p in (photos * 4)[:4]])
        plain = plain_forward(clip.visual)
        runs["plain_batch1"] = functools.partial(
            lambda inputs: [plain(inputs[i : i + 1]) for i in range(4)], crops
        )
        runs["plain_batch4"] = functools.partial(plain, crops)
    sizes = (
        args.batch_sizes
        if args.batch_sizes is not None
        else ("1,8,32" if device.type == "cuda" else "")
    )
    batch_sizes = [int(n) for n in sizes.split(",") if n]
    if batch_sizes and "paper_224" not in models:
        raise ConfigError("--batch-sizes needs the paper_224 case (--cases)")
    for size in batch_sizes:
        chosen = (photos * size)[:size]
        crops = torch.cat([paper_tensor(p, 224, device, dtype) for p in chosen])
        runs[f"batch{size}_n"] = functools.partial(
            models["paper_224"], [as_input(frame(p), device) for p in chosen]
        )
        runs[f"plain_batch{size}_n"] = functools.partial(plain_forward(clip.visual), crops)
    # The standard cases take turns with their own plain forward, apart from the paper cases:
    # their multi-GB tensors would otherwise sit between a paper case and its plain forward.
    standard = [name for name in runs if name.startswith("standard_")]
    groups = [{name: run for name, run in runs.items() if name not in standard}]
    if standard:
        groups.append(
            {STANDARD_PLAIN: runs["plain_224"], **{name: runs[name] for name in standard}}
        )
    times = {}
    for group in groups:
        logger.info(
            "timing %s: %d rounds after %d warm-up rounds",
            ", ".join(group),
            args.repeats,
            args.warmup,
        )
        times.update(median_times(group, device, args.repeats, args.warmup))

    for size in PLAIN_SIZES:
        result[f"time_ms_plain_{size}"] = times[f"plain_{size}"]
    if STANDARD_PLAIN in times:
        result[f"time_ms_{STANDARD_PLAIN}"] = times[STANDARD_PLAIN]
    for case, model in models.items():
        result[f"time_ms_{case}"] = times[case]
        if case.startswith("paper_"):
            plain = times[f"plain_{model.frame.paper_size}"]
            result[f"ratio_{case}"] = times[case] / plain
            result[f"time_ms_{case}_photo"] = times[f"{case}_photo"]
            result[f"ratio_{case}_photo"] = times[f"{case}_photo"] / plain
            result[f"loader_ms_{case}"] = times[f"loader_{case}"]
        else:
            windows = number_of_windows(model, CASES[case][1])
            result[f"windows_{case}"] = windows
            result[f"window_ratio_{case}"] = times[case] / (windows * times[STANDARD_PLAIN])
    for size in batch_sizes:
        result[f"throughput_batch{size}"] = 1000 * size / times[f"batch{size}_n"]
        result[f"plain_throughput_batch{size}"] = 1000 * size / times[f"plain_batch{size}_n"]
        result[f"throughput_ratio_batch{size}"] = (
            times[f"plain_batch{size}_n"] / times[f"batch{size}_n"]
        )
    for case, model in models.items():
        overhead, forward = overhead_ms(
            model, [as_input(case_frame(case, model, photos[0]), device)], device, args.repeats
        )
        result[f"overhead_ms_{case}"] = overhead
        result[f"overhead_forward_ms_{case}"] = forward
        if case.startswith("paper_"):
            result[f"overhead_share_{case}"] = (
                result[f"overhead_ms_{case}"] / times[f"plain_{model.frame.paper_size}"]
            )
    if "batch4" in times:
        result["images_per_s_batch1"] = 4000 / times["batch1"]
        result["images_per_s_batch4"] = 4000 / times["batch4"]
        result["batch4_speedup"] = times["batch1"] / times["batch4"]
        result["plain_batch4_speedup"] = times["plain_batch1"] / times["plain_batch4"]

    if args.precision != "fp32":
        reference = create_clip(args.model, device, "fp32")
        reference.load_state_dict(
            {k: v.float() for k, v in clip.state_dict().items()}
        )  # the same weights
        for case, model in models.items():
            inputs = [
                as_input(resized(p, CASES[case][1]), device)
                for p in photos[: 1 if case.startswith("standard") else 4]
            ]
            result[f"agreement_{case}"] = label_agreement(
                model, build_case_model(case, reference, args), inputs
            )
        del reference

    if not args.no_memory:
        for case in [f"plain_{s}" for s in PLAIN_SIZES] + cases:
            measured = case_memory(case, args)
            result[f"peak_mb_{case}"] = measured["peak_mb"]
            result[f"setup_mb_{case}"] = measured["setup_mb"]
            logger.info("%s: peak %.0f MB", case, measured["peak_mb"])

    if args.stages:
        result["stages_ms"] = {}
        for case in [c for c in STAGE_CASES if c in models]:
            inputs = [as_input(case_frame(case, models[case], photos[0]), device)]
            result["stages_ms"][case] = stage_table(models[case], inputs, device, args.repeats)
    return result


def label_agreement(model: CLIPtrase, reference: CLIPtrase, inputs: List[Dict]) -> float:
    """Fraction of output pixels where ``model`` predicts the class ``reference`` (fp32)
    predicts."""
    same = total = 0
    with torch.no_grad():
        for x in inputs:
            labels = model([x])[0]["sem_seg"].argmax(dim=0)
            expected = reference([x])[0]["sem_seg"].argmax(dim=0)
            same += int((labels == expected).sum())
            total += labels.numel()
    return same / total


def format_table(result: Dict) -> str:
    throughput = sorted(
        int(k[len("throughput_ratio_batch") :])
        for k in result
        if k.startswith("throughput_ratio_batch")
    )
    lines = [
        f"device {result['device']}, {result['threads']} threads, torch {result['torch']}, "
        f"{result['model']} "
        f"({result['precision']}, random weights), median of {result['repeats']}",
        "",
        "| case | classes | time (ms) | ratio | windows | peak memory (MB) | before the runs (MB) "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    for case in [f"plain_{s}" for s in PLAIN_SIZES] + [
        c for c in CASES if f"time_ms_{c}" in result
    ]:
        ratio = result.get(f"ratio_{case}", result.get(f"window_ratio_{case}"))
        peak, setup = result.get(f"peak_mb_{case}"), result.get(f"setup_mb_{case}")
        lines.append(
            f"| {case} | {result.get(f'classes_{case}', '')} | {result[f'time_ms_{case}']:.1f} | "
            f"{'' if ratio is None else f'{ratio:.3f}'} | {result.get(f'windows_{case}', '')} | "
            f"{'' if peak is None else f'{peak:.0f}'} | {'' if setup is None else f'{setup:.0f}'} |"
        )
        if f"time_ms_{case}_photo" in result:
            lines.append(
                f"| {case}, whole photo | {result.get(f'classes_{case}', '')} | "
                f"{result[f'time_ms_{case}_photo']:.1f} | {result[f'ratio_{case}_photo']:.3f} "
                "| | | |"
            )
    loader = [f"{c} {result[f'loader_ms_{c}']:.1f}" for c in CASES if f"loader_ms_{c}" in result]
    if loader:
        lines += ["", f"paper crops made by the test mapper (ms): {', '.join(loader)}"]
    if "images_per_s_batch1" in result:
        lines += [
            "",
            f"paper 224 throughput: batch 1 {result['images_per_s_batch1']:.2f} images/s, batch 4 "
            f"{result['images_per_s_batch4']:.2f} images/s ({result['batch4_speedup']:.2f}x); "
            f"the plain forward gains {result['plain_batch4_speedup']:.2f}x from the same batch",
        ]
    overheads = [
        f"{c} {result[f'overhead_ms_{c}']:.1f}" for c in CASES if f"overhead_ms_{c}" in result
    ]
    if overheads:
        lines += ["", f"time after the backbone (ms): {', '.join(overheads)}"]
    for size in throughput:
        lines.append(
            f"batch {size}: {result[f'throughput_batch{size}']:.1f} images/s, plain "
            f"{result[f'plain_throughput_batch{size}']:.1f} "
            f"({result[f'throughput_ratio_batch{size}']:.3f}x)"
        )
    agreements = [
        f"{case} {result[f'agreement_{case}']:.4f}"
        for case in CASES
        if f"agreement_{case}" in result
    ]
    if agreements:
        lines += [
            "",
            f"labels equal to fp32's (share of pixels, same weights): {', '.join(agreements)}",
        ]
    lines += [
        "",
        "ratio: time / plain forward at the same S (paper: forward on the test mapper's crop; "
        "'whole photo': forward given the decoded photo, crop included); time / (windows x "
        "plain_224 timed beside the standard cases) (standard).",
    ]
    stages = result.get("stages_ms")
    if stages:
        cases = list(stages)
        labels = list(dict.fromkeys(label for case in cases for label in stages[case]))
        labels = [label for label in labels if label != "total"] + ["total"]
        lines += ["", "| stage (ms) | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
        for label in labels:
            lines.append(
                f"| {label} | "
                + " | ".join(f"{stages[c].get(label, 0.0):.1f}" for c in cases)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    args = get_parser().parse_args(argv)
    if not args.glibc_malloc_defaults:
        tune_cpu_allocator()  # as the entry points do; both the plain and CLIPtrase runs get it
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_case:
        sys.stdout.write(json.dumps(measure_case_memory(args.memory_case, args)) + "\n")
        return {}
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    result = run_benchmark(args)
    sys.stdout.write(json.dumps(result) + "\n" if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
