"""Peer heads (MaskCLIP, SCLIP, ClearCLIP, NACLIP) against their authors' code (the
reference outputs in peers/ beside $CLIPTRASE_FIXTURES).

For every reference file: given the CLIPtrase case's `input` and `text` that the peer manifest
names, the head's patch logits agree within 1e-4 relative, its L2-normalized patch features
within 1e-5, and ``predict`` with refine='none' gives the reference label map on
>= 99.99 % of the pixels, every differing pixel being a near-tie of the reference logits.
The model is conftest's ``tiny_clip`` (``clip_loading.build_clip`` on the fixtures' tiny CLIP).
"""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, MANIFEST, PEERS, require_fixtures, skip_outside_ci
from cliptrase_d2.method.heads import HEADS, get_head, resolve_logit_scale
from cliptrase_d2.method.peer_heads import neighbourhood_bias
from cliptrase_d2.method.pipeline import RefinementSettings, predict
from cliptrase_d2.method.refinement import dense_logits

# (peer folder, manifest variant) -> the head that reproduces it
HEAD_OF_VARIANT = {
    ("maskclip", "fp32"): "maskclip",
    ("maskclip", "keep_residual_fp32"): "maskclip_residual",
    ("sclip", "fp32"): "sclip",
    ("clearclip", "fp32"): "clearclip",
    ("naclip", "fp32"): "naclip",
}
PEER_HEADS = sorted(set(HEAD_OF_VARIANT.values()))
LOGIT_RTOL = 1e-4  # max |ours - reference| / max |reference| over a patch-logit map
FEATURE_ATOL = 1e-5  # on unit-norm patch features
MIN_PIXEL_AGREEMENT = 0.9999


def require_peers():
    """Skips when the peers' reference outputs are absent; under CI (CI=true) that is a failure."""
    require_fixtures()
    if os.path.isdir(PEERS):
        return
    skip_outside_ci(
        f"peer reference outputs not found at {PEERS} (expected beside "
        f"CLIPTRASE_FIXTURES={FIXTURES})"
    )


def reference_files(head_name):
    """[(peer npz path, CLIPtrase case npz path)] the manifests list for a head."""
    files = []
    for (method, variant), name in HEAD_OF_VARIANT.items():
        if name != head_name:
            continue
        with open(os.path.join(PEERS, method, "manifest.json")) as f:
            entries = json.load(f)["files"]
        if isinstance(entries, dict):  # sclip / naclip: {path: {"variant", "case", ...}}
            entries = [dict(entry, path=path) for path, entry in entries.items()]
        for entry in entries:
            if entry["variant"] == variant:
                case = entry.get("case", entry.get("source_case"))
                files.append(
                    (
                        os.path.join(PEERS, method, entry["path"]),
                        os.path.join(FIXTURES, "cases", case),
                    )
                )
    return files


@pytest.fixture(scope="module")
def head_outputs(tiny_clip):
    """Per head, per image size: reference arrays, our patch features and logits, our labels.

    Every npz is loaded once and the images of one size run as one batch.
    """
    cache = {}

    def compute(head_name):
        if head_name in cache:
            return cache[head_name]
        head = get_head(head_name)
        scale = resolve_logit_scale(head, tiny_clip)
        by_size = {}
        for peer_path, case_path in reference_files(head_name):
            case = np.load(case_path)
            size = case["input"].shape[-1]
            by_size.setdefault(size, []).append(
                (
                    os.path.relpath(peer_path, PEERS),
                    dict(np.load(peer_path)),
                    case["input"],
                    case["text"],
                )
            )
        groups = []
        for size, items in sorted(by_size.items()):
            images = torch.stack([torch.from_numpy(item[2]) for item in items])
            text = torch.from_numpy(items[0][3])
            with torch.no_grad():
                features = head.features(tiny_clip.visual, images)
                logits = dense_logits(
                    features.patch_tokens, text, features.grid, scale
                )  # (B, K, h, w)
                scores = predict(
                    tiny_clip.visual,
                    head,
                    text,
                    text.shape[0],
                    images,
                    RefinementSettings(refine="none"),
                    logit_scale=scale,
                    soft_scores=False,
                ).scores
            groups.append(
                dict(
                    size=size,
                    names=[item[0] for item in items],
                    references=[item[1] for item in items],
                    features=features.patch_tokens,
                    logits=logits,
                    labels=scores.argmax(dim=1),
                )
            )
        cache[head_name] = groups
        return groups

    return compute


def _parity_ids():
    return PEER_HEADS if os.path.isdir(PEERS) else ["peers-missing"]


