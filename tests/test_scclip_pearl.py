"""SC-CLIP and PEARL heads and PEARL's TLP against their authors' code (the
reference outputs in peers/ beside $CLIPTRASE_FIXTURES).

As tests/test_peer_heads.py, with the same tolerances, for every array of every reference file:
patch logits, cosines, raw features and the other float arrays within 1e-4 of the reference's
largest magnitude, unit-norm features within 1e-5, index arrays equal, and label maps equal on
>= 99.99 % of the pixels, every differing pixel a near-tie of the reference. Plus: a batch gives
each image the result it gets alone, SC-CLIP rejects patch grids too small for its statistics,
and TLP keeps the quirks of the authors' code (diagonal-only text similarity, re-normalised text).
"""

import json
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, PEERS, require_fixtures
from test_peer_heads import FEATURE_ATOL, LOGIT_RTOL, MIN_PIXEL_AGREEMENT, require_peers
from cliptrase_d2.method import peer_heads
from cliptrase_d2.method.dense_clip import dense_features, plain_class_token, residual_block
from cliptrase_d2.method.heads import Head, get_head, resolve_logit_scale
from cliptrase_d2.method.pipeline import RefinementSettings, predict
from cliptrase_d2.method.propagation import (
    class_agreement,
    propagation_on_grid,
    propagation_stride,
    text_similarity,
)
from cliptrase_d2.method.refinement import dense_logits

METHODS = ("scclip", "pearl")


def relative_error(ours, reference) -> float:
    """max |ours - reference| / max |reference| (the peer tests' logit measure)."""
    reference = torch.as_tensor(reference).float()
    return ((torch.as_tensor(ours).float() - reference).abs().max() / reference.abs().max()).item()


def assert_close_relative(ours, reference, what):
    error = relative_error(ours, reference)
    assert error <= LOGIT_RTOL, f"{what} differ by {error:.2e} relative"


def assert_labels_match(labels, reference_labels, reference_margin, tie_tolerance, what):
    """Equal except at near-ties of the reference (top1 - top2 margin within ``tie_tolerance``)."""
    differ = labels != reference_labels
    assert 1 - differ.mean() >= MIN_PIXEL_AGREEMENT, (
        f"{what}: labels agree on only {1 - differ.mean():.6f}"
    )
    margins = reference_margin.astype(np.float32)[differ]
    assert (margins <= tie_tolerance).all(), (
        f"{what}: {differ.sum()} differing pixels, reference margins up to {margins.max():.2e} "
        f"> {tie_tolerance:.1e}"
    )


def top2_margin(maps: torch.Tensor) -> np.ndarray:
    """top1 - top2 over classes of (K, H, W) maps -> (H, W)."""
    top2 = maps.topk(2, dim=0).values
    return (top2[0] - top2[1]).numpy()


def cases(method):
    """[(name, reference arrays, input (3, S, S), text (K, E))] in the manifest's order."""
    with open(os.path.join(PEERS, method, "manifest.json")) as f:
        files = json.load(f)["files"]
    out = []
    for name, entry in files.items():
        case = np.load(os.path.join(FIXTURES, "cases", entry["case"]))
        out.append(
            (
                name,
                dict(np.load(os.path.join(PEERS, method, name))),
                torch.from_numpy(case["input"]),
                torch.from_numpy(case["text"]),
            )
        )
    return out


def capture_hidden(head: Head, store: list):
    """``head`` whose last block also records its arguments (SC-CLIP: earlier blocks' outputs)."""

    def last_block(block, x, grid, *hidden):
        store.append((block, grid, hidden[0] if hidden else None, x))
        output = head.last_block(block, x, grid, *hidden)
        store.append(output)
        return output

    return Head(head.name, last_block, head.logit_scale, head.description, head.hidden_states)


