"""Checks that need a CUDA device (tools/device_check.sh runs them; skipped without one).

Tolerances: DBSCAN labels exact (float64 distances on both devices); fp32 final labels on
>= 99.9 % of the pixels of every reference case (TF32 off: a GPU sums in another order, so a
near-tie pixel may flip); fp16 LayerNorm outputs exactly the fp32 computation cast back.
"""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, TINY_CONFIG, TINY_WEIGHTS, manifest_runs, require_fixtures
from cliptrase_d2.clip_loading import build_clip
from cliptrase_d2.method.heads import get_head, resolve_logit_scale
from cliptrase_d2.method.pipeline import RefinementSettings, predict
from cliptrase_d2.method.refinement import cluster_patches
from cliptrase_d2.vocabulary import resolve_vocabulary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_clip():
    require_fixtures()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return build_clip(TINY_CONFIG, TINY_WEIGHTS, device="cuda")


@pytest.mark.parametrize("run", manifest_runs())
def test_reference_cases_on_the_gpu(run, cuda_clip, manifest):
    arrays = [np.load(os.path.join(FIXTURES, "cases", case["file"])) for case in run["cases"]]
    affinity = torch.stack([torch.from_numpy(a["affinity"]) for a in arrays]).cuda()
    labels = cluster_patches(affinity, run["eps"], run["min_samples"])
    assert labels.is_cuda
    for a, image_labels in zip(arrays, labels.cpu()):
        np.testing.assert_array_equal(image_labels.numpy(), a["dbscan"])
    images = torch.stack([torch.from_numpy(a["input"]) for a in arrays]).cuda()
    text = torch.from_numpy(arrays[0]["text"]).cuda()
    head = get_head("cliptrase")
    settings = RefinementSettings(
        "vote", run["eps"], run["min_samples"], image_logit_weighting=run["dataset"] == "VOC20"
    )
    num_classes = len(
        resolve_vocabulary(manifest["vocabulary_key"][run["dataset"]], paper_quirks=True).classes
    )
    prediction = predict(
        cuda_clip.visual,
        head,
        text,
        num_classes,
        images,
        settings,
        resolve_logit_scale(head, cuda_clip),
        soft_scores=False,
    )
    for a, image_labels in zip(arrays, prediction.labels.cpu()):
        agreement = (image_labels.numpy() == a["pred"]).mean()
        assert agreement >= 0.999, (
            f"{run['dataset']} {run['size']}: labels agree on {agreement:.5f}"
        )


def test_batch_equals_single_images_on_the_gpu(cuda_clip):
    images = torch.randn(4, 3, 224, 224, device="cuda")
    text = F.normalize(torch.randn(6, 64, device="cuda"), dim=-1)
    head = get_head("cliptrase")
    settings = RefinementSettings("mean", 0.9, 2)
    batch = predict(cuda_clip.visual, head, text, 6, images, settings, 100.0)
    for index in range(4):
        single = predict(
            cuda_clip.visual, head, text, 6, images[index : index + 1], settings, 100.0
        )
        assert (single.labels[0] == batch.labels[index]).float().mean() >= 0.999


def test_fp16_layer_norm_is_fp32_cast_back_on_the_gpu():
    require_fixtures()
    model = build_clip(TINY_CONFIG, TINY_WEIGHTS, precision="fp16", device="cuda")
    x = (torch.randn(5, 3, 128, device="cuda") * 30).half()
    norm = model.visual.ln_pre
    expected = F.layer_norm(
        x.float(), (128,), norm.weight.float(), norm.bias.float(), norm.eps
    ).half()
    assert torch.equal(norm(x), expected)
