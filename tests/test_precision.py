"""PRECISION fp16 computes as OpenAI's CLIP does (open_clip's mixed fp16): fp16 weights and
activations, every LayerNorm in fp32 and cast back; fp32 (the default) is left exactly as loaded."""

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNormFp32

from conftest import TINY_CONFIG, TINY_WEIGHTS, require_fixtures
from cliptrase_d2.clip_loading import build_clip
from cliptrase_d2.method.dense_clip import dense_features


def test_fp16_layer_norms_compute_in_fp32_and_cast_back():
    require_fixtures()
    model = build_clip(TINY_CONFIG, TINY_WEIGHTS, precision="fp16")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) >= 2 * 12 + 2  # every block's two, ln_pre and ln_post at least
    x = (torch.randn(5, 3, 128) * 30).half()
    for norm in (model.visual.ln_pre, model.visual.transformer.resblocks[3].ln_2):
        assert isinstance(norm, LayerNormFp32)  # open_clip's own, as are its fp32 parameters
        assert norm.weight.dtype == torch.float32
        expected = F.layer_norm(
            x.float(), (128,), norm.weight.float(), norm.bias.float(), norm.eps
        ).half()
        assert torch.equal(norm(x), expected) and norm(x).dtype == torch.float16


def test_every_fp16_layer_norm_receives_fp32(monkeypatch):
    """What reaches ``layer_norm`` in a whole forward (a CPU's fp16 kernel also widens inside, so
    the inputs, not the outputs, tell the two apart there)."""
    require_fixtures()
    model = build_clip(TINY_CONFIG, TINY_WEIGHTS, precision="fp16")
    seen = []
    layer_norm = F.layer_norm
    monkeypatch.setattr(
        F,
        "layer_norm",
        lambda x, *a, **k: seen.append((x.dtype, a[1].dtype)) or layer_norm(x, *a, **k),
    )
    with torch.no_grad():
        model.encode_image(torch.randn(1, 3, 224, 224).half())
    assert len(seen) == 2 * 12 + 2 and set(seen) == {(torch.float32, torch.float32)}


def test_fp32_is_untouched_and_fp16_features_stay_close():
    require_fixtures()
    exact = build_clip(TINY_CONFIG, TINY_WEIGHTS)
    half = build_clip(TINY_CONFIG, TINY_WEIGHTS, precision="fp16")
    x = torch.randn(5, 3, 128)
    assert torch.equal(
        exact.visual.ln_pre(x),
        F.layer_norm(
            x, (128,), exact.visual.ln_pre.weight, exact.visual.ln_pre.bias, exact.visual.ln_pre.eps
        ),
    )
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = dense_features(exact.visual, images)
        features = dense_features(half.visual, images.half())
    assert features.tokens.dtype == torch.float16
    torch.testing.assert_close(features.tokens.float(), reference.tokens, rtol=0, atol=2e-2)
    torch.testing.assert_close(
        features.correlation.float(), reference.correlation, rtol=0, atol=2e-2
    )