@pytest.fixture(scope="module")
def outputs(tiny_clip):
    """Per method: per reference file, our arrays. Each image size runs as one batch of 4."""
    cache = {}

    def compute(method):
        if method in cache:
            return cache[method]
        head = get_head(method)
        scale = resolve_logit_scale(head, tiny_clip)
        by_size = {}
        for item in cases(method):
            by_size.setdefault(item[2].shape[-1], []).append(item)
        results = []
        for size, items in sorted(by_size.items()):
            images, text = torch.stack([item[2] for item in items]), items[0][3]
            store = []
            with torch.no_grad():
                features = capture_hidden(head, store).features(tiny_clip.visual, images)
                (block, grid, hidden, _), last_output = store
                raw = tiny_clip.visual.ln_post(last_output.transpose(0, 1)) @ tiny_clip.visual.proj
                logits = dense_logits(features.patch_tokens, text, features.grid, scale)
                labels = {
                    refine: predict(
                        tiny_clip.visual,
                        head,
                        text,
                        len(text),
                        images,
                        RefinementSettings(refine=refine),
                        scale,
                        soft_scores=False,
                    ).scores.argmax(dim=1)
                    for refine in (("none", "tlp") if method == "pearl" else ("none",))
                }
                extra = {}
                if method == "scclip":
                    final_patches = hidden[-1][1:].transpose(0, 1)
                    extra["lof_scores"] = peer_heads.local_outlier_factor(final_patches)
                    extra["anomalies"] = peer_heads.anomalous_tokens(extra["lof_scores"])
                    extra["main"], extra["multi"] = peer_heads.scclip_branches(block, hidden, grid)
                else:
                    cosine = F.interpolate(
                        logits / scale, size=(size, size), mode="bilinear", align_corners=False
                    )
                    extra["tlp_grid"] = propagation_on_grid(cosine, images, text)
                    extra["tlp_S"] = text_similarity(text)
            for i, (name, reference, _, _) in enumerate(items):
                results.append(
                    dict(
                        name=name,
                        size=size,
                        reference=reference,
                        scale=scale,
                        features=features.patch_tokens[i],
                        raw=raw[i, 1:],
                        logits=logits[i],
                        labels={k: v[i].numpy() for k, v in labels.items()},
                        **{k: v if k == "tlp_S" else v[i] for k, v in extra.items()},
                    )
                )
        cache[method] = results
        return results

    return compute


def _ids():
    return list(METHODS) if os.path.isdir(PEERS) else ["peers-missing"]


@pytest.mark.parametrize("method", _ids())
def test_matches_authors_code(method, outputs):
    require_peers()
    results = outputs(method)
    assert len(results) == 8, "expected 4 images x 2 sizes"
    for result in results:
        name, reference, scale = result["name"], result["reference"], result["scale"]
        assert_close_relative(result["logits"], reference["patch_logits"], f"{name}: patch logits")
        assert_close_relative(
            result["logits"] / scale, reference["patch_cosine"], f"{name}: patch cosines"
        )
        assert_close_relative(
            result["raw"], reference["patch_features_raw"], f"{name}: raw patch features"
        )
        torch.testing.assert_close(
            result["features"],
            torch.from_numpy(reference["patch_features"]),
            rtol=0,
            atol=FEATURE_ATOL,
            msg=lambda m: f"{name}: patch features: {m}",
        )
        upsampled = F.interpolate(
            result["logits"][None], size=(result["size"],) * 2, mode="bilinear", align_corners=False
        )[0]
        tie_tolerance = 2 * LOGIT_RTOL * np.abs(reference["patch_logits"]).max()
        margin = top2_margin(upsampled)
        assert (
            np.abs(margin - reference["pred_margin"]).max() <= tie_tolerance + 1e-3 * margin.max()
        ), f"{name}: label margins differ from the reference's"  # the reference is float16
        assert_labels_match(
            result["labels"]["none"],
            reference["pred"],
            reference["pred_margin"],
            tie_tolerance,
            name,
        )


def test_scclip_anomalies_and_branches_match(outputs):
    require_peers()
    for result in outputs("scclip"):
        name, reference = result["name"], result["reference"]
        assert_close_relative(result["lof_scores"], reference["lof_scores"], f"{name}: LOF scores")
        outliers = result["anomalies"].nonzero()[:, 0].numpy()
        np.testing.assert_array_equal(
            outliers, reference["lof_outlier_idx"], err_msg=f"{name}: anomalous tokens"
        )
        assert 0.04 * len(result["lof_scores"]) <= len(outliers) <= 0.06 * len(result["lof_scores"])
        if "tokens_main_branch" in reference:  # 224-px files only
            assert_close_relative(
                result["main"], reference["tokens_main_branch"], f"{name}: main branch"
            )
            assert_close_relative(
                result["multi"], reference["tokens_multi_branch"], f"{name}: multi-level branch"
            )


