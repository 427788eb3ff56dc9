#!/usr/bin/env python
"""Speed and memory of CLIPtrase inference against a plain open_clip dense forward.

    python tools/benchmark.py                      # CPU, table
    python tools/benchmark.py --device cuda --json # one JSON object on stdout
    python tools/benchmark.py --stages             # also: where the time goes, stage by stage

Each case's model and input are what evaluation builds (its config with ViLD's 14 templates,
Detectron2's ``build_model``, the test mapper; random open_clip weights unless --weights, and a
random VFM, both seeded).
docs/SPEED.md defines every figure, says how each is measured and records the measurements.
"""

import argparse
import functools
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List, Tuple

import cliptrase_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
import numpy as np
import open_clip
import torch
from detectron2.modeling import build_model
from PIL import Image
from torch.autograd import DeviceType
from torch.utils.benchmark import Measurement, Timer

from cliptrase_d2.clip_loading import PRECISIONS, build_clip, open_clip_model_name
from cliptrase_d2.config import check_argument, check_device, load_config
from cliptrase_d2.data.dataset_mapper import SemSegTestMapper
from cliptrase_d2.data.image_io import read_rgb
from cliptrase_d2.engine.allocator import tune_cpu_allocator
from cliptrase_d2.errors import ConfigError, WeightsError, exit_on_user_error, invalid_value
from cliptrase_d2.method.preprocess import keep_ratio_size
from cliptrase_d2.method.sliding import window_boxes
from cliptrase_d2.modeling.vfm import VFMS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(
    os.environ.get("CLIPTRASE_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures")), "images"
)
# case -> (config file, photo size (H, W) or None for the paper protocol's whole photo[, the
# case's own config overrides])
CASES = {
    "paper_224": ("configs/paper/pc59_224.yaml", None),
    "paper_336": ("configs/paper/pc59_336.yaml", None),
    "standard_512x683": ("configs/standard/ade150.yaml", (512, 683)),
    "standard_1024x2048": ("configs/standard/cityscapes19.yaml", (1024, 2048)),
    "standard_1024x2048_k150": ("configs/standard/ade150.yaml", (1024, 2048)),
    "proxyclip_512x683": (
        "configs/proxyclip/standard.yaml",
        (512, 683),
        {"DATASETS.TEST": "('cliptrase_ade150_val',)"},
    ),
}
PLAIN_SIZES = (224, 336)
STANDARD_PLAIN = "plain_224_beside_standard"  # the standard cases' unit, timed in their turns
STAGE_CASES = ("paper_224", "paper_336", "standard_512x683")

logger = logging.getLogger("cliptrase_d2.benchmark")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other bad argument
        raise ConfigError(message)


