"""Evaluation with Detectron2's DefaultTrainer machinery: evaluators and test loaders per
protocol, and the checks before an evaluation starts (``validate``)."""

import logging

from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import check_device, load_config, resolve_device
from ..data.dataset_mapper import SemSegTestMapper
from ..data.loader import build_test_loader
from ..data.datasets import require_registered
from ..evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator
from ..errors import ConfigError
from .allocator import tune_cpu_allocator
from .checks import check_num_processes, claim_output_dir

__all__ = ["Trainer", "setup", "validate"]

logger = logging.getLogger("cliptrase_d2")


def _checked_config(args):
    cfg = load_config(args.config_file, args.opts, resolve=False)
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            "DATASETS.TEST is empty: name the dataset(s) to evaluate, e.g. "
            "DATASETS.TEST \"('cliptrase_voc21_val',)\""
        )
    for name in cfg.DATASETS.TEST:
        require_registered(name)
    return cfg


def validate(args):
    """The checks before any work (in the launching process, before workers start): the config
    file and its values, the device, the process count; then claims OUTPUT_DIR (a lock against
    a concurrent evaluation into it, earlier results moved to OUTPUT_DIR/previous/)."""
    check_num_processes(args.num_gpus, args.num_machines, args.machine_rank)
    cfg = _checked_config(args)
    check_device(cfg.MODEL.DEVICE)
    claim_output_dir(cfg.OUTPUT_DIR)
    return cfg


def setup(args):
    """Config from command-line args, frozen; logging and OUTPUT_DIR as detectron2's default_setup
    does, and this project's own log lines (device fallback, model, results tables) on the
    console and in OUTPUT_DIR/log.txt."""
    cfg = _checked_config(args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cliptrase_d2")
    tune_cpu_allocator()
    resolve_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


class Trainer(DefaultTrainer):
    """Only evaluation: evaluators chosen by MODEL.CLIPTRASE.PROTOCOL, loaders of
    TEST.IMS_PER_BATCH images."""

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        vocabulary = (
            f"{model.vocabulary.num_classes} classes (MODEL.CLIPTRASE.VOCABULARY)"
            if model.vocabulary
            else "each dataset's own"
        )
        logger.info(
            "CLIPtrase: head=%s, protocol=%s, vocabulary: %s, CLIP=%s, weights=%s, device=%s",
            cfg.MODEL.CLIPTRASE.HEAD,
            cfg.MODEL.CLIPTRASE.PROTOCOL,
            vocabulary,
            cfg.MODEL.CLIPTRASE.CLIP_MODEL,
            cfg.MODEL.WEIGHTS,
            cfg.MODEL.DEVICE,
        )
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_dir = output_folder or cfg.OUTPUT_DIR
        c = cfg.MODEL.CLIPTRASE
        run_info = {
            "head": c.HEAD,
            "refine": c.REFINE,
            "clip_model": c.CLIP_MODEL,
            "weights": cfg.MODEL.WEIGHTS or "openai",
            "precision": c.PRECISION,
            "templates": c.TEMPLATES,
            "vocabulary": c.VOCABULARY or "the dataset's",
        }
        run_info.update(
            {"paper_size": c.PAPER_SIZE}
            if c.PROTOCOL == "paper"
            else {
                "short_side": c.STANDARD_SHORT_SIDE,
                "window": c.WINDOW_SIZE,
                "stride": c.WINDOW_STRIDE,
            }
        )
        if c.PROTOCOL == "paper":
            return PaperSemSegEvaluator(
                dataset_name,
                crop_size=c.PAPER_SIZE,
                output_dir=output_dir,
                save_predictions=cfg.TEST.SAVE_PREDICTIONS,
                run_info=run_info,
            )
        return StandardSemSegEvaluator(
            dataset_name,
            output_dir=output_dir,
            save_predictions=cfg.TEST.SAVE_PREDICTIONS,
            run_info=run_info,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """TEST.IMS_PER_BATCH images per model call (Detectron2 0.6's test loader has one),
        DATALOADER.NUM_WORKERS loading processes."""
        return build_test_loader(
            get_detection_dataset_dicts([dataset_name], filter_empty=False),
            mapper=SemSegTestMapper(cfg),
            batch_size=cfg.TEST.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