def test_tlp_matches_authors_code(outputs):
    require_peers()
    for result in outputs("pearl"):
        name, reference = result["name"], result["reference"]
        assert_close_relative(result["tlp_S"], reference["tlp_S"], f"{name}: TLP text similarity")
        grid = result["tlp_grid"]  # (K, Hs, Ws)
        assert tuple(grid.shape[-2:]) == reference["tlp_grid_top2_val"].shape[-2:]
        top3 = grid.topk(3, dim=0)
        assert_close_relative(
            top3.values[:2], reference["tlp_grid_top2_val"], f"{name}: TLP grid top-2"
        )
        gaps = torch.stack([top3.values[0] - top3.values[1], top3.values[1] - top3.values[2]])
        decided = (gaps > 2 * LOGIT_RTOL * grid.abs().max()).numpy()  # a near-tie may swap classes
        np.testing.assert_array_equal(
            top3.indices[:2].numpy()[decided],
            reference["tlp_grid_top2_idx"][decided],
            err_msg=f"{name}: TLP grid top-2 classes",
        )
        assert decided.mean(axis=(1, 2)).min() > 0.95  # the check is not vacuous
        tie_tolerance = 2 * LOGIT_RTOL * np.abs(reference["patch_logits"]).max()
        assert_labels_match(
            result["labels"]["tlp"],
            reference["pred_tlp"],
            reference["pred_tlp_margin"],
            tie_tolerance,
            f"{name} (TLP)",
        )
        assert (
            result["labels"]["tlp"] != result["labels"]["none"]
        ).mean() > 0.01  # TLP does change labels


@pytest.mark.parametrize("method", _ids())
def test_a_batch_gives_each_image_its_own_result(method, tiny_clip, outputs):
    """Each image alone gets what it got in the batch of 4 (SC-CLIP's anomalies are per image)."""
    require_peers()
    head = get_head(method)
    refine = "tlp" if method == "pearl" else "none"
    for result, (name, _, image, text) in list(zip(outputs(method), cases(method)))[:2]:
        with torch.no_grad():
            alone = head.features(tiny_clip.visual, image[None])
            labels = predict(
                tiny_clip.visual,
                head,
                text,
                len(text),
                image[None],
                RefinementSettings(refine=refine),
                result["scale"],
                soft_scores=False,
            ).scores.argmax(dim=1)[0]
        torch.testing.assert_close(
            alone.patch_tokens[0],
            result["features"],
            rtol=0,
            atol=1e-6,
            msg=lambda m: f"{name}: {m}",
        )
        assert (labels.numpy() == result["labels"][refine]).mean() >= MIN_PIXEL_AGREEMENT, name


def test_scclip_rejects_a_patch_grid_too_small_for_its_statistics(tiny_clip):
    require_fixtures()
    with pytest.raises(
        ValueError, match=r"more than 30 patches; got 25\. Use a larger image or window"
    ):
        get_head("scclip").features(tiny_clip.visual, torch.zeros(1, 3, 80, 80))  # 5 x 5 patches
    with torch.no_grad():
        features = get_head("scclip").features(
            tiny_clip.visual, torch.zeros(1, 3, 96, 96)
        )  # 36 patches
    assert torch.isfinite(features.tokens).all()  # a uniform image: equal tokens, no NaN


def test_scclip_is_given_every_earlier_block_and_keeps_plain_clips_class_token(tiny_clip):
    require_fixtures()
    images = torch.randn(2, 3, 112, 96)  # 7 x 6 patches
    visual, seen = tiny_clip.visual, []

    def last_block(block, x, grid, hidden):
        seen.append((x, hidden))
        return peer_heads.scclip_block(block, x, grid, hidden)

    with torch.no_grad():
        features = dense_features(visual, images, last_block, hidden_states=True)
        x, hidden = seen[0]
        blocks = visual.transformer.resblocks
        assert len(hidden) == len(blocks) - 1 and hidden[-1] is x
        torch.testing.assert_close(hidden[1], residual_block(blocks[1], hidden[0]), rtol=0, atol=0)
        cls = plain_class_token(blocks[-1], x)
        torch.testing.assert_close(cls, residual_block(blocks[-1], x)[:1], rtol=1e-5, atol=1e-5)
        expected = F.normalize(visual.ln_post(cls[0]) @ visual.proj, dim=-1)
    torch.testing.assert_close(features.cls_tokens, expected, rtol=0, atol=1e-6)
    assert features.patch_tokens.shape == (2, 42, 64)


