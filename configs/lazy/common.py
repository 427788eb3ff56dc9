"""The parts every LazyConfig here shares: CLIPtrase (OpenAI CLIP ViT-B/16 through open_clip, fp32,
the standard protocol) built with LazyCall, the test loader and the evaluator.

The values are those of configs/Base-CLIPtrase.yaml + configs/standard/Base-standard.yaml as
CLIPtrase.from_config resolves them (DBSCAN's automatic (0.7, 3) for 14 x 14 patch windows
written out). Change any of them on the command line, e.g.
``model.clip_model.weights=weights/ViT-B-16.pt train.device=cpu``; the tokenizer and the text
cache follow ``model.clip_model`` by interpolation.
"""

from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from omegaconf import OmegaConf

from cliptrase_d2.clip_loading import build_clip, get_tokenizer
from cliptrase_d2.data.dataset_mapper import ProtocolFrame, SemSegTestMapper
from cliptrase_d2.data.loader import build_test_loader
from cliptrase_d2.engine.trainer import evaluated_run
from cliptrase_d2.evaluation import StandardSemSegEvaluator
from cliptrase_d2.method.pipeline import RefinementSettings
from cliptrase_d2.modeling.meta_arch import CLIPtrase
from cliptrase_d2.text_cache import TextEmbeddingCache
from cliptrase_d2.vocabulary import template_set

model = L(CLIPtrase)(
    clip_model=L(build_clip)(model="ViT-B-16", weights="openai", precision="fp32"),
    tokenizer=L(get_tokenizer)(model="${..clip_model.model}"),
    # each record's dataset brings its own (MODEL.CLIPTRASE.VOCABULARY: an override)
    vocabulary=None,
    templates=L(template_set)(name="imagenet80"),
    head="cliptrase",
    logit_scale=0.0,
    refinement=L(RefinementSettings)(
        refine="mean",
        dbscan_eps=0.7,
        dbscan_min_samples=3,
        region_upsample=4,
        median_size=7,
        image_logit_weighting=False,
    ),
    protocol="standard",
    paper_size=224,
    standard_short_side=336,
    window_size=224,
    window_stride=112,
    window_batch=8,
    standard_long_side=2048,
    max_pixels=50_000_000,
    max_windows=1024,
    input_format="RGB",
    paper_vocabulary_quirks=False,
    text_cache=L(TextEmbeddingCache.from_setting)(
        setting="",
        model="${..clip_model.model}",
        weights="${..clip_model.weights}",
        precision="${..clip_model.precision}",
    ),
)

# What results.json records of the run, under either protocol (a private name: not a config key)
_run_info = L(evaluated_run)(
    head="${model.head}",
    refine="${model.refinement.refine}",
    clip_model="${model.clip_model.model}",
    weights="${model.clip_model.weights}",
    precision="${model.clip_model.precision}",
    templates="${model.templates.name}",
    vocabulary="${model.vocabulary}",
)

dataloader = dict(
    # Detectron2's test loader with a batch size on every version (TEST.IMS_PER_BATCH's twin)
    test=L(build_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="cliptrase_sample_voc21", filter_empty=False),
        # the model's frame, made where the image is decoded (its settings follow the model)
        mapper=L(SemSegTestMapper)(
            image_format="${model.input_format}",
            frame=L(ProtocolFrame)(
                protocol="${model.protocol}",
                paper_size="${model.paper_size}",
                short_side="${model.standard_short_side}",
                long_side="${model.standard_long_side}",
                window="${model.window_size}",
                stride="${model.window_stride}",
                max_pixels="${model.max_pixels}",
                max_windows="${model.max_windows}",
            ),
        ),
        batch_size=1,
        num_workers=2,
        batch_size_key="dataloader.test.batch_size",
    ),
    evaluator=L(StandardSemSegEvaluator)(
        dataset_name="${..test.dataset.names}",
        output_dir="${train.output_dir}",
        save_predictions=False,
        run_info=OmegaConf.merge(
            _run_info,
            dict(
                short_side="${model.standard_short_side}",
                window="${model.window_size}",
                stride="${model.window_stride}",
            ),
        ),
    ),
)

train = dict(output_dir="./output/lazy", device="cuda")
