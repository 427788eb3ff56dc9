"""Vocabularies: benchmark keys, user lists and files, the paper's quirks, bad input."""

import re

import pytest

from cliptrase_d2.errors import InputError
from cliptrase_d2.vocabulary import (
    Vocabulary,
    benchmark_keys,
    peer_vocabulary_keys,
    resolve_vocabulary,
    template_set,
)


def test_every_benchmark_resolves_with_its_class_count():
    expected = {
        "voc20": 20,
        "voc21": 21,
        "pc59": 59,
        "pc60": 60,
        "pc459": 459,
        "coco_stuff171": 171,
        "coco_object80": 81,
        "ade150": 150,
        "ade847": 847,
        "cityscapes19": 19,
    }
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
    assert vocabulary.classes == ("sky", "dog") and vocabulary.class_names == [
        "sky",
        "dog",
        "background",
    ]
    assert resolve_vocabulary(["chat", "café", "犬"]).classes == ("chat", "café", "犬")


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("", ValueError, "no class names"),
        ([], ValueError, "vocabulary is empty"),
        ("dog, cat, dog", ValueError, "duplicate name 'dog'"),
        ("Dog, dog", ValueError, "duplicate name"),
        # names that read the same: a zero-width space or a BOM, fullwidth letters, an accent
        # given as its own combining character
        (["cat", "cat\u200b"], ValueError, "duplicate name 'cat\\\\u200b'"),
        (["\ufeffcat", "cat"], ValueError, "duplicate name 'cat'"),
        ("cat, \uff43\uff41\uff54", ValueError, "duplicate name"),
        ("c\u00e1t, ca\u0301t", ValueError, "duplicate name"),
        ("missing_file.txt", FileNotFoundError, "missing_file.txt"),
    ],
)
def test_bad_vocabularies(spec, error, message):
    with pytest.raises(error, match=message):
        resolve_vocabulary(spec)


@pytest.mark.parametrize(
    "spec, background, message",
    [
        (["cat", None], (), r"vocabulary item 1 is None \(NoneType\), not a string: give class"),
        ([3, 4], (), r"vocabulary item 0 is 3 \(int\), not a string"),
        ("cat, dog", ["sky", 2.5], r"background item 1 is 2\.5 \(float\), not a string"),
        ("cat, dog", 7, r"background must be a word or a list of words.*got int 7"),
        (42, (), r"vocabulary must be a string .* got int 42"),
        ({"cat"}, (), r"vocabulary must be .* a list of names or a Vocabulary, got set"),
    ],
)
def test_names_of_another_type_are_a_type_error_naming_what_to_give(spec, background, message):
    with pytest.raises(TypeError, match=message):
        resolve_vocabulary(spec, background)


def test_a_string_background_is_one_word():
    vocabulary = resolve_vocabulary("cat, dog", background="sky")
    assert vocabulary.background == ("sky",) and vocabulary.class_names[-1] == "background"
    assert (
        resolve_vocabulary("voc20", "sky").background
        == resolve_vocabulary("voc20", ["sky"]).background
    )
    assert resolve_vocabulary("cat, dog", background="blue sky").background == ("blue sky",)


def test_empty_vocabulary_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="has no class names"):
        resolve_vocabulary(str(empty))


def test_a_background_word_already_there_is_not_added_again():
    """Added words are compared with the vocabulary's own as names are compared everywhere:
    'ＳＫＹ' or 'sky' with a zero-width space is VOC21's 'sky', as 'Sky' is."""
    voc21 = resolve_vocabulary("voc21")
    for word in ("Sky", "\uff33\uff2b\uff39", "sky\u200b"):
        assert resolve_vocabulary(voc21, [word, "moon"]).background == (*voc21.background, "moon")


def test_duplicate_between_classes_and_background():
    with pytest.raises(ValueError, match="duplicate name 'sky'"):
        Vocabulary(("sky", "dog"), ("sky",))


def test_template_sets():
    assert len(template_set("imagenet80")) == 80 and len(template_set("vild14")) == 14
    with pytest.raises(ValueError, match="imagenet80"):
        template_set("imagenet81")


def test_benchmark_keys_ignore_case_and_spaces():
    assert resolve_vocabulary(" VOC21 ") == resolve_vocabulary("voc21")
    assert resolve_vocabulary("ADE150").num_classes == 150


@pytest.mark.parametrize(
    "spec, key",
    [("voc-21", "voc21"), ("ade_150", "ade150"), ("pc 59", "pc59"), ("ade15", "ade150")],
)
def test_a_near_miss_of_a_key_is_an_error_that_names_it(spec, key):
    with pytest.raises(ValueError, match=f"did you mean '{key}'"):
        resolve_vocabulary(spec)


def test_background_words_add_to_a_keys_own():
    voc20 = resolve_vocabulary("voc20", background=["sky", "wall"])
    assert voc20.classes == resolve_vocabulary("voc20").classes and voc20.background == (
        "sky",
        "wall",
    )
    voc21 = resolve_vocabulary("voc21")
    extended = resolve_vocabulary("voc21", background=["tablecloth", voc21.background[0].upper()])
    assert extended.background == voc21.background + (
        "tablecloth",
    )  # a word it has is not added twice
    assert resolve_vocabulary(voc21, background=["tablecloth"]).background == extended.background
    assert resolve_vocabulary(voc21) is voc21


