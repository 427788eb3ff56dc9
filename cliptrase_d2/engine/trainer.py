"""Evaluation with Detectron2's DefaultTrainer machinery: evaluators and test loaders per
protocol, and the checks before an evaluation starts (``validate``)."""

import logging
import os
import sys
from pathlib import Path

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..atomic import atomic_paths, recorded_files
from ..config import add_cliptrase_config, check_device, load_config, resolve_device
from ..data.dataset_mapper import SemSegTestMapper
from ..data.loader import build_test_loader
from ..data.datasets import require_registered
from ..evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator
from ..evaluation.sem_seg_evaluation import saved_predictions
from ..errors import ConfigError
from .allocator import tune_cpu_allocator
from .checks import RESULT_PATTERNS, check_num_processes, claim_output_dir

__all__ = [
    "RUN_OUTPUTS",
    "evaluated_run",
    "Trainer",
    "log_model",
    "save_config",
    "setup",
    "start_logging",
    "validate",
]

logger = logging.getLogger("cliptrase_d2")


# what an evaluation writes in its output folder (config.yaml: save_config), claimed by each tool
RUN_OUTPUTS = (*RESULT_PATTERNS, "config.yaml")

# settings a resumed run may change: they do not change a prediction (OUTPUT_DIR: the config.yaml
# compared is that folder's own, however the path is spelled and wherever the folder moved)
RESUMABLE_CHANGES = ("MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "TEST.IMS_PER_BATCH", "OUTPUT_DIR")


def _flat(cfg: CfgNode) -> dict:
    """``{"MODEL.DEVICE": "cpu", ...}``: detectron2's flattening, with the config's separator."""
    return {key.replace("/", "."): value for key, value in flatten_results_dict(cfg).items()}


def check_resumable(cfg) -> None:
    """ConfigError naming the settings that differ from the run in OUTPUT_DIR (its config.yaml)
    that ``--resume`` would continue: predictions of other settings must not be mixed."""
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    listed = "config.yaml" in recorded_files(cfg.OUTPUT_DIR)  # a run's (the claim refuses others)
    if not listed or not os.path.isfile(saved):
        return
    try:
        with open(saved, encoding="utf-8") as f:
            earlier = _flat(CfgNode.load_cfg(f))
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as error:  # damaged since
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            f"--resume: {saved}, the settings of the run it would continue, cannot be read "
            f"({reason}): run without --resume (its files then move to OUTPUT_DIR/previous/)"
        ) from None
    defaults = get_cfg()
    add_cliptrase_config(defaults)
    # a key the earlier config lacks (another detectron2 version wrote it) had its default
    earlier = {**_flat(CfgNode.load_cfg(defaults.dump())), **earlier}
    now = _flat(CfgNode.load_cfg(cfg.dump()))  # all through YAML: lists and tuples alike
    changed = [
        f"{key} {earlier.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if key not in RESUMABLE_CHANGES and earlier.get(key) != value
    ]
    if changed:
        raise ConfigError(
            f"--resume: the run in {cfg.OUTPUT_DIR} had other settings ({'; '.join(changed[:3])}"
            f"{'; ...' if len(changed) > 3 else ''}): resume it with its own settings, or run "
            "without --resume (its files then move to OUTPUT_DIR/previous/)"
        )


def validate(args):
    """The checks before any work (in the launching process, before workers start): the process
    count, the config file and its values, the datasets, the device; with ``--resume``, that the
    earlier run had this run's settings. Then claims OUTPUT_DIR (``claim_output_dir``)."""
    check_num_processes(args.num_gpus, args.num_machines, args.machine_rank)
    cfg = load_config(args.config_file, args.opts, resolve=False)
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            "DATASETS.TEST is empty: name the dataset(s) to evaluate, e.g. "
            "DATASETS.TEST \"('cliptrase_voc21_val',)\""
        )
    for name in cfg.DATASETS.TEST:
        require_registered(name, files=True)
    check_device(cfg.MODEL.DEVICE)
    if args.resume and not cfg.TEST.SAVE_PREDICTIONS:
        raise ConfigError(
            "--resume skips the images whose label maps an interrupted run saved, and this "
            "config saves none (TEST.SAVE_PREDICTIONS False): run without --resume, with "
            "TEST.SAVE_PREDICTIONS True so that a later interruption can be resumed"
        )
    if args.resume and args.machine_rank == 0:
        check_resumable(cfg)
    claim_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR", RUN_OUTPUTS, args.resume, args.machine_rank)
    return cfg