def _reference_margin(reference_logits, size):
    """top1 - top2 of the reference patch logits upsampled to (size, size): (S, S)."""
    upsampled = F.interpolate(
        torch.from_numpy(reference_logits)[None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[0]
    top2 = upsampled.topk(2, dim=0).values
    return (top2[0] - top2[1]).numpy()


@pytest.mark.parametrize("head_name", _parity_ids())
def test_matches_authors_code(head_name, head_outputs):
    require_peers()
    groups = head_outputs(head_name)
    assert sum(len(group["names"]) for group in groups) == 8, "expected 4 images x 2 sizes per head"
    for group in groups:
        for i, (name, reference) in enumerate(zip(group["names"], group["references"])):
            reference_logits = torch.from_numpy(reference["patch_logits"])
            logit_error = (
                group["logits"][i] - reference_logits
            ).abs().max() / reference_logits.abs().max()
            assert logit_error <= LOGIT_RTOL, (
                f"{name}: patch logits differ by {logit_error:.2e} relative"
            )
            torch.testing.assert_close(
                group["features"][i],
                torch.from_numpy(reference["patch_features"]),
                rtol=0,
                atol=FEATURE_ATOL,
                msg=lambda m: f"{name}: patch features: {m}",
            )
            labels = group["labels"][i].numpy()
            differ = labels != reference["pred"]
            agreement = 1 - differ.mean()
            assert agreement >= MIN_PIXEL_AGREEMENT, (
                f"{name}: labels agree on only {agreement:.6f} of the pixels"
            )
            if differ.any():  # each differing pixel must be a near-tie of the reference logits
                margins = _reference_margin(reference["patch_logits"], group["size"])[differ]
                tie_tolerance = 2 * LOGIT_RTOL * reference_logits.abs().max().item()
                assert (margins <= tie_tolerance).all(), (
                    f"{name}: {differ.sum()} differing pixels, top1 - top2 margins up to "
                    f"{margins.max():.2e} "
                    f"> {tie_tolerance:.1e}"
                )


@pytest.mark.parametrize("head_name", _parity_ids())
def test_logit_scale_is_the_authors(head_name, tiny_clip):
    require_peers()
    method = next(method for (method, _), name in HEAD_OF_VARIANT.items() if name == head_name)
    with open(os.path.join(PEERS, method, "manifest.json")) as f:
        authors_scale = json.load(f)["flags"]["logit_scale"]
    assert resolve_logit_scale(get_head(head_name), tiny_clip) == authors_scale
    assert resolve_logit_scale(get_head(head_name), tiny_clip, override=65.0) == 65.0


def test_unknown_head_lists_available_heads():
    with pytest.raises(ValueError, match="unknown head 'maskclip_v2'") as error:
        get_head("maskclip_v2")
    for name in HEADS:
        assert name in str(error.value)


def test_every_head_is_registered_and_described():
    assert set(PEER_HEADS) <= set(HEADS)
    for name, head in HEADS.items():
        assert head.name == name
        assert head.description.strip(), f"head {name!r} has no description"


def test_neighbourhood_bias_is_an_untruncated_gaussian_over_patch_offsets():
    grid, std = (3, 5), 5.0
    bias = neighbourhood_bias(grid, std)
    n = grid[0] * grid[1]
    assert bias.shape == (1 + n, 1 + n)
    assert (bias[0] == 0).all() and (bias[:, 0] == 0).all()
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten().double(), cols.flatten().double()
    squared_distance = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    expected = torch.exp(-squared_distance / (2 * std**2)).float()
    torch.testing.assert_close(bias[1:, 1:], expected, rtol=0, atol=1e-6)


def test_refinement_composes_with_a_peer_head(tiny_clip):
    """Region voting works on a peer head's logits: one label per region, unlike the raw argmax."""
    require_fixtures()
    with open(MANIFEST) as f:
        runs = json.load(f)["runs"]
    run, case_info = next(
        (run, case)
        for run in runs
        if run["dataset"] == "PC59"
        for case in run["cases"]
        if case["clusters"] > 1
    )
    case = np.load(os.path.join(FIXTURES, "cases", case_info["file"]))
    images, text = torch.from_numpy(case["input"])[None], torch.from_numpy(case["text"])
    head = get_head("maskclip")
    scale = resolve_logit_scale(head, tiny_clip)
    voted = predict(
        tiny_clip.visual,
        head,
        text,
        text.shape[0],
        images,
        RefinementSettings("vote", run["eps"], run["min_samples"]),
        logit_scale=scale,
        soft_scores=False,
    ).scores
    raw = predict(
        tiny_clip.visual,
        head,
        text,
        text.shape[0],
        images,
        RefinementSettings(refine="none"),
        logit_scale=scale,
        soft_scores=False,
    ).scores
    assert voted.shape == raw.shape == (1, text.shape[0], *images.shape[-2:])
    assert ((voted == 0) | (voted == 1)).all() and (voted.sum(dim=1) == 1).all()
    voted_labels, raw_labels = voted[0].argmax(dim=0), raw[0].argmax(dim=0)
    assert len(voted_labels.unique()) <= case_info["clusters"] < len(raw_labels.unique())
    assert set(voted_labels.unique().tolist()) <= set(raw_labels.unique().tolist())
    assert (voted_labels != raw_labels).any()