def test_a_class_named_background_with_background_words_is_an_error():
    with pytest.raises(ValueError, match="named 'background'"):
        resolve_vocabulary("cat, Background", background=["sky"])
    with pytest.raises(ValueError, match="named 'background'"):  # fullwidth: reads the same
        resolve_vocabulary("cat, \uff42ackground", background=["sky"])
    assert resolve_vocabulary("cat, background").class_names == [
        "cat",
        "background",
    ]  # without words it is a class


def test_vocabulary_files_bom_comments_and_encoding(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\ufeffsky\n  # an indented comment\n dog \n", encoding="utf-8")
    assert resolve_vocabulary(str(names)).classes == ("sky", "dog")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\ndog\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt is not UTF-8"):
        resolve_vocabulary(str(latin))


def test_undecodable_names_are_an_error():
    with pytest.raises(ValueError, match="not valid text"):
        resolve_vocabulary("caf\udce9, dog")


def test_a_single_class_warns(caplog):
    with caplog.at_level("WARNING", logger="cliptrase_d2.vocabulary"):
        resolve_vocabulary("cat")
    assert "single class" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cliptrase_d2.vocabulary"):
        resolve_vocabulary("cat", background=["sky"])
        resolve_vocabulary("cat, dog")
    assert caplog.text == ""


@pytest.mark.parametrize(
    "spec, background, bad",
    [
        ("!!!, ???", (), "!!!"),
        ("cat, ---", (), "---"),
        (["dog", "..."], (), "..."),
        ("cat, dog", ("?!",), "?!"),
        ("\N{CAT FACE}, dog", (), "\N{CAT FACE}"),
    ],
)
def test_names_without_a_letter_or_digit_are_an_error(spec, background, bad):
    with pytest.raises(InputError, match=f"{re.escape(repr(bad))} has no letter or digit"):
        resolve_vocabulary(spec, background)


def test_punctuation_file_is_an_error_naming_the_name(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("cat\n***\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"'\*\*\*' has no letter or digit"):
        resolve_vocabulary(str(path))


def test_names_with_any_letter_or_digit_pass():
    names = ("\u732b", "r2-d2", "t-shirt", "7up", "caf\u00e9", "rock & roll")
    assert resolve_vocabulary(list(names)).classes == names


def test_every_benchmark_and_peer_list_passes_the_name_checks():
    for key in benchmark_keys():
        for quirks in (False, True):
            vocabulary = resolve_vocabulary(key, paper_quirks=quirks)
            assert all(any(c.isalnum() for c in name) for name in vocabulary.text_rows)
    for key in peer_vocabulary_keys():
        assert resolve_vocabulary(key).num_classes > 1


def test_a_folder_or_a_missing_path_is_named_as_such_and_slashes_in_names_pass(tmp_path):
    with pytest.raises(InputError, match=f"vocabulary {tmp_path} is a folder: give a file"):
        resolve_vocabulary(str(tmp_path))
    missing = str(tmp_path / "lists" / "names.txt")
    with pytest.raises(FileNotFoundError, match=f"vocabulary file {missing} does not exist"):
        resolve_vocabulary(missing)
    with pytest.raises(InputError, match="no published vocabulary 'sclip/voc99'"):
        resolve_vocabulary("sclip/voc99")
    assert resolve_vocabulary("person, tv/monitor").classes == ("person", "tv/monitor")


@pytest.mark.parametrize(
    "spec, background, bad",
    [
        ("cat\ndog", (), "cat\ndog"),
        ("cat\tdog, sky", (), "cat\tdog"),
        ("cat", ["a\nb"], "a\nb"),
        # a line separator: the web page (split_names) reads two names, so it is not one name
        ("cat\u2028dog", (), "cat\u2028dog"),
        ("cat", ["a\u2029b"], "a\u2029b"),
    ],
)
def test_names_with_a_line_break_or_control_character_are_an_error(spec, background, bad):
    # such a name reached CLIP as it was, and the demo's legend failed on it after segmenting
    with pytest.raises(InputError, match=f"{re.escape(repr(bad))} has a line break, tab or"):
        resolve_vocabulary(spec, background)


def test_a_vocabulary_of_lists_is_one_of_tuples_and_a_string_is_refused():
    # lists ended in "can only concatenate list (not "tuple") to list"
    vocabulary = Vocabulary(["cat", "dog"], ["sky"])
    assert vocabulary == Vocabulary(("cat", "dog"), ("sky",)) and hash(vocabulary)
    with pytest.raises(TypeError, match=r"Vocabulary classes must be a tuple of names.*'cat, dog'"):
        Vocabulary("cat, dog")
    with pytest.raises(TypeError, match=r"Vocabulary background item 0 is None \(NoneType\)"):
        Vocabulary(("cat",), [None])


def test_a_mistyped_peer_is_named_with_the_close_match_and_a_wrong_key_lists_its_keys():
    # 'scilp/voc21' was "vocabulary file scilp/voc21 does not exist"
    with pytest.raises(InputError, match=r"'scilp' is not a peer method: did you mean 'sclip/"):
        resolve_vocabulary("scilp/voc21")
    with pytest.raises(InputError, match=r"'sclip/voc99': sclip's lists are sclip/ade150, ") as e:
        resolve_vocabulary("sclip/voc99")
    assert "naclip/" not in str(e.value)
