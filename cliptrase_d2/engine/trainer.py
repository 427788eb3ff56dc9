"""Evaluation with Detectron2's DefaultTrainer machinery: evaluators and test loaders per protocol."""
import difflib
import logging
from collections import OrderedDict

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_cliptrase_config
from ..data.dataset_mapper import SemSegTestMapper
from ..evaluation import PaperSemSegEvaluator, StandardSemSegEvaluator
from .launch import resolve_device

__all__ = ["Trainer", "setup", "load_config"]

logger = logging.getLogger("cliptrase_d2")


def _all_keys(node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _all_keys(value, name + ".")
        else:
            yield name


def _merge(cfg, merge, source: str):
    try:
        merge()
    except (KeyError, AssertionError) as error:  # yacs: KeyError from files, AssertionError from lists
        message = str(error).strip("'\"")
        if "Non-existent" not in message:
            raise
        unknown = message.split(":")[-1].strip()
        close = difflib.get_close_matches(unknown, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else " See cliptrase_d2/config.py for the keys."
        raise KeyError(f"{source}: unknown config key {unknown!r}.{hint}") from None


def load_config(config_file: str = "", opts=(), resolve: bool = True) -> "CfgNode":
    """Detectron2 defaults + CLIPtrase keys + ``config_file`` + ``opts``; CUDA falls back to cpu
    (unless ``resolve=False``)."""
    cfg = get_cfg()
    add_cliptrase_config(cfg)
    if config_file:
        _merge(cfg, lambda: cfg.merge_from_file(config_file), f"config file {config_file}")
    if opts:
        _merge(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line options")
    if resolve:
        resolve_device(cfg)
    return cfg


def setup(args):
    """Config from command-line args, frozen; logging and OUTPUT_DIR as detectron2's default_setup
    does, and this project's own log lines (device fallback, model, results tables) on the
    console and in OUTPUT_DIR/log.txt."""
    cfg = load_config(args.config_file, args.opts, resolve=False)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cliptrase_d2")
    resolve_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


class Trainer(DefaultTrainer):
    """Only evaluation: evaluators and loaders chosen by MODEL.CLIPTRASE.PROTOCOL."""

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info("CLIPtrase: head=%s, protocol=%s, %d classes, CLIP=%s, weights=%s, device=%s",
                    cfg.MODEL.CLIPTRASE.HEAD, cfg.MODEL.CLIPTRASE.PROTOCOL, model.vocabulary.num_classes,
                    cfg.MODEL.CLIPTRASE.CLIP_MODEL, cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_dir = output_folder or cfg.OUTPUT_DIR
        c = cfg.MODEL.CLIPTRASE
        run_info = {"head": c.HEAD, "refine": c.REFINE, "clip_model": c.CLIP_MODEL,
                    "weights": cfg.MODEL.WEIGHTS or "openai", "precision": c.PRECISION,
                    "templates": c.TEMPLATES, "vocabulary": c.VOCABULARY or "the dataset's"}
        run_info.update({"paper_size": c.PAPER_SIZE} if c.PROTOCOL == "paper" else
                        {"short_side": c.STANDARD_SHORT_SIDE, "window": c.WINDOW_SIZE, "stride": c.WINDOW_STRIDE})
        if c.PROTOCOL == "paper":
            return PaperSemSegEvaluator(dataset_name, crop_size=c.PAPER_SIZE, output_dir=output_dir,
                                        save_predictions=cfg.TEST.SAVE_PREDICTIONS, run_info=run_info)
        return StandardSemSegEvaluator(dataset_name, output_dir=output_dir,
                                       save_predictions=cfg.TEST.SAVE_PREDICTIONS, run_info=run_info)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if dataset_name not in DatasetCatalog.list():
            raise KeyError(f"dataset {dataset_name!r} (DATASETS.TEST) is not registered; registered: "
                           f"{', '.join(sorted(DatasetCatalog.list()))}")
        return build_detection_test_loader(cfg, dataset_name, mapper=SemSegTestMapper(cfg))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates every dataset of DATASETS.TEST; without MODEL.CLIPTRASE.VOCABULARY each dataset
        is segmented with its own vocabulary (its metadata's ``vocabulary``)."""
        if not cfg.DATASETS.TEST:
            raise ValueError("DATASETS.TEST is empty: name the dataset(s) to evaluate")
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TEST:
            if dataset_name not in DatasetCatalog.list():
                raise KeyError(f"dataset {dataset_name!r} (DATASETS.TEST) is not registered; registered: "
                               f"{', '.join(sorted(DatasetCatalog.list()))}")
            metadata = MetadataCatalog.get(dataset_name)
            if not cfg.MODEL.CLIPTRASE.VOCABULARY and metadata.get("vocabulary", None):
                model.set_vocabulary(metadata.vocabulary)
            expected = len(metadata.get("stuff_classes", []))
            if expected and expected != model.vocabulary.num_classes:
                raise ValueError(f"the model predicts {model.vocabulary.num_classes} classes but dataset "
                                 f"{dataset_name!r} has {expected} (MODEL.CLIPTRASE.VOCABULARY does not match it)")
            loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = cls.build_evaluator(cfg, dataset_name)
            from detectron2.evaluation import inference_on_dataset

            results[dataset_name] = inference_on_dataset(model, loader, evaluator)
            if results[dataset_name]:
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(results[dataset_name])
        return results