def test_anomaly_repair_averages_the_normal_neighbours():
    tokens = torch.arange(12.0).view(1, 12, 1).repeat(1, 1, 2)  # 3 x 4 grid, value = index
    anomalies = torch.zeros(1, 12, dtype=torch.bool)
    anomalies[0, [0, 1, 5]] = True
    repaired = peer_heads.repair_anomalies(tokens, anomalies, (3, 4))
    # token 0's normal neighbours: 4 (1 and 5 are anomalous); token 5's: 2, 4, 6, 8, 9, 10
    assert repaired[0, 0, 0] == 4 and repaired[0, 5, 0] == (2 + 4 + 6 + 8 + 9 + 10) / 6
    assert repaired[0, 1, 0] == (2 + 4 + 6) / 3
    assert torch.equal(repaired[0, ~anomalies[0]], tokens[0, ~anomalies[0]])
    alone = torch.ones(1, 4, dtype=torch.bool)  # a token with no normal neighbour is left as it is
    assert torch.equal(peer_heads.repair_anomalies(tokens[:, :4], alone, (2, 2)), tokens[:, :4])


def test_tlp_uses_only_the_diagonal_of_renormalised_text_similarities():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(text_similarity(3 * text), text_similarity(text))
    similarity = text_similarity(text)
    assert torch.allclose(similarity.sum(dim=1), torch.ones(5), atol=1e-5)
    probabilities = torch.softmax(torch.randn(1, 5, 4, 6), dim=1)
    diagonal_only = class_agreement(probabilities, probabilities, similarity.diagonal())
    expected = (probabilities**2 * similarity.diagonal()[:, None, None]).sum(dim=1, keepdim=True)
    torch.testing.assert_close(diagonal_only, expected)
    matrix_product = (probabilities * torch.einsum("cd,bdij->bcij", similarity, probabilities)).sum(
        1, keepdim=True
    )
    assert (
        diagonal_only - matrix_product
    ).abs().max() > 1e-3  # what the authors' einsum does NOT compute
    assert propagation_stride((224, 224)) == (3, 3) and propagation_stride((336, 500)) == (4, 6)
    assert propagation_stride((100, 40)) == (1, 1)  # round(1.25) = 1, round(0.5) = 0 -> at least 1


def test_tlp_refinement_is_reported_once_without_clustering_settings(project_log):
    from detectron2.utils import logger as d2_logger

    from cliptrase_d2.modeling import settings

    d2_logger._LOG_COUNTER.clear()  # detectron2's log_first_n counts per message
    with project_log.at_level(logging.WARNING):
        for _ in range(2):
            settings.report_unused_settings("pearl", RefinementSettings(refine="tlp"))
    messages = [r.getMessage() for r in project_log.records if "do not apply" in r.getMessage()]
    assert len(messages) == 1 and "REFINE 'tlp'" in messages[0] and "DBSCAN_EPS" in messages[0]


def test_method_configs(tiny_opts):
    from conftest import REPO
    from cliptrase_d2.config import load_config

    for method, refine in (("scclip", "none"), ("pearl", "tlp")):
        cfg = load_config(os.path.join(REPO, "configs", method, "standard.yaml"), [])
        assert (cfg.MODEL.CLIPTRASE.HEAD, cfg.MODEL.CLIPTRASE.REFINE) == (method, refine)
        assert (
            cfg.MODEL.CLIPTRASE.PROTOCOL == "standard"
            and cfg.OUTPUT_DIR == f"./output/{method}/standard"
        )


def test_reduced_precision_runs_the_fp32_steps_in_fp32():
    """bf16 towers: SC-CLIP's outlier statistics (torch.quantile needs fp32) and PEARL's polar
    iteration run in fp32; the patch features stay within a cosine of 0.99 of fp32's."""
    require_fixtures()
    from conftest import TINY_CONFIG, TINY_WEIGHTS
    from cliptrase_d2.clip_loading import build_clip

    case = np.load(os.path.join(FIXTURES, "cases", "pc59_224_eps0.7_min3_vocsample.npz"))
    images = torch.from_numpy(case["input"])[None]
    fp32, bf16 = (build_clip(TINY_CONFIG, TINY_WEIGHTS, precision=p) for p in ("fp32", "bf16"))
    for method in METHODS:
        with torch.no_grad():
            exact = get_head(method).features(fp32.visual, images).patch_tokens
            reduced = get_head(method).features(bf16.visual, images).patch_tokens
        assert reduced.dtype == torch.bfloat16
        assert (exact * reduced.float()).sum(dim=-1).min() > 0.99, method


