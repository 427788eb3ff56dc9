"""Stage-by-stage parity with the authors' code on every reference case
($CLIPTRASE_FIXTURES/cases).

Given each case's `input` and `text`: patch logits within 1e-4 relative, the suppressed
self-correlation, DBSCAN labels identical, final labels equal on >= 99.99 % of pixels
(bit-identical is what we get), and our text embeddings equal the reference `text`.
"""

import os

import numpy as np
import pytest
import torch

from conftest import FIXTURES, manifest_runs, require_fixtures
from cliptrase_d2.method.heads import get_head, resolve_logit_scale
from cliptrase_d2.method.pipeline import RefinementSettings, predict
from cliptrase_d2.method.refinement import cluster_patches, dense_logits, suppress_global_patch
from cliptrase_d2.method.text import text_embeddings
from cliptrase_d2.vocabulary import resolve_vocabulary, template_set


def _load_run(run, manifest):
    cases = [dict(np.load(os.path.join(FIXTURES, "cases", case["file"]))) for case in run["cases"]]
    vocabulary = resolve_vocabulary(manifest["vocabulary_key"][run["dataset"]], paper_quirks=True)
    return cases, vocabulary


@pytest.fixture(scope="module")
def run_outputs(tiny_clip, manifest):
    """Per run: the reference arrays and our outputs for the whole batch of 4 images."""
    cache = {}

    def compute(run):
        key = (run["dataset"], run["size"], run["eps"], run["min_samples"])
        if key not in cache:
            cases, vocabulary = _load_run(run, manifest)
            images = torch.stack([torch.from_numpy(c["input"]) for c in cases])
            text = torch.from_numpy(cases[0]["text"])
            head = get_head("cliptrase")
            scale = resolve_logit_scale(head, tiny_clip)
            with torch.no_grad():
                features = head.features(tiny_clip.visual, images)
                settings = RefinementSettings(
                    "vote",
                    run["eps"],
                    run["min_samples"],
                    image_logit_weighting=run["dataset"] == "VOC20",
                )
                scores = predict(
                    tiny_clip.visual,
                    head,
                    text,
                    len(vocabulary.classes),
                    images,
                    settings,
                    scale,
                    soft_scores=False,
                ).scores
            cache[key] = (cases, features, scores, scale, text)
        return cache[key]

    return compute


@pytest.mark.parametrize("run", manifest_runs())
def test_stage_by_stage(run, run_outputs):
    require_fixtures()
    cases, features, scores, scale, text = run_outputs(run)
    logits = dense_logits(features.patch_tokens, text, features.grid, scale)  # (B, K, h, w)
    for i, case in enumerate(cases):
        reference = torch.from_numpy(case["patch_logits"])
        relative = ((logits[i] - reference).abs().max() / reference.abs().max()).item()
        assert relative <= 1e-4, f"patch logits of case {i} differ by {relative:.2e} relative"
        cls_logits = scale * features.cls_tokens[i] @ text.t()
        torch.testing.assert_close(
            cls_logits, torch.from_numpy(case["cls_logits"]), rtol=1e-5, atol=1e-4
        )
        affinity = suppress_global_patch(features.correlation[i])
        torch.testing.assert_close(affinity, torch.from_numpy(case["affinity"]), rtol=0, atol=1e-5)
        labels = cluster_patches(affinity, run["eps"], run["min_samples"])
        np.testing.assert_array_equal(labels, case["dbscan"])
        prediction = scores[i].argmax(dim=0).numpy()
        agreement = (prediction == case["pred"]).mean()
        assert agreement >= 0.9999, f"final labels agree on only {agreement:.6f} of the pixels"


@pytest.mark.parametrize("run", manifest_runs())
def test_cluster_counts_match_manifest(run, run_outputs):
    require_fixtures()
    cases, features, _, _, _ = run_outputs(run)
    for case_info, i in zip(run["cases"], range(len(cases))):
        labels = cluster_patches(
            suppress_global_patch(features.correlation[i]), run["eps"], run["min_samples"]
        )
        assert labels.max() + 1 == case_info["clusters"]
        assert (labels == -1).sum() == case_info["noise"]


@pytest.mark.parametrize("key", ["voc21", "voc20", "pc59"])
def test_text_embeddings_match_reference(key, tiny_clip, tiny_tokenizer, manifest):
    run = next(r for r in manifest["runs"] if manifest["vocabulary_key"][r["dataset"]] == key)
    reference = np.load(os.path.join(FIXTURES, "cases", run["cases"][0]["file"]))["text"]
    vocabulary = resolve_vocabulary(key, paper_quirks=True)
    ours = text_embeddings(
        tiny_clip, tiny_tokenizer, vocabulary.text_rows, template_set(manifest["templates"])
    )
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-6)


def test_batch_equals_single_images(run_outputs, manifest, tiny_clip):
    """A batch of B images gives, per image, what B runs of one give."""
    run = manifest["runs"][0]
    cases, _, batch_scores, scale, text = run_outputs(run)
    head = get_head("cliptrase")
    settings = RefinementSettings("vote", run["eps"], run["min_samples"])
    for i, case in enumerate(cases):
        single = predict(
            tiny_clip.visual,
            head,
            text,
            20,
            torch.from_numpy(case["input"])[None],
            settings,
            scale,
            soft_scores=False,
        ).scores
        torch.testing.assert_close(single[0], batch_scores[i], rtol=0, atol=0)