def get_parser():
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--model",
        default="ViT-B-16-quickgelu",
        help="open_clip model name or model-config JSON (MODEL.CLIPTRASE.CLIP_MODEL)",
    )
    parser.add_argument(  # a quoted "~/w.pt" is the home folder's, as evaluation reads it
        "--weights", default="", type=os.path.expanduser, help="MODEL.WEIGHTS (default: random)"
    )
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument(
        "--vfm", default="dino_vitb8", choices=list(VFMS), help="the proxyclip case's VFM"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--image", default="", type=os.path.expanduser, help="photo of each case (fixtures')"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES)
    )
    parser.add_argument("--stages", action="store_true", help="also print the stage table")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument(
        "--glibc-malloc-defaults",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the entry points tune them: "
        "cliptrase_d2/engine/allocator.py)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated batch sizes for the throughput rows "
        "(default 1,8,32 on CUDA, none on CPU)",
    )
    parser.set_defaults(text_cache="none")  # run_benchmark's shared text-embedding folder
    return parser


def check_arguments(args) -> None:
    """Refuses a bad argument with one line before any work; fills in the defaults that depend
    on the device (``args.cases`` and ``args.batch_sizes`` become lists)."""
    check_device(args.device, "--device")
    if torch.device(args.device).type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda (cuda:N), got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    check_argument("--repeats", args.repeats, int, 1)
    check_argument("--warmup", args.warmup, int, 0)
    cpus = os.cpu_count() or 1  # more threads than CPUs time the scheduler (100000: a crash)
    if not 0 <= args.threads <= cpus:
        raise invalid_value("--threads", args.threads, f"from 0 (default) to the {cpus} CPUs")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    check_argument("--cases", args.cases, choices=list(CASES))
    if not args.cases:
        raise ConfigError(f"--cases must name at least one of {', '.join(CASES)}")
    sizes = args.batch_sizes or ("1,8,32" if args.device.startswith("cuda") else "")
    try:
        args.batch_sizes = [int(n) for n in sizes.split(",") if n.strip()]
    except ValueError:
        raise invalid_value("--batch-sizes", sizes, "comma-separated whole numbers") from None
    if args.batch_sizes:
        check_argument("--batch-sizes", args.batch_sizes, int, 1)
    if args.batch_sizes and "paper_224" not in args.cases:
        raise ConfigError("--batch-sizes needs the paper_224 case (--cases)")
    try:  # a model-config JSON is checked and registered as evaluation does it
        open_clip_model_name(args.model)
    except WeightsError as error:
        raise ConfigError(f"--model {args.model}: {error}") from None
    try:  # a missing or damaged file, one that does not fit --model: as evaluation reads it
        if args.weights:
            build_clip(args.model, args.weights)
    except WeightsError as error:
        raise ConfigError(f"--weights {args.weights}: {error}") from None
    if args.image:
        read_rgb(args.image)  # an InputError for anything Pillow cannot read as an image


# ---- models and inputs -----------------------------------------------------------------------


def random_weights(model: str, folder: str) -> str:
    """A state-dict file of open_clip's own random initialisation of ``model`` (seeded)."""
    torch.manual_seed(0)
    path = os.path.join(folder, "random_weights.pt")
    torch.save(open_clip.create_model(open_clip_model_name(model)).state_dict(), path)
    return path


def case_config(case: str, args, precision: str = ""):
    config, _, *case_overrides = CASES[case]
    overrides = {
        "MODEL.CLIPTRASE.CLIP_MODEL": args.model,
        "MODEL.WEIGHTS": args.weights,
        "MODEL.CLIPTRASE.PRECISION": precision or args.precision,
        "MODEL.CLIPTRASE.TEMPLATES": "vild14",
        "MODEL.CLIPTRASE.TEXT_CACHE_DIR": args.text_cache,
        "MODEL.CLIPTRASE.PROXYCLIP.VFM": args.vfm,
        "MODEL.CLIPTRASE.PROXYCLIP.VFM_WEIGHTS": "random",
        "MODEL.DEVICE": args.device,
        **dict(*case_overrides),
    }
    opts = [item for pair in overrides.items() for item in pair]
    return load_config(os.path.join(REPO, config), opts)


def build_case(case: str, args, precision: str = ""):
    """(model, config) as evaluation builds them for ``case``, in eval mode (its random VFM the
    same at every build: the fp32 reference of --precision has the same weights)."""
    cfg = case_config(case, args, precision)
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def photo_files(args, folder: str) -> Dict[object, List[str]]:
    """Photo files by case size (None: as they are): --image, else the fixtures' four photos,
    else a synthetic scene; resized copies (PIL bicubic) are written to ``folder``."""
    names = ("astronaut.png", "coffee.png", "chelsea.png", "vocsample.png")
    files = [os.path.join(PHOTOS, n) for n in names]
    if args.image:
        files = [args.image]
    elif not all(map(os.path.exists, files)):
        rows, cols = np.mgrid[0:480, 0:640]
        scene = [rows * 255 // 480, cols * 255 // 640, (rows // 60 + cols // 80) % 2 * 255]
        files = [os.path.join(folder, "scene.png")]
        Image.fromarray(np.stack(scene, -1).astype(np.uint8)).save(files[0])
    by_size = {None: files}
    for size in {CASES[case][1] for case in args.cases} - {None}:
        by_size[size] = []
        for index, file in enumerate(files):
            resized = Image.fromarray(read_rgb(file)).resize(size[::-1], Image.BICUBIC)
            by_size[size].append(os.path.join(folder, f"{index}_{size[0]}x{size[1]}.png"))
            resized.save(by_size[size][-1])
    return by_size


def loader_inputs(cfg, files: List[str], device="cpu") -> List[Dict]:
    """What evaluation's test mapper gives the model for these photo files (images on
    ``device``)."""
    mapper = SemSegTestMapper(cfg)
    records = [{"file_name": f, "dataset_name": cfg.DATASETS.TEST[0]} for f in files]
    return [{**x, "image": x["image"].to(device)} for x in map(mapper, records)]


def paper_crops(cfg, files: List[str], device) -> torch.Tensor:
    """The test mapper's paper crops of ``files`` as (B, 3, S, S) float 0-255."""
    return torch.stack([x["image"] for x in loader_inputs(cfg, files)]).float().to(device)


def whole_photo(file: str, cfg, device) -> Dict:
    """The decoded photo, uncropped, as a direct caller gives it to the model."""
    image = torch.tensor(read_rgb(file, exif_orientation=False)).permute(2, 0, 1)
    return {
        "image": image.contiguous().to(device),
        "height": image.shape[1],
        "width": image.shape[2],
        "dataset_name": cfg.DATASETS.TEST[0],
    }


def number_of_windows(cfg, size) -> int:
    """Sliding windows the standard protocol runs on a photo of ``size`` (its keep-ratio resize:
    mmseg's, with its long-side cap)."""
    c = cfg.MODEL.CLIPTRASE
    height, width = keep_ratio_size(*size, c.STANDARD_SHORT_SIDE, c.STANDARD_LONG_SIDE)
    return len(window_boxes(height, width, c.WINDOW_SIZE, c.WINDOW_STRIDE))


def plain_forward(args, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """open_clip's own dense forward at ``size``: every token of the last block, patch tokens
    projected, (B, 3, S, S) RGB crops (0-255) normalized first."""
    clip = open_clip.create_model(
        open_clip_model_name(args.model),
        force_image_size=size,
        precision=PRECISIONS[args.precision],
        device=args.device,
    )
    visual = clip.visual.eval()
    visual.output_tokens = True
    dtype = visual.conv1.weight.dtype
    mean, std = (
        torch.tensor(v, device=args.device).view(3, 1, 1)
        for v in (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    )

    def run(crops):
        _, tokens = visual(((crops / 255 - mean) / std).to(dtype))
        return tokens @ visual.proj  # (B, n, E)

    return run


# ---- clocks ----------------------------------------------------------------------------------


def median_ms(runs: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median milliseconds of each run: --repeats rounds of turns, the order reversed every other
    round, each turn one ``blocked_autorange`` (docs/SPEED.md)."""
    threads = torch.get_num_threads()
    timers = {
        n: Timer("run()", globals={"run": r}, label=n, num_threads=threads) for n, r in runs.items()
    }
    measured = defaultdict(list)
    with torch.no_grad():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for round_index in range(repeats):
            names = list(timers) if round_index % 2 == 0 else list(timers)[::-1]
            for name in names:
                measured[name].append(timers[name].blocked_autorange(min_run_time=0))
    return {name: 1000 * Measurement.merge(m)[0].median for name, m in measured.items()}


def profile_forward(forward: Callable[[], object], device) -> Tuple[float, float, Dict[str, float]]:
    """One ``forward`` under torch.profiler -> (its milliseconds, the milliseconds from its start
    to its first ``cliptrase/backbone`` call, the exclusive milliseconds of every ``cliptrase/``
    label: its kernels' device time on CUDA, else its CPU time; nested labels are left out)."""
    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    with torch.no_grad(), torch.profiler.profile(activities=activities) as profile:
        with torch.profiler.record_function("benchmark/forward"):
            forward()
            if cuda:
                torch.cuda.synchronize(device)
    events = [e for e in profile.events() if e.device_type == DeviceType.CPU]
    whole = next(e for e in events if e.name == "benchmark/forward")
    stages = defaultdict(float)
    for event in events:
        if not event.name.startswith("cliptrase/"):
            continue
        spent = (event.device_time_total if cuda else event.cpu_time_total) / 1000
        stages[event.name[len("cliptrase/") :]] += spent
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("cliptrase/"):
            parent = parent.cpu_parent
        if parent is not None:
            stages[parent.name[len("cliptrase/") :]] -= spent
    backbones = [e.time_range.start for e in events if e.name == "cliptrase/backbone"]
    before = (min(backbones) - whole.time_range.start) / 1000 if backbones else float("nan")
    return whole.cpu_time_total / 1000, before, dict(stages)


def profiled_stages(forward, device, repeats: int) -> Tuple[float, float, Dict[str, float]]:
    """Over ``repeats`` profiled forwards, the medians of: the time after the backbone
    (docs/SPEED.md), the whole forward, and each stage (with "other" and "total")."""
    overheads, totals, runs = [], [], []
    for _ in range(repeats):
        total, before, stages = profile_forward(forward, device)
        overheads.append(total - before - stages.get("backbone", 0.0))
        totals.append(total)
        runs.append({**stages, "other": total - sum(stages.values()), "total": total})
    labels = list(dict.fromkeys(label for run in runs for label in run))
    table = {label: statistics.median(run.get(label, 0.0) for run in runs) for label in labels}
    return statistics.median(overheads), statistics.median(totals), table


# ---- memory ----------------------------------------------------------------------------------


def memory_mb(device: torch.device, peak: bool) -> float:
    """Memory in use now, or its peak: on CUDA allocated by torch, on CPU resident (VmRSS/VmHWM)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        used = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return used(device) / 2**20
    with open("/proc/self/status") as f:
        field = "VmHWM:" if peak else "VmRSS:"
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field))


def measure_memory(case: str, args) -> Dict:
    """In this (fresh) process: builds only ``case``'s model, runs it once, and reports the
    memory in use then (model, libraries) and the peak of two more runs."""
    set_up_process(args)
    args = argparse.Namespace(**{**vars(args), "cases": [case] if case in CASES else []})
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        files = photo_files(args, folder)
        if case.startswith("plain_"):
            size = int(case.split("_")[1])
            cfg = case_config(f"paper_{size}", args)
            run, crops = plain_forward(args, size), paper_crops(cfg, files[None][:1], device)
            work = functools.partial(run, crops)
        else:
            model, cfg = build_case(case, args)
            inputs = loader_inputs(cfg, files[CASES[case][1]][:1], device)
            work = functools.partial(model, inputs)
        work()
        setup = memory_mb(device, peak=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
        work()
        work()
        return {"peak_mb": memory_mb(device, peak=True), "setup_mb": setup}


def case_memory(case: str, args) -> Dict:
    """Runs ``measure_memory`` in a fresh interpreter (no other model resident)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        return fresh.submit(measure_memory, case, args).result()


# ---- the benchmark ---------------------------------------------------------------------------


def run_benchmark(args) -> Dict:
    """Every figure of docs/SPEED.md for ``args`` (checked by ``check_arguments``)."""
    with tempfile.TemporaryDirectory() as folder:
        args.weights = args.weights or random_weights(args.model, folder)
        if args.text_cache == "none":  # the cases of one vocabulary encode it once
            args.text_cache = os.path.join(folder, "text")
        return measure(args, photo_files(args, folder))


def measure(args, photos: Dict[object, List[str]]) -> Dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the device torch.utils.benchmark synchronizes
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "precision": args.precision,
        "repeats": args.repeats,
        "photos": len(photos[None]),
    }
    runs, models, crops = {}, {}, {}
    for size in PLAIN_SIZES:  # the paper crops of every photo
        crops[size] = paper_crops(case_config(f"paper_{size}", args), photos[None], device)
        runs[f"plain_{size}"] = functools.partial(plain_forward(args, size), crops[size][:1])
    for case in args.cases:
        model, cfg = models[case] = build_case(case, args)
        runs[case] = functools.partial(
            model, loader_inputs(cfg, photos[CASES[case][1]][:1], device)
        )
        with torch.no_grad():  # encodes the vocabulary, as evaluation does once
            result[f"classes_{case}"] = runs[case]()[0]["sem_seg"].shape[0]
        if case.startswith("paper_"):
            photo = [whole_photo(photos[None][0], cfg, device)]
            runs[f"{case}_photo"] = functools.partial(model, photo)
            record = {"file_name": photos[None][0], "dataset_name": cfg.DATASETS.TEST[0]}
            runs[f"loader_{case}"] = functools.partial(SemSegTestMapper(cfg), record)
        if model.vfm is not None:  # its VFM alone on one CLIP-normalized window
            window = (crops[224][:1] / 255 - model.pixel_mean) / model.pixel_std
            runs[f"vfm_{case}"] = functools.partial(model.vfm, window)
    if "paper_224" in models:
        model, cfg = models["paper_224"]
        batch = loader_inputs(cfg, (photos[None] * 4)[:4], device)
        plain = runs["plain_224"].func  # the plain 224 forward, on other crops
        four = torch.cat([crops[224]] * 4)[:4]
        runs["batch1"] = lambda: [model([x]) for x in batch]
        runs["batch4"] = lambda: model(batch)
        runs["plain_batch1"] = lambda: [plain(four[i : i + 1]) for i in range(4)]
        runs["plain_batch4"] = lambda: plain(four)
        for n in args.batch_sizes:
            many = loader_inputs(cfg, (photos[None] * n)[:n], device)
            runs[f"batch{n}_n"] = functools.partial(model, many)
            runs[f"plain_batch{n}_n"] = functools.partial(plain, torch.cat([crops[224]] * n)[:n])
    standard = [name for name in runs if name.startswith(("standard_", "proxyclip_", "vfm_"))]
    times = median_ms(
        {n: r for n, r in runs.items() if n not in standard}, args.repeats, args.warmup
    )
    if standard:
        group = {STANDARD_PLAIN: runs["plain_224"], **{n: runs[n] for n in standard}}
        times.update(median_ms(group, args.repeats, args.warmup))

    for name in [f"plain_{s}" for s in PLAIN_SIZES] + [STANDARD_PLAIN] * bool(standard):
        result[f"time_ms_{name}"] = times[name]
    for case, (model, cfg) in models.items():
        result[f"time_ms_{case}"] = times[case]
        if case.startswith("paper_"):
            plain = times[f"plain_{cfg.MODEL.CLIPTRASE.PAPER_SIZE}"]
            result[f"ratio_{case}"] = times[case] / plain
            result[f"time_ms_{case}_photo"] = times[f"{case}_photo"]
            result[f"ratio_{case}_photo"] = times[f"{case}_photo"] / plain
            result[f"loader_ms_{case}"] = times[f"loader_{case}"]
        else:
            windows = result[f"windows_{case}"] = number_of_windows(cfg, CASES[case][1])
            result[f"window_ratio_{case}"] = times[case] / (windows * times[STANDARD_PLAIN])
        if model.vfm is not None:
            result[f"vfm_ms_{case}"] = times[f"vfm_{case}"]
            floor = result[f"floor_ms_{case}"] = windows * (
                times[STANDARD_PLAIN] + times[f"vfm_{case}"]
            )
            result[f"floor_ratio_{case}"] = times[case] / floor
        overhead, forward, stages = profiled_stages(runs[case], device, args.repeats)
        result[f"overhead_ms_{case}"] = overhead
        result[f"overhead_forward_ms_{case}"] = forward
        if case.startswith("paper_"):
            result[f"overhead_share_{case}"] = overhead / plain
        if args.stages and case in STAGE_CASES:
            result.setdefault("stages_ms", {})[case] = stages
    for n in args.batch_sizes:
        result[f"throughput_batch{n}"] = 1000 * n / times[f"batch{n}_n"]
        result[f"plain_throughput_batch{n}"] = 1000 * n / times[f"plain_batch{n}_n"]
        result[f"throughput_ratio_batch{n}"] = times[f"plain_batch{n}_n"] / times[f"batch{n}_n"]
    if "batch4" in times:
        result["images_per_s_batch1"] = 4000 / times["batch1"]
        result["images_per_s_batch4"] = 4000 / times["batch4"]
        result["batch4_speedup"] = times["batch1"] / times["batch4"]
        result["plain_batch4_speedup"] = times["plain_batch1"] / times["plain_batch4"]

    if args.precision != "fp32":
        for case, (model, cfg) in models.items():
            count = 1 if CASES[case][1] else 4
            checked = loader_inputs(cfg, photos[CASES[case][1]][:count], device)
            reference = build_case(case, args, "fp32")[0]
            result[f"agreement_{case}"] = label_agreement(model, reference, checked)
            del reference
    if not args.no_memory:
        for case in [f"plain_{s}" for s in PLAIN_SIZES] + args.cases:
            measured = case_memory(case, args)
            result[f"peak_mb_{case}"] = measured["peak_mb"]
            result[f"setup_mb_{case}"] = measured["setup_mb"]
            logger.info("%s: peak %.0f MB", case, measured["peak_mb"])
    return result


def label_agreement(model, reference, inputs: List[Dict]) -> float:
    """Share of output pixels where ``model`` predicts the class ``reference`` (fp32) predicts."""
    same = total = 0
    with torch.no_grad():
        for x in inputs:
            labels = model([x])[0]["sem_seg"].argmax(dim=0)
            same += int((labels == reference([x])[0]["sem_seg"].argmax(dim=0)).sum())
            total += labels.numel()
    return same / total


def markdown_table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_table(result: Dict) -> str:
    def number(key, form):
        return format(result[key], form) if key in result else ""

    def rows(prefix, form):
        return ", ".join(f"{c} {result[prefix + c]:{form}}" for c in CASES if prefix + c in result)

    cases = [f"plain_{s}" for s in PLAIN_SIZES] + [c for c in CASES if f"time_ms_{c}" in result]
    table = []
    for case in cases:
        keys = (f"ratio_{case}", f"floor_ratio_{case}", f"window_ratio_{case}")
        ratio = next((key for key in keys if key in result), "")
        classes, windows = (
            str(result.get(f"{name}_{case}", "")) for name in ("classes", "windows")
        )
        table.append(
            [case, classes, number(f"time_ms_{case}", ".1f"), number(ratio, ".3f"), windows]
            + [number(f"peak_mb_{case}", ".0f"), number(f"setup_mb_{case}", ".0f")]
        )
        if f"time_ms_{case}_photo" in result:
            photo = [number(f"time_ms_{case}_photo", ".1f"), number(f"ratio_{case}_photo", ".3f")]
            table.append([f"{case}, whole photo", classes, *photo, "", "", ""])
    header = ["case", "classes", "time (ms)", "ratio", "windows", "peak memory (MB)"]
    lines = [
        f"device {result['device']}, {result['threads']} threads, torch {result['torch']}, "
        f"{result['model']} ({result['precision']}), median of {result['repeats']}",
        "",
        *markdown_table(header + ["before runs (MB)"], table),
    ]
    if rows("loader_ms_", ".1f"):
        lines += ["", f"test mapper, decode and crop (ms): {rows('loader_ms_', '.1f')}"]
    if "images_per_s_batch1" in result:
        lines += [
            "",
            f"paper 224 throughput: batch 1 {result['images_per_s_batch1']:.2f} images/s, batch 4 "
            f"{result['images_per_s_batch4']:.2f} images/s ({result['batch4_speedup']:.2f}x); "
            f"the plain forward gains {result['plain_batch4_speedup']:.2f}x from the same batch",
        ]
    lines += ["", f"time after the backbone (ms): {rows('overhead_ms_', '.1f')}"]
    for case in [c for c in CASES if f"floor_ms_{c}" in result]:
        lines.append(
            f"{case}: floor {result[f'floor_ms_{case}']:.1f} ms = {result[f'windows_{case}']} "
            f"windows x (plain 224 {result[f'time_ms_{STANDARD_PLAIN}']:.1f} + VFM "
            f"{result[f'vfm_ms_{case}']:.1f} ms); time / (windows x plain 224) "
            f"{result[f'window_ratio_{case}']:.3f}"
        )
    for key in [k for k in result if k.startswith("throughput_ratio_batch")]:
        n = key[len("throughput_ratio_batch") :]
        lines.append(
            f"batch {n}: {result[f'throughput_batch{n}']:.1f} images/s, plain "
            f"{result[f'plain_throughput_batch{n}']:.1f} ({result[key]:.3f}x)"
        )
    if rows("agreement_", ".4f"):
        agreements = rows("agreement_", ".4f")
        lines += ["", f"labels equal to fp32's (share of pixels, same weights): {agreements}"]
    lines += [
        "",
        "ratio: time / plain forward at the same S (paper: forward on the test mapper's crop; "
        "'whole photo': forward given the decoded photo, crop included); time / (windows x "
        "plain_224 timed beside the standard cases) (standard); time / floor (proxyclip).",
    ]
    stages = result.get("stages_ms", {})
    if stages:
        labels = list(dict.fromkeys(label for case in stages for label in stages[case]))
        labels = [label for label in labels if label not in ("other", "total")] + ["other", "total"]
        values = [
            [label] + [f"{stages[c].get(label, 0.0):.1f}" for c in stages] for label in labels
        ]
        lines += ["", *markdown_table(["stage (ms)", *stages], values)]
    return "\n".join(lines) + "\n"


def set_up_process(args) -> None:
    """glibc's malloc thresholds as the entry points set them (both the plain and the CLIPtrase
    runs get them) and --threads, in the benchmark's process and in each fresh one."""
    if not args.glibc_malloc_defaults:
        tune_cpu_allocator()
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def main(argv=None) -> Dict:
    args = get_parser().parse_args(argv)
    check_arguments(args)
    set_up_process(args)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # the libraries' own INFO lines stay quiet
    result = run_benchmark(args)
    sys.stdout.write(json.dumps(result) + "\n" if args.json else format_table(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main)
