"""LazyConfig twin of configs/sample/voc21_paper_224.yaml: the VOC sample photos under the paper
protocol at S = 224 (center crop, majority vote per region, the paper's vocabulary quirks).

    python tools/lazyconfig_train_net.py --eval-only \
        --config-file configs/lazy/sample_voc21_paper_224.py \
        model.clip_model.weights=weights/ViT-B-16.pt
"""

from detectron2.config import LazyCall as L
from omegaconf import OmegaConf

from cliptrase_d2.evaluation import PaperSemSegEvaluator

from .common import _run_info, dataloader, model, train

model.protocol = "paper"
model.paper_size = 224
model.paper_vocabulary_quirks = True
model.refinement.refine = "vote"
dataloader.test.dataset.names = "cliptrase_sample_voc21"
dataloader.evaluator = L(PaperSemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    crop_size="${model.paper_size}",
    output_dir="${train.output_dir}",
    save_predictions=True,
    run_info=OmegaConf.merge(_run_info, dict(paper_size="${model.paper_size}")),
)
train.output_dir = "./output/lazy/sample_voc21_paper_224"