# ---------------------------------------------------------------- published settings, new keys

PUBLISHED = {  # (short side, window, padding, refine, logit scale, prob_thd, area_thd, k-k, grid)
    ("scclip", "voc21"): (336, 224, "none", "none", 50.0, 0.15, 0.1, 0.08, 80),
    ("scclip", "voc20"): (336, 224, "none", "none", 40.0, 0.0, 0.0, 0.08, 80),
    ("scclip", "pc60"): (336, 224, "none", "none", 40.0, 0.15, 0.0, 0.08, 80),
    ("scclip", "pc59"): (336, 224, "none", "none", 40.0, 0.0, 0.0, 0.08, 80),
    ("scclip", "coco_object80"): (336, 224, "none", "none", 55.0, 0.35, 0.0, 0.08, 80),
    ("scclip", "coco_stuff171"): (336, 224, "none", "none", 40.0, 0.0, 0.0, 0.08, 80),
    ("scclip", "cityscapes19"): (560, 224, "none", "none", 40.0, 0.0, 0.0, 0.08, 80),
    ("scclip", "ade150"): (336, 224, "none", "none", 40.0, 0.0, 0.0, 0.08, 80),
    ("pearl", "voc21"): (336, 0, "none", "tlp", 40.0, 0.1, 0.0, 0.08, 80),
    ("pearl", "voc20"): (336, 0, "none", "tlp", 40.0, 0.0, 0.0, 0.08, 80),
    ("pearl", "pc60"): (336, 224, "none", "tlp", 40.0, 0.1, 0.0, 0.08, 80),
    ("pearl", "pc59"): (336, 224, "none", "tlp", 40.0, 0.0, 0.0, 0.08, 80),
    ("pearl", "coco_object80"): (336, 224, "none", "tlp", 40.0, 0.1, 0.0, 0.08, 80),
    ("pearl", "coco_stuff171"): (336, 224, "none", "tlp", 40.0, 0.0, 0.0, 0.08, 80),
    ("pearl", "cityscapes19"): (560, 224, "none", "tlp", 40.0, 0.0, 0.0, 0.3, 224),
    ("pearl", "ade150"): (336, 224, "none", "tlp", 40.0, 0.0, 0.0, 0.3, 80),
}


@pytest.mark.parametrize("head, benchmark", sorted(PUBLISHED))
def test_published_configs_are_the_authors_settings(head, benchmark):
    from conftest import REPO
    from cliptrase_d2.config import load_config
    from cliptrase_d2.vocabulary import resolve_vocabulary

    cfg = load_config(os.path.join(REPO, "configs", head, "published", f"{benchmark}.yaml"))
    c = cfg.MODEL.CLIPTRASE
    assert (c.HEAD, c.PUBLISHED, c.VOCABULARY, c.PROTOCOL, c.TEMPLATES) == (
        head,
        f"{head}/{benchmark}",
        f"{head}/{benchmark}",
        "standard",
        "imagenet80",
    )
    assert (c.STANDARD_LONG_SIDE, c.WINDOW_STRIDE, cfg.DATASETS.TEST) == (
        2048,
        112,
        (f"cliptrase_{benchmark}_val",),
    )
    assert cfg.OUTPUT_DIR == f"./output/{head}/published/{benchmark}"
    settings = (c.STANDARD_SHORT_SIDE, c.WINDOW_SIZE, c.WINDOW_PADDING, c.REFINE, c.LOGIT_SCALE)
    settings += (c.PROB_THD, c.AREA_THD, c.PEARL_KK_WEIGHT, c.TLP_GRID)
    assert settings == PUBLISHED[head, benchmark]
    # SC-CLIP's and PEARL's class lists are SCLIP's files, byte for byte
    vocabulary = resolve_vocabulary(c.VOCABULARY)
    sclip = resolve_vocabulary(f"sclip/{benchmark}")
    assert vocabulary == sclip and vocabulary.text_rows == sclip.text_rows


