"""The on-disk text-embedding cache: keys, hits, corrupt entries."""

import os
import re

import pytest
import torch

from cliptrase_d2.text_cache import TextEmbeddingCache, entry_problem


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_hit_after_miss(tmp_path):
    cache = TextEmbeddingCache(str(tmp_path), "ViT-B-16", "abc")
    compute, calls = _counting(torch.randn(2, 4))
    first = cache.get_or_compute(["dog", "cat"], ["a {}"], compute)
    second = cache.get_or_compute(["dog", "cat"], ["a {}"], compute)
    assert len(calls) == 1 and torch.equal(first, second)


def test_any_change_misses(tmp_path):
    base = TextEmbeddingCache(str(tmp_path), "ViT-B-16", "abc")
    key = base.key(["dog", "cat"], ["a {}"])
    assert key != base.key(["dog", "cat "], ["a {}"])  # a trailing space is another name
    assert key != base.key(["cat", "dog"], ["a {}"])
    assert key != base.key(["dog", "cat"], ["a {}."])
    assert key != TextEmbeddingCache(str(tmp_path), "ViT-B-32", "abc").key(["dog", "cat"], ["a {}"])
    assert key != TextEmbeddingCache(str(tmp_path), "ViT-B-16", "abd").key(["dog", "cat"], ["a {}"])


def test_corrupt_entry_is_ignored_and_rewritten(tmp_path, project_log):
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    path = cache.path(["dog"], ["{}"])
    os.makedirs(tmp_path, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"garbage")
    value = torch.randn(1, 4)
    compute, calls = _counting(value)
    assert torch.equal(cache.get_or_compute(["dog"], ["{}"], compute), value)
    assert len(calls) == 1 and "ignoring unreadable" in project_log.text
    assert torch.equal(torch.load(path, weights_only=True)["embeddings"], value)  # rewritten


def test_wrong_shape_entry_is_recomputed(tmp_path):
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    torch.save({"embeddings": torch.randn(3, 4)}, cache.path(["dog"], ["{}"]))
    compute, calls = _counting(torch.randn(1, 4))
    cache.get_or_compute(["dog"], ["{}"], compute)
    assert len(calls) == 1


def test_setting_none_disables_and_config_json_keyed_by_content(tmp_path):
    assert TextEmbeddingCache.from_setting("none", "ViT-B-16", "openai") is None
    config = tmp_path / "tiny.json"
    config.write_text('{"embed_dim": 64}')
    first = TextEmbeddingCache.from_setting(str(tmp_path / "c"), str(config), "openai")
    config.write_text('{"embed_dim": 32}')
    second = TextEmbeddingCache.from_setting(str(tmp_path / "c"), str(config), "openai")
    assert first.model != second.model


def test_unwritable_cache_still_returns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = TextEmbeddingCache(str(blocker / "sub"), "m", "w")
    value = torch.randn(1, 2)
    assert torch.equal(cache.get_or_compute(["a"], ["{}"], lambda: value), value)


def test_precision_is_part_of_the_key(tmp_path):
    fp32 = TextEmbeddingCache(str(tmp_path), "ViT-B-16", "abc")
    assert fp32.key(["dog"], ["a {}"]) != TextEmbeddingCache(
        str(tmp_path), "ViT-B-16", "abc", "bf16"
    ).key(["dog"], ["a {}"])
    assert fp32.key(["dog"], ["a {}"]) == TextEmbeddingCache(
        str(tmp_path), "ViT-B-16", "abc", "fp32"
    ).key(["dog"], ["a {}"])


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    value = torch.randn(2, 3)
    assert torch.equal(cache.get_or_compute(["a", "b"], ["{}"], lambda: value), value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "bad, reason",
    [
        (torch.full((2, 4), float("nan")), "NaN"),
        (torch.tensor([[0.0, 1.0, float("inf"), 0.0], [1.0, 0.0, 0.0, 0.0]]), "NaN or infinite"),
        (torch.randn(2, 8), "width 8, but the model's embeddings have 4"),
        (torch.ones(2, 4, dtype=torch.int64), "dtype torch.int64"),
        (torch.randn(2, 4, 1), r"shape \(2, 4, 1\)"),
        ([[0.0] * 4] * 2, "not a tensor"),
    ],
    ids=["nan", "inf", "wrong-width", "integer", "3-d", "list"],
)
def test_invalid_entry_is_recomputed_and_rewritten(tmp_path, project_log, bad, reason):
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    path = cache.path(["dog", "cat"], ["{}"])
    torch.save({"embeddings": bad, "names": ["dog", "cat"]}, path)
    good = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    compute, calls = _counting(good)
    assert torch.equal(cache.get_or_compute(["dog", "cat"], ["{}"], compute, width=4), good)
    assert len(calls) == 1
    assert re.search(reason, project_log.text) and path in project_log.text
    assert torch.equal(torch.load(path, weights_only=True)["embeddings"], good)  # rewritten
    # the next run reads the repaired entry and computes nothing
    again, calls = _counting(torch.zeros(2, 4))
    assert torch.equal(cache.get_or_compute(["dog", "cat"], ["{}"], again, width=4), good)
    assert calls == []


def test_valid_entry_of_the_model_width_is_used(tmp_path):
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    stored = torch.randn(1, 4, dtype=torch.float16)
    torch.save({"embeddings": stored}, cache.path(["dog"], ["{}"]))
    compute, calls = _counting(torch.randn(1, 4))
    assert torch.equal(cache.get_or_compute(["dog"], ["{}"], compute, width=4), stored)
    assert calls == []


def test_unusable_computed_embeddings_are_not_stored(tmp_path, project_log):
    cache = TextEmbeddingCache(str(tmp_path), "m", "w")
    nan = torch.full((1, 4), float("nan"))
    result = cache.get_or_compute(["dog"], ["{}"], lambda: nan, width=4)
    assert result is nan and not os.path.exists(cache.path(["dog"], ["{}"]))
    assert "not caching" in project_log.text


def test_entry_problem_names_each_fault():
    assert entry_problem(torch.zeros(3, 5), 3, 5) is None
    assert entry_problem(torch.zeros(3, 5), 3) is None  # width unknown: any E
    assert "expected (2, E)" in entry_problem(torch.zeros(3, 5), 2, 5)


def test_a_home_folder_path_is_the_home_folder_s(tmp_path, monkeypatch):
    """TEXT_CACHE_DIR "~/cache" was a folder named ~ in the working folder, and a model config
    "~/tiny.json" was keyed by its path: an edited config read the old config's embeddings."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "tiny.json"
    config.write_text('{"embed_dim": 64}')
    cache = TextEmbeddingCache.from_setting("~/cache", "~/tiny.json", "openai")
    assert cache.directory == str(tmp_path / "cache")
    assert cache.model == TextEmbeddingCache.from_setting("", str(config), "openai").model
    config.write_text('{"embed_dim": 32}')
    assert cache.model != TextEmbeddingCache.from_setting("~/c", "~/tiny.json", "openai").model