def setup(args):
    """Config from command-line args, frozen, with ``start_logging`` and ``save_config``.
    ``validate`` checked the config before the processes started."""
    cfg = load_config(args.config_file, args.opts, resolve=False)
    start_logging(cfg.OUTPUT_DIR)
    resolve_device(cfg)
    cfg.freeze()
    save_config(cfg.OUTPUT_DIR, args, lambda path: Path(path).write_text(cfg.dump(), "utf-8"))
    return cfg


def start_logging(output_dir: str) -> None:
    """Logging of detectron2, fvcore and this project on the console and in output_dir/log.txt
    (log.txt.rank<N> for the other processes), coloured only on a terminal."""
    color = sys.stdout.isatty()
    for name in ("detectron2", "fvcore", "cliptrase_d2"):
        setup_logger(output_dir, distributed_rank=comm.get_rank(), color=color, name=name)
    tune_cpu_allocator()


def save_config(output_dir: str, args, save) -> None:
    """Logs ``args``; in the main process, the config that ``save(path)`` writes becomes
    output_dir/config.yaml through the record (one of RUN_OUTPUTS: a later run moves it to
    previous/<n>/ with the results it describes), not dumped into the log."""
    logger.info("Command line arguments: %s", args)
    if comm.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        with atomic_paths([path]) as (temporary,):
            save(temporary)
        logger.info("Full config saved to %s", path)


def log_model(model, clip_model: str, weights: str, device: str) -> None:
    """The run's one line on what evaluates: head, protocol, vocabulary, CLIP, weights, device."""
    logger.info(
        "CLIPtrase: head=%s, protocol=%s, vocabulary: %s, CLIP=%s, weights=%s, device=%s",
        model.head.name,
        model.protocol,
        f"{model.vocabulary.num_classes} classes" if model.vocabulary else "each dataset's own",
        clip_model,
        weights,
        device,
    )


def evaluated_run(
    head, refine, clip_model, weights, precision, templates, vocabulary, **protocol
) -> dict:
    """The "run" that results.json records beside the numbers (configs/lazy/common.py's too):
    an empty ``weights`` is the tag "openai", an empty ``vocabulary`` the dataset's own."""
    return dict(
        head=head,
        refine=refine,
        clip_model=clip_model,
        weights=weights or "openai",
        precision=precision,
        templates=templates,
        vocabulary=vocabulary or "the dataset's",
        **protocol,
    )


class Trainer(DefaultTrainer):
    """Only evaluation: evaluators chosen by MODEL.CLIPTRASE.PROTOCOL, loaders of
    TEST.IMS_PER_BATCH images."""

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        log_model(model, cfg.MODEL.CLIPTRASE.CLIP_MODEL, cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        c = cfg.MODEL.CLIPTRASE
        info = (c.HEAD, c.REFINE, c.CLIP_MODEL, cfg.MODEL.WEIGHTS, c.PRECISION, c.TEMPLATES)
        run_info = evaluated_run(*info, c.VOCABULARY)
        given = dict(
            output_dir=output_folder or cfg.OUTPUT_DIR, save_predictions=cfg.TEST.SAVE_PREDICTIONS
        )
        if c.PROTOCOL == "paper":
            run_info["paper_size"] = c.PAPER_SIZE
            return PaperSemSegEvaluator(
                dataset_name, crop_size=c.PAPER_SIZE, run_info=run_info, **given
            )
        run_info.update(
            short_side=c.STANDARD_SHORT_SIDE, window=c.WINDOW_SIZE, stride=c.WINDOW_STRIDE
        )
        return StandardSemSegEvaluator(dataset_name, run_info=run_info, **given)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """TEST.IMS_PER_BATCH images per model call (Detectron2 0.6's test loader has one),
        DATALOADER.NUM_WORKERS loading processes; the images whose saved label maps a resumed
        run takes over are left out (the evaluator scores those)."""
        records = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        saved = saved_predictions(cfg.OUTPUT_DIR, dataset_name, records)
        return build_test_loader(
            [record for record in records if record["file_name"] not in saved],
            mapper=SemSegTestMapper(cfg),
            batch_size=cfg.TEST.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