def test_every_benchmark_has_both_published_settings():
    from conftest import REPO
    from cliptrase_d2.vocabulary import peer_vocabulary_keys

    for head in METHODS:
        folder = os.path.join(REPO, "configs", head, "published")
        files = {name[:-5] for name in os.listdir(folder) if name != "Base-published.yaml"}
        assert files == {b for h, b in PUBLISHED if h == head}
        assert {k for k in peer_vocabulary_keys() if k.startswith(f"{head}/")} == {
            f"{head}/{b}" for b in files
        }


def test_compare_runs_pearl_with_its_tlp_by_default(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(os.path.join(REPO, "tools"))  # as `python tools/compare.py` has
    import compare

    assert compare.head_opts("pearl", "default")[-2:] == ["MODEL.CLIPTRASE.REFINE", "tlp"]
    assert compare.head_opts("scclip", "default")[-2:] == ["MODEL.CLIPTRASE.REFINE", "none"]
    assert compare.head_opts("pearl", "none")[-1] == "none"


def _case_image():
    require_fixtures()
    case = np.load(os.path.join(FIXTURES, "cases", "pc59_224_eps0.7_min3_vocsample.npz"))
    return torch.from_numpy(case["input"])[None]  # (1, 3, 224, 224)


def test_key_key_weight_reaches_the_pearl_head(tiny_clip, tiny_opts):
    """PEARL_KK_WEIGHT is the a of softmax(s q (k R)^T + a s k_c k_c^T): the model's head gives
    pearl_block's features with that weight, and the default 0.08 is today's head bit for bit."""
    from detectron2.modeling import build_model

    from conftest import REPO
    from cliptrase_d2.config import load_config

    images = _case_image()

    def features(weight):
        cfg = load_config(
            os.path.join(REPO, "configs", "pearl", "standard.yaml"),
            [*tiny_opts, "MODEL.CLIPTRASE.PEARL_KK_WEIGHT", str(weight)],
        )
        model = build_model(cfg).eval()
        with torch.no_grad():
            return model.head.features(model.clip_model.visual, images).patch_tokens

    def by_hand(weight):
        def block(b, x, grid=None):
            return peer_heads.pearl_block(b, x, grid, key_key_weight=weight)

        with torch.no_grad():
            return Head("by hand", block).features(tiny_clip.visual, images).patch_tokens

    with torch.no_grad():
        today = get_head("pearl").features(tiny_clip.visual, images).patch_tokens
    assert torch.equal(features(0.08), today)
    heavy = features(0.3)
    torch.testing.assert_close(heavy, by_hand(0.3), rtol=0, atol=0)
    assert (heavy - today).abs().max() > 1e-3  # the weight changes the features


def test_tlp_grid_reaches_the_propagation(tiny_clip):
    """RefinementSettings.tlp_grid (TLP_GRID) is the grid TLP pools to: predict's scores are TLP
    by hand at that grid, and differ from the default grid's."""
    from cliptrase_d2.method.propagation import text_aware_propagation
    from cliptrase_d2.method.refinement import resize_logits

    images = _case_image()
    text = F.normalize(
        torch.randn(4, tiny_clip.visual.output_dim, generator=torch.Generator().manual_seed(0)),
        dim=-1,
    )
    head, scale = get_head("pearl"), 40.0
    coarse = predict(
        tiny_clip.visual,
        head,
        text,
        4,
        images,
        RefinementSettings(refine="tlp", tlp_grid=40),
        scale,
        soft_scores=False,
    ).scores
    with torch.no_grad():
        features = head.features(tiny_clip.visual, images)
        logits = dense_logits(features.patch_tokens, text, features.grid, scale).float()
        cosine = resize_logits(logits, (224, 224)) / scale
        expected = scale * text_aware_propagation(cosine, images, text, grid=40)
    torch.testing.assert_close(coarse, expected, rtol=1e-5, atol=1e-5)
    default = predict(
        tiny_clip.visual,
        head,
        text,
        4,
        images,
        RefinementSettings(refine="tlp"),
        scale,
        soft_scores=False,
    ).scores
    assert (coarse - default).abs().max() > 1e-3


def _tlp_model(tiny_opts, **overrides):
    from detectron2.modeling import build_model

    from conftest import REPO
    from cliptrase_d2.config import load_config

    opts = [
        *tiny_opts,
        "MODEL.CLIPTRASE.VOCABULARY",
        "cup, table, wall",
        "MODEL.CLIPTRASE.BACKGROUND_WORDS",
        "['floor']",
        "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
        "200",
    ]
    for key, value in overrides.items():
        opts += [f"MODEL.CLIPTRASE.{key}", str(value)]
    return build_model(
        load_config(os.path.join(REPO, "configs", "pearl", "standard.yaml"), opts)
    ).eval()


def test_standard_protocol_runs_tlp_once_on_the_averaged_resized_logits(tiny_opts):
    """PEARL's order: windows without refinement, their every-name logits averaged and resized to
    the output size, then TLP once (the image bilinear-resized to that size), then the names
    merged. A 240 x 360 photo: resized to 200 x 300, two 200 x 224 windows."""
    from cliptrase_d2.data.image_io import read_rgb
    from cliptrase_d2.method.propagation import text_aware_propagation
    from cliptrase_d2.method.refinement import resize_maps
    from cliptrase_d2.method.sliding import sliding_windows
    from cliptrase_d2.method.thresholds import merge_names

    require_fixtures()
    photo = read_rgb(os.path.join(FIXTURES, "images", "coffee.png"))[:240, :360]
    image = torch.from_numpy(photo.transpose(2, 0, 1).copy())  # (3, 240, 360)
    model = _tlp_model(tiny_opts, TLP_GRID=40)
    plain = _tlp_model(tiny_opts, REFINE="none")
    # the windows without refinement
    assert model.refinement.refine == "none" and model.steps.tlp_grid == 40
    output = model([{"image": image}])[0]["sem_seg"]
    assert output.shape == (4, 240, 360)
    vocabulary = model.vocabulary
    with torch.no_grad():
        frame = plain._normalized(torch.from_numpy(plain.frame(photo)))  # (3, 200, 300)

        def window_average(m):
            return next(
                sliding_windows(
                    [frame], lambda w: m._window_scores(w, vocabulary), 224, 112, 8, multiple=16
                )
            )

        average = window_average(plain)  # (4 rows, 200, 300)
        torch.testing.assert_close(window_average(model), average)
        rows = resize_maps(average, (240, 360))
        guide = F.interpolate(
            frame[None],
            size=(240, 360),
            mode="bilinear",
            align_corners=False,
        )
        text = plain.text_embeddings(vocabulary)
        refined = 40.0 * text_aware_propagation(rows[None] / 40.0, guide, text, grid=40)[0]
    expected = merge_names(refined, vocabulary.row_classes, len(vocabulary.classes))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)
    assert (output - merge_names(rows, vocabulary.row_classes, 3)).abs().max() > 1e-2
    labels = model([{"image": image, "scores": "none"}])[0]["labels"]
    assert torch.equal(labels, output.argmax(dim=0))
    default_grid = _tlp_model(tiny_opts)([{"image": image}])[0]["sem_seg"]
    assert (default_grid - output).abs().max() > 1e-3  # TLP_GRID reaches the standard path


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("PEARL_KK_WEIGHT", -0.1, r"MODEL\.CLIPTRASE\.PEARL_KK_WEIGHT must be >= 0, got -0\.1"),
        ("TLP_GRID", 0, r"MODEL\.CLIPTRASE\.TLP_GRID must be at least 1, got 0"),
    ],
)
def test_bad_pearl_and_tlp_settings_name_the_key(tiny_opts, key, value, message):
    from cliptrase_d2.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _tlp_model(tiny_opts, **{key: value})


def test_settings_for_another_head_or_refinement_are_reported_once(project_log):
    from detectron2.utils import logger as d2_logger

    from cliptrase_d2.modeling import settings

    d2_logger._LOG_COUNTER.clear()
    with project_log.at_level(logging.WARNING):
        for _ in range(2):
            settings.report_unused_settings(
                "sclip", RefinementSettings(refine="mean", tlp_grid=40), ["key_key_weight"]
            )
            settings.report_unused_settings("pearl", RefinementSettings(refine="tlp"), [])
    messages = [r.getMessage() for r in project_log.records if "does not apply" in r.getMessage()]
    assert len(messages) == 2
    assert "head 'sclip': MODEL.CLIPTRASE.PEARL_KK_WEIGHT does not apply" in messages[0]
    assert "REFINE 'mean': TLP_GRID does not apply" in messages[1]
