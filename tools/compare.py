#!/usr/bin/env python
"""Every head on every dataset under one protocol, in one run: a Markdown and a CSV table of
mIoU and time per image.

    python tools/compare.py --config-file configs/standard/Base-standard.yaml \
        --heads cliptrase,clip,maskclip,sclip,clearclip,naclip,scclip,pearl,proxyclip \
        --datasets cliptrase_voc21_val,cliptrase_ade150_val --num-gpus 4 --output output/compare \
        MODEL.WEIGHTS weights/ViT-B-16.pt

By default CLIPtrase keeps the config's refinement and the other heads run as their authors
run them: PEARL with its TLP (REFINE tlp), the others without refinement; --refine
vote|mean|none|tlp applies one refinement to every head.
Each dataset gets the settings the protocol fixes for its benchmark, as the benchmark's config in
configs/<protocol>/ sets them (Cityscapes' shorter side 560, COCO-Stuff's 448, VOC20's image-logit
weighting under the paper protocol); the command line's overrides win.
Time per image is wall-clock inference time (text embeddings computed beforehand) divided by
the number of images, with all processes working in parallel.

Two tables (docs/peer_protocols.md): compare.{md,csv}, every head under the config's protocol,
and compare_published.{md,csv}, each peer head under its authors' published setting
(configs/<head>/published/) on the datasets whose benchmark it reported (--no-published: not).
"""

import argparse
import csv
import io
import logging
import os
import time

import yaml

import cliptrase_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cliptrase_d2.config import load_config
from cliptrase_d2.data.datasets import require_registered
from cliptrase_d2.engine.checks import check_num_processes, claim_output_dir
from cliptrase_d2.engine.launch import run_launched
from cliptrase_d2.engine.trainer import Trainer
from cliptrase_d2.atomic import atomic_write_text
from cliptrase_d2.method.heads import HEADS
from cliptrase_d2.modeling.settings import head_refinement
from cliptrase_d2.vocabulary import peer_vocabulary_keys
from cliptrase_d2.errors import ConfigError
from benchmark import markdown_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

logger = logging.getLogger("cliptrase_d2.compare")


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        required=True,
        help="the protocol's config (e.g. configs/standard/Base-standard.yaml)",
    )
    parser.add_argument(
        "--heads", default="cliptrase,clip,maskclip,sclip,clearclip,naclip,scclip,pearl,proxyclip"
    )
    parser.add_argument(
        "--datasets", required=True, help="comma-separated registered dataset names"
    )
    parser.add_argument(
        "--refine", choices=["default", "vote", "mean", "none", "tlp"], default="default"
    )
    parser.add_argument(
        "--output", default="output/compare", help="folder for compare.md and compare.csv"
    )
    parser.add_argument(
        "--no-published",
        action="store_true",
        help="skip the second table (peer heads under their published settings)",
    )
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes (GPUs, or CPU processes without CUDA)"
    )
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def parse_list(text: str, allowed, what: str):
    # each once, in the order given: a repeated name would be evaluated and tabled twice
    items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    unknown = [item for item in items if item not in allowed]
    if not items or unknown:
        raise ConfigError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(sorted(allowed))}"
        )
    return items


# --refine default: each head's own refinement (None: the config's); heads not named: "none"
def head_opts(head: str, refine: str):
    chosen = refine if refine != "default" else head_refinement(head)
    return ["MODEL.CLIPTRASE.HEAD", head] + (["MODEL.CLIPTRASE.REFINE", chosen] if chosen else [])


def benchmark_opts(config_file: str, dataset: str):
    """KEY VALUE of the MODEL.CLIPTRASE settings that the protocol of ``config_file`` fixes for
    the dataset's benchmark, as the benchmark's own config sets them over the protocol's base
    (configs/standard/<benchmark>.yaml, configs/paper/<benchmark>_<S>.yaml): Cityscapes' and
    COCO-Stuff's shorter side, VOC20's image-logit weighting under the paper protocol."""
    c = load_config(config_file).MODEL.CLIPTRASE
    benchmark = MetadataCatalog.get(dataset).get("vocabulary", None)
    size = f"_{c.PAPER_SIZE}" if c.PROTOCOL == "paper" else ""
    path = os.path.join(REPO, "configs", c.PROTOCOL, f"{benchmark}{size}.yaml")
    if not isinstance(benchmark, str) or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        own = (yaml.safe_load(f).get("MODEL") or {}).get("CLIPTRASE") or {}
    return [item for key, value in own.items() for item in (f"MODEL.CLIPTRASE.{key}", str(value))]


def evaluate(head: str, dataset: str, args):
    """(mIoU, seconds per image) of one head on one dataset, with the settings the protocol
    fixes for its benchmark (overridden by the command line's); only the main process gets
    numbers."""
    fixed = benchmark_opts(args.config_file, dataset)
    output = os.path.join(args.output, head)
    return timed_test(args.config_file, head_opts(head, args.refine), dataset, output, args, fixed)


