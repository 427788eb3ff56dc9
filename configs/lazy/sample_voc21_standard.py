"""LazyConfig twin of configs/sample/voc21_standard.yaml: the four VOC sample photos
(datasets/prepare_sample.py), standard protocol, the same model and predictions.

    python tools/lazyconfig_train_net.py --eval-only \
        --config-file configs/lazy/sample_voc21_standard.py \
        model.clip_model.weights=weights/ViT-B-16.pt
"""

from .common import dataloader, model, train  # noqa: F401  (the config is these names)

dataloader.test.dataset.names = "cliptrase_sample_voc21"
dataloader.evaluator.save_predictions = True
train.output_dir = "./output/lazy/sample_voc21"
