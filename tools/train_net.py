#!/usr/bin/env python
"""Evaluates CLIPtrase with Detectron2 (training-free: --eval-only is the only mode).

    python tools/train_net.py --config-file configs/paper/voc21_224.yaml --eval-only --num-gpus 4
    python tools/train_net.py --config-file configs/standard/ade150.yaml --eval-only --num-gpus 2 \
        MODEL.WEIGHTS weights/ViT-B-16.pt

Without CUDA, --num-gpus N starts N CPU processes (gloo), at most one per CPU.
"""

import cliptrase_d2  # noqa: F401  (registers the meta-architecture and datasets; detectron2 shims)
from cliptrase_d2.engine.launch import run_eval_only
from cliptrase_d2.engine.trainer import Trainer, setup, validate
from detectron2.engine import default_argument_parser


def main(args):
    cfg = setup(args)
    model = Trainer.build_model(cfg)
    return Trainer.test(cfg, model)


if __name__ == "__main__":
    run_eval_only(main, default_argument_parser().parse_args(), validate)