def published_config(head: str, dataset: str):
    """configs/<head>/published/<benchmark>.yaml for the dataset's benchmark, or None when the
    head's authors did not report that benchmark (or the head is not a peer's)."""
    benchmark = MetadataCatalog.get(dataset).get("vocabulary", None)
    if not isinstance(benchmark, str) or f"{head}/{benchmark}" not in peer_vocabulary_keys():
        return None
    return os.path.join(REPO, "configs", head, "published", f"{benchmark}.yaml")


def evaluate_published(head: str, dataset: str, args):
    """(mIoU, seconds per image) of a peer head under its published setting for the dataset."""
    output = os.path.join(args.output, "published", head)
    return timed_test(published_config(head, dataset), [], dataset, output, args)


def timed_test(config_file: str, opts, dataset: str, output: str, args, fixed=()):
    """(mIoU, seconds per image) of one evaluation on ``dataset`` (``config_file``, ``fixed``, the
    command line's overrides, then ``opts``), its results in ``output``; None on the other
    processes."""
    cfg = load_config(
        config_file,
        [*fixed, *args.opts, *opts, "DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR", output],
    )
    model = Trainer.build_model(cfg)
    model.text_embeddings(model.vocabulary_for({"dataset_name": dataset}))  # encoded before timing
    comm.synchronize()
    start = time.perf_counter()
    results = Trainer.test(cfg, model)
    comm.synchronize()
    seconds = time.perf_counter() - start
    images = len(DatasetCatalog.get(dataset))
    if not comm.is_main_process():
        return None
    return results["sem_seg"]["mIoU"], seconds / max(images, 1)  # one dataset: not keyed by name


def tables(heads, datasets, cells, num_processes, title: str = ""):
    """Markdown and CSV; a cell not evaluated yet is '-' (the table is rewritten after each run)."""

    def cell(h, d, index, form):
        return format(cells[h, d][index], form) if (h, d) in cells else "-"

    header = ["head"] + [f"{d} mIoU" for d in datasets] + [f"{d} s/img" for d in datasets]
    rows = [
        [h] + [cell(h, d, 0, ".2f") for d in datasets] + [cell(h, d, 1, ".3f") for d in datasets]
        for h in heads
    ]
    markdown = "\n".join(([title, ""] if title else []) + markdown_table(header, rows))
    markdown += (
        "\n\nTime per image: wall-clock inference of the whole dataset / images, "
        f"{num_processes} process(es).\n"
    )
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header] + rows)
    return markdown, buffer.getvalue()


def main(args):
    setup_logger(name="cliptrase_d2", distributed_rank=comm.get_rank())
    heads = parse_list(args.heads, HEADS, "head")
    datasets = parse_list(args.datasets, DatasetCatalog.list(), "dataset")
    pairs = [(head, dataset) for dataset in datasets for head in heads]
    cells = run_table(heads, datasets, pairs, evaluate, args, "compare")
    if args.no_published:
        return cells
    # the second table: every peer head under its published setting, on the datasets of the
    # benchmarks it reported ('-' elsewhere)
    peers = [h for h in heads if any(published_config(h, d) for d in datasets)]
    pairs = [(h, d) for h, d in pairs if published_config(h, d) is not None]
    title = "Each peer under its authors' published setting (configs/<head>/published/)"
    published = run_table(
        peers, datasets, pairs, evaluate_published, args, "compare_published", title
    )
    return {**cells, **{("published", *key): value for key, value in published.items()}}


def run_table(heads, datasets, pairs, evaluate_pair, args, name: str, title: str = ""):
    """``evaluate_pair`` on each (head, dataset) of ``pairs``; <name>.{md,csv} in --output are
    rewritten after every run, so that a later failure keeps what is done."""
    cells = {}
    for head, dataset in pairs:
        cells[head, dataset] = evaluate_pair(head, dataset, args)
        if comm.is_main_process():
            markdown, table = tables(heads, datasets, cells, comm.get_world_size(), title)
            atomic_write_text(os.path.join(args.output, f"{name}.md"), markdown)
            atomic_write_text(os.path.join(args.output, f"{name}.csv"), table)
    if cells and comm.is_main_process():
        logger.info("%s written to %s/%s.{md,csv}:\n%s", name, args.output, name, markdown)
    return cells


# what a comparison writes in --output: its tables and each evaluation's results
OUTPUTS = ("compare*.md", "compare*.csv", "*/sem_seg_results_*.json", "*/predictions")
OUTPUTS += tuple(f"published/{pattern}" for pattern in OUTPUTS[2:])


def validate(args):
    """The checks before any work (in the launching process): heads, datasets, process count,
    the config file, its keys and values and the device, the datasets' files; then machine 0
    claims --output (a lock against a concurrent comparison into it; the tables and results
    earlier comparisons wrote there moved to its previous/<n>/ folder, the user's own files left
    alone)."""
    parse_list(args.heads, HEADS, "head")
    datasets = parse_list(args.datasets, DatasetCatalog.list(), "dataset")
    check_num_processes(args.num_gpus, args.num_machines, args.machine_rank)
    load_config(args.config_file, args.opts)
    for dataset in datasets:  # a missing folder is named now, not after the datasets before it
        require_registered(dataset, files=True)
    claim_output_dir(args.output, "--output", results=OUTPUTS, machine_rank=args.machine_rank)


if __name__ == "__main__":
    run_launched(main, get_parser().parse_args(), validate)
