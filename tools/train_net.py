#!/usr/bin/env python
"""Evaluates CLIPtrase with Detectron2 (training-free: --eval-only is the only mode).

    python tools/train_net.py --config-file configs/paper/voc21_224.yaml --eval-only --num-gpus 4
    python tools/train_net.py --config-file configs/standard/ade150.yaml --eval-only --num-gpus 2 \
        MODEL.WEIGHTS weights/ViT-B-16.pt

Without CUDA, --num-gpus N starts N CPU processes (gloo).
"""

import sys

import cliptrase_d2  # noqa: F401  (registers the meta-architecture and datasets; detectron2 shims)
from cliptrase_d2.errors import UserError
from cliptrase_d2.engine import launch
from cliptrase_d2.engine.launch import WorkerError
from cliptrase_d2.engine.trainer import Trainer, setup, validate
from detectron2.engine import default_argument_parser


def main(args):
    cfg = setup(args)
    model = Trainer.build_model(cfg)
    return Trainer.test(cfg, model)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    if not args.eval_only:
        sys.exit(
            "CLIPtrase is training-free: there is nothing to train. Add --eval-only to evaluate."
        )
    try:
        validate(args)  # before any work: config, device, process count, OUTPUT_DIR
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (
        UserError
    ) as error:  # bad input: one line; anything else is a bug and keeps its traceback
        sys.exit(f"error: {error}")
    except (
        WorkerError
    ) as error:  # several CPU processes: the failing one's error, as one process shows it
        sys.exit(error.exit_message())
