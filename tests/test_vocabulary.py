"""Vocabularies: benchmark keys, user lists and files, the paper's quirks, bad input."""
import pytest

from cliptrase_d2.vocabulary import Vocabulary, benchmark_keys, resolve_vocabulary, template_set


def test_every_benchmark_resolves_with_its_class_count():
    expected = {"voc20": 20, "voc21": 21, "pc59": 59, "pc60": 60, "pc459": 459, "coco_stuff171": 171,
                "coco_object80": 81, "ade150": 150, "ade847": 847, "cityscapes19": 19}
    assert sorted(expected) == benchmark_keys()
    for key, count in expected.items():
        assert resolve_vocabulary(key).num_classes == count
        assert resolve_vocabulary(key, paper_quirks=True).num_classes == count


def test_background_words_merge_into_one_class():
    vocabulary = resolve_vocabulary("voc21", paper_quirks=True)
    assert len(vocabulary.classes) == 20 and len(vocabulary.background) == 33
    assert vocabulary.class_names[-1] == "background" and len(vocabulary.text_rows) == 53


def test_paper_quirks_kept_only_on_request():
    paper = resolve_vocabulary("voc21", paper_quirks=True).background
    clean = resolve_vocabulary("voc21").background
    assert paper.count("bed") == 2 and "beachhill" in paper
    assert clean.count("bed") == 1 and "beachhill" not in clean and {"beach", "hill"} <= set(clean)
    assert "bed " in resolve_vocabulary("ade150", paper_quirks=True).classes
    assert "bed" in resolve_vocabulary("ade150").classes


def test_user_lists_files_and_background(tmp_path):
    assert resolve_vocabulary(" sky, dog ,frisbee ").classes == ("sky", "dog", "frisbee")
    names = tmp_path / "names.txt"
    names.write_text("# my classes\nsky\n\ndog\n", encoding="utf-8")
    vocabulary = resolve_vocabulary(str(names), background=["wall"])
    assert vocabulary.classes == ("sky", "dog") and vocabulary.class_names == ["sky", "dog", "background"]
    assert resolve_vocabulary(["chat", "café", "犬"]).classes == ("chat", "café", "犬")


@pytest.mark.parametrize("spec, error, message", [
    ("", ValueError, "no class names"),
    ([], ValueError, "vocabulary is empty"),
    ("dog, cat, dog", ValueError, "duplicate name 'dog'"),
    ("Dog, dog", ValueError, "duplicate name"),
    ("missing_file.txt", FileNotFoundError, "missing_file.txt"),
])
def test_bad_vocabularies(spec, error, message):
    with pytest.raises(error, match=message):
        resolve_vocabulary(spec)


def test_empty_vocabulary_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="has no class names"):
        resolve_vocabulary(str(empty))


def test_duplicate_between_classes_and_background():
    with pytest.raises(ValueError, match="duplicate name 'sky'"):
        Vocabulary(("sky", "dog"), ("sky",))


def test_template_sets():
    assert len(template_set("imagenet80")) == 80 and len(template_set("vild14")) == 14
    with pytest.raises(ValueError, match="imagenet80"):
        template_set("imagenet81")
