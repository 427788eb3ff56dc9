#!/usr/bin/env python
"""Evaluates CLIPtrase from a LazyConfig (configs/lazy/*.py), as Detectron2's ViTDet, MViTv2 and
detrex pipelines do: the config holds ``model``, ``dataloader.test``, ``dataloader.evaluator``
and ``train`` (output_dir, device); overrides are ``key=value``.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/sample_voc21_standard.py \
        --eval-only model.clip_model.weights=weights/ViT-B-16.pt
    python tools/lazyconfig_train_net.py --config-file configs/lazy/sample_voc21_standard.py \
        --eval-only --num-gpus 2 train.device=cpu

Training-free: --eval-only is the only mode. Without CUDA, train.device falls back to cpu and
--num-gpus N starts N CPU processes (gloo), as tools/train_net.py does.
"""

import functools
import logging

import cliptrase_d2  # noqa: F401  (registers the datasets; detectron2 shims)
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from cliptrase_d2.config import available_device, check_device, check_images_per_batch
from cliptrase_d2.config import load_lazy_config as load
from cliptrase_d2.engine.checks import check_num_processes, claim_output_dir
from cliptrase_d2.engine.launch import run_eval_only
from cliptrase_d2.engine.trainer import RUN_OUTPUTS, log_model, save_config, start_logging
from cliptrase_d2.errors import ConfigError

logger = logging.getLogger("cliptrase_d2")


def validate(args):
    """The checks before any work (in the launching process): process count, config file and
    overrides, device, batch size; then claims train.output_dir (a lock against a concurrent
    evaluation into it; earlier results moved to its previous/<n>/ folder)."""
    if args.resume:  # Detectron2's parser takes it; it was ignored and every image evaluated
        raise ConfigError(
            "--resume continues an evaluation of tools/train_net.py (a YAML config); "
            "tools/lazyconfig_train_net.py evaluates every image: run it without --resume"
        )
    check_num_processes(args.num_gpus, args.num_machines, args.machine_rank)
    cfg = load(args.config_file, args.opts)
    check_device(cfg.train.get("device", "cuda"), "train.device")
    check_images_per_batch(cfg.dataloader.test.get("batch_size", 1), "dataloader.test.batch_size")
    output_dir = cfg.train.get("output_dir", "")
    claim_output_dir(output_dir, "train.output_dir", RUN_OUTPUTS, machine_rank=args.machine_rank)
    return cfg


def main(args):
    cfg = load(args.config_file, args.opts)
    start_logging(cfg.train.output_dir)  # as tools/train_net.py's setup
    device = cfg.train.device = available_device(cfg.train.get("device", "cuda"), "train.device")
    save_config(cfg.train.output_dir, args, functools.partial(LazyConfig.save, cfg))
    model = instantiate(cfg.model).to(device).eval()
    log_model(model, cfg.model.clip_model.model, cfg.model.clip_model.weights, device)
    loader = instantiate(cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, loader, evaluator)
    if results and comm.is_main_process():
        logger.info("Evaluation results in csv format:")
        print_csv_format(results)
    return results


if __name__ == "__main__":
    run_eval_only(main, default_argument_parser().parse_args(), validate)
