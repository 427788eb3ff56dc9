"""Text classifier: template averaging, Unicode and over-long names."""

import logging

import torch

from cliptrase_d2.method.text import count_tokens, text_embeddings


def test_embeddings_are_unit_norm_template_means(tiny_clip, tiny_tokenizer):
    templates = ("a photo of a {}.", "a {} in the scene")
    ours = text_embeddings(tiny_clip, tiny_tokenizer, ["dog", "cat"], templates)
    assert ours.shape == (2, 64)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        per_prompt = torch.nn.functional.normalize(
            tiny_clip.encode_text(tiny_tokenizer([t.format("dog") for t in templates])), dim=-1
        )
    expected = torch.nn.functional.normalize(per_prompt.mean(0), dim=-1)
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-6)


def test_unicode_names_are_encoded(tiny_clip, tiny_tokenizer):
    names = ["café", "犬", "Ümlaut-Straße"]
    ours = text_embeddings(tiny_clip, tiny_tokenizer, names, ("a photo of a {}.",))
    assert torch.isfinite(ours).all() and ours.shape == (3, 64)
    assert len({tuple(row.tolist()) for row in ours}) == 3  # distinct names, distinct embeddings


def test_over_long_names_are_truncated_with_one_warning_each(
    tiny_clip, tiny_tokenizer, project_log
):
    long_name = " ".join(["extraordinarily"] * 80)
    assert count_tokens(tiny_tokenizer, long_name) > 77
    with project_log.at_level(logging.WARNING):
        ours = text_embeddings(
            tiny_clip, tiny_tokenizer, ["dog", long_name], ("a photo of a {}.", "{}")
        )
    warnings = [r.getMessage() for r in project_log.records if "does not fit" in r.getMessage()]
    assert len(warnings) == 1 and "extraordinarily" in warnings[0]
    assert torch.isfinite(ours).all()
