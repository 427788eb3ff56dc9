"""Config checks at load time, whatever the source (a YAML file, its _BASE_s, command-line
options, a LazyConfig and its overrides): every numeric key within its declared Range, YAML read
as data only, _BASE_ loops and LazyConfig mistakes named in one line before anything is built."""

import glob
import os
import sys

import pytest

from conftest import REPO
from cliptrase_d2.config import RANGES, check_argument, load_config, load_lazy_config
from cliptrase_d2.errors import ConfigError, MissingFileError, UnknownNameError

PAPER = os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml")
STANDARD = os.path.join(REPO, "configs", "standard", "Base-standard.yaml")
LAZY = os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py")


def _yaml(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("key", ["DBSCAN_EPS", "LOGIT_SCALE", "PEARL_KK_WEIGHT", "PROB_THD"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_floats_in_a_yaml_file_are_refused(tmp_path, key, value):
    config = _yaml(
        tmp_path,
        "bad.yaml",
        f"_BASE_: {STANDARD}\nMODEL:\n  CLIPTRASE:\n    {key}: {value}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = _one_line(caught)
    assert message.startswith(f"MODEL.CLIPTRASE.{key} must be ")
    assert f"got {float(value.replace('.', ''))!r} in {config}" in message


def test_command_line_overflow_to_inf_is_refused():
    with pytest.raises(ConfigError, match=r"LOGIT_SCALE must be a finite number .* got inf in "):
        load_config(PAPER, ["MODEL.CLIPTRASE.LOGIT_SCALE", "1e999"])


def test_a_negative_logit_scale_is_refused_and_zero_keeps_the_models_own():
    with pytest.raises(ConfigError) as caught:
        load_config(PAPER, ["MODEL.CLIPTRASE.LOGIT_SCALE", "-10.0"])
    assert _one_line(caught) == (
        "MODEL.CLIPTRASE.LOGIT_SCALE must be >= 0 (0 = the head's own or CLIP's learned scale), "
        "got -10.0 in command-line options (default 0.0)"
    )
    assert (
        load_config(PAPER, ["MODEL.CLIPTRASE.LOGIT_SCALE", "0.0"]).MODEL.CLIPTRASE.LOGIT_SCALE == 0
    )


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.CLIPTRASE.PROB_THD", "2.0"],
            r"PROB_THD must be a fraction in \[0, 1\] .*got 2\.0",
        ),
        (
            ["MODEL.CLIPTRASE.AREA_THD", "-0.5"],
            r"AREA_THD must be a fraction in \[0, 1\].*got -0\.5",
        ),
        (["DATALOADER.NUM_WORKERS", "-1"], r"DATALOADER\.NUM_WORKERS must be at least 0, got -1"),
        (["MODEL.CLIPTRASE.PAMR_DILATIONS", "[8, 0]"], r"PAMR_DILATIONS must be a list of whole"),
        (["MODEL.CLIPTRASE.PAMR_DILATIONS", "[]"], r"each at least 1, got \[\]"),
        (
            ["MODEL.CLIPTRASE.DBSCAN_MIN_SAMPLES", "-3"],
            r"MIN_SAMPLES must be at least 0 \(0 = auto",
        ),
    ],
)
def test_out_of_range_values_are_refused_at_load_time_not_at_build_time(opts, message):
    # with REFINE none nothing at build time would look at the thresholds' range first
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(STANDARD, ["MODEL.CLIPTRASE.REFINE", "none", *opts])
    assert "in command-line options" in _one_line(caught)


@pytest.mark.parametrize(
    "opts, message",
    [
        (  # a word that is not a string: a TypeError traceback when the model was built
            [
                "MODEL.CLIPTRASE.VOCABULARY",
                "cat, dog",
                "MODEL.CLIPTRASE.BACKGROUND_WORDS",
                "['sky', 3]",
            ],
            r"BACKGROUND_WORDS must be a list of words, e\.g\. \['sky', 'wall'\], got \['sky', 3\] "
            "in command-line options",
        ),
        (  # no vocabulary of one's own: the words were silently ignored
            ["MODEL.CLIPTRASE.BACKGROUND_WORDS", "['sky']"],
            r"BACKGROUND_WORDS \['sky'\] in command-line options extends a vocabulary of your own, "
            "and MODEL.CLIPTRASE.VOCABULARY is empty: set it",
        ),
    ],
)
def test_background_words_that_cannot_be_used_are_refused_at_load_time(opts, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(PAPER, opts)
    _one_line(caught)
    words = ["MODEL.CLIPTRASE.BACKGROUND_WORDS", "['sky']"]
    assert load_config(PAPER, ["MODEL.CLIPTRASE.VOCABULARY", "cat", *words])


@pytest.mark.parametrize("arch", ["Foo", "GeneralizedRCNN"])
def test_a_meta_architecture_other_than_cliptrase_is_refused_at_load_time(arch):
    # build_model ended in a KeyError (not registered) or an AttributeError (no vocabulary)
    with pytest.raises(ConfigError) as caught:
        load_config(PAPER, ["MODEL.META_ARCHITECTURE", arch])
    assert _one_line(caught) == (
        f"MODEL.META_ARCHITECTURE {arch!r} is not CLIPtrase (nor a subclass of it): set "
        "MODEL.META_ARCHITECTURE CLIPtrase, as configs/Base-CLIPtrase.yaml does"
    )


def test_a_value_for_a_group_of_keys_is_one_line_not_a_dump_of_the_group(tmp_path):
    # yacs's Type mismatch message held the whole MODEL.CLIPTRASE node, over ~50 lines
    config = _yaml(tmp_path, "node.yaml", f"_BASE_: {PAPER}\nMODEL:\n  CLIPTRASE: 3\n")
    fix = "MODEL.CLIPTRASE is a group of keys, not a value: set its keys (MODEL.CLIPTRASE.<KEY>)"
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert _one_line(caught) == f"config file {config}: {fix}"
    with pytest.raises(ConfigError) as caught:
        load_config(PAPER, ["MODEL.CLIPTRASE", "3"])
    assert _one_line(caught) == f"command-line options: {fix}"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.CLIPTRASE.DBSCAN_EPS", "0", "takes a decimal number (now 0.7), not 0: write 0.0"),
        ("MODEL.CLIPTRASE.PAPER_SIZE", "2.5", "takes a whole number (now 224), not 2.5"),
        (
            "DATASETS.TEST",
            "cliptrase_voc21_val",
            "takes a tuple (now ()), not cliptrase_voc21_val: write \"('cliptrase_voc21_val',)\"",
        ),
    ],
)
def test_a_value_of_another_type_says_what_the_key_takes(key, value, message):
    # yacs: "Type mismatch (<class 'float'> vs. <class 'int'>) with values (0.7 vs. 0) ..."
    with pytest.raises(ConfigError) as caught:
        load_config(PAPER, [key, value])
    assert _one_line(caught) == f"command-line options: {key} {message}"


def test_an_override_without_a_value_is_named():
    # yacs: an AssertionError traceback printing the whole list (tools/demo.py --opts MODEL.WEIGHTS)
    with pytest.raises(ConfigError) as caught:
        load_config(PAPER, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS"])
    assert _one_line(caught) == (
        "command-line options are KEY VALUE pairs, and 'MODEL.WEIGHTS' (the last of 3) has no "
        "value: give it one, or remove it"
    )


def test_every_published_config_is_within_the_ranges():
    configs = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert len(configs) > 50
    for config in configs:
        load_config(config, resolve=False)
    assert {"MODEL.CLIPTRASE.LOGIT_SCALE", "DATALOADER.NUM_WORKERS"} <= set(RANGES)
    assert all(rule.kind in (int, float) for rule in RANGES.values())


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(window_batch=0), "MODEL.CLIPTRASE.WINDOW_BATCH must be at least 1, got 0"),
        (dict(pamr_dilations=()), "PAMR_DILATIONS must be a list of whole numbers, each at least"),
        (dict(protocol="standard", prob_thd=2.0), r"PROB_THD must be a fraction in \[0, 1\]"),
        (dict(pearl_kk_weight=-0.1), r"PEARL_KK_WEIGHT must be >= 0, got -0\.1"),
    ],
)
def test_a_model_built_without_load_config_checks_the_same_ranges(
    tiny_clip, tiny_tokenizer, setting, message
):
    """CLIPtrase(...) itself (or Detectron2's own get_cfg + merge_from_file path) reads RANGES."""
    from cliptrase_d2.modeling.meta_arch import CLIPtrase

    with pytest.raises(ConfigError, match=message):
        CLIPtrase(clip_model=tiny_clip, tokenizer=tiny_tokenizer, templates=["{}"], **setting)


# ---------------------------------------------------------------- YAML is data


@pytest.mark.parametrize("where", ["file", "base"])
def test_a_python_tag_in_a_yaml_config_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "marker"
    tagged = f'MODEL:\n  DEVICE: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    if where == "file":
        config = _yaml(tmp_path, "tagged.yaml", tagged)
    else:
        _yaml(tmp_path, "tagged_base.yaml", tagged)
        config = _yaml(tmp_path, "child.yaml", "_BASE_: tagged_base.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = _one_line(caught)
    assert "tagged" in message and "python/object/apply" in message and "never run code" in message
    assert not marker.exists()


def test_detectron2_itself_is_asked_for_the_safe_loader(tmp_path, monkeypatch):
    """A Python tag that gets past the first reading (a file changed in between) is still not
    run: Detectron2's merge is called with allow_unsafe=False."""
    from detectron2.config import CfgNode

    calls = []
    merge = CfgNode.merge_from_file
    monkeypatch.setattr(
        CfgNode,
        "merge_from_file",
        lambda self, name, allow_unsafe=True: (
            calls.append(allow_unsafe) or merge(self, name, False)
        ),
    )
    load_config(PAPER)
    assert calls == [False]


@pytest.mark.parametrize("loop", ["self", "pair"])
def test_a_base_loop_is_named_not_a_recursion_error(tmp_path, loop):
    if loop == "self":
        config = _yaml(tmp_path, "a.yaml", "_BASE_: a.yaml\n")
    else:
        config = _yaml(tmp_path, "a.yaml", "_BASE_: b.yaml\nMODEL:\n  DEVICE: cpu\n")
        _yaml(tmp_path, "b.yaml", "_BASE_: ./a.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = _one_line(caught)
    assert "leads back to itself" in message and "remove the _BASE_ line" in message
    assert message.count("a.yaml") >= 2


def test_a_missing_base_deep_in_the_chain_is_named(tmp_path):
    _yaml(tmp_path, "b.yaml", "_BASE_: nowhere.yaml\n")
    config = _yaml(tmp_path, "a.yaml", "_BASE_: b.yaml\n")
    with pytest.raises(MissingFileError, match=r"b\.yaml: the file .*nowhere\.yaml it names"):
        load_config(config)


# ---------------------------------------------------------------- LazyConfig


def _lazy(*overrides, config=LAZY):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import lazyconfig_train_net  # the entry point's own load step
    finally:
        sys.path.pop(0)
    assert lazyconfig_train_net.load is load_lazy_config
    return load_lazy_config(config, list(overrides))


@pytest.mark.parametrize(
    "override, error, message",
    [
        (
            "model.paper_size=abc",
            ConfigError,
            r"model\.paper_size must be a whole number, got 'abc'",
        ),
        ("model.window_batch=0", ConfigError, r"model\.window_batch must be at least 1, got 0"),
        ("model.logit_scale=-1.5", ConfigError, r"model\.logit_scale must be >= 0 .*got -1\.5"),
        ("model.refinement.dbscan_eps=nan", ConfigError, r"dbscan_eps must be a finite number"),
        ("model.prob_thd=2.0", ConfigError, r"model\.prob_thd must be a fraction in \[0, 1\]"),
        ("dataloader.test.num_workers=-1", ConfigError, r"num_workers must be at least 0"),
        (  # the settings dataclass's own checks: a ValueError traceback when instantiated
            "model.refinement.refine=x",
            ConfigError,
            r"model\.refinement: unknown refinement 'x' \(refine\); choose one of vote, mean",
        ),
        (  # get_detection_dataset_dicts's AssertionError / TypeError traceback when built
            "dataloader.test.dataset.names=[]",
            ConfigError,
            r"dataloader\.test\.dataset\.names is \[\]: name the dataset\(s\) to evaluate",
        ),
        ("dataloader.test.dataset.names=null", ConfigError, r"names is None: name the dataset"),
        ("model.refinement.dbscan_eps=0", ConfigError, r"model\.refinement: DBSCAN needs eps > 0"),
        (
            "model.window_szie=112",
            UnknownNameError,
            r"window_szie is not a setting of CLIPtrase; did you mean window_size",
        ),
        (
            "dataloader.test.mapper.crop=1",
            UnknownNameError,
            r"mapper\.crop is not a setting of SemSegTestMapper",
        ),
        (
            "dataloader.test.dataset.names=voc_nowhere",
            UnknownNameError,
            r"names: Dataset 'voc_nowhere' is not registered",
        ),
    ],
)
def test_lazy_config_values_are_checked_when_loaded(override, error, message):
    """By the entry point's load step, which builds nothing (no model, no loader)."""
    with pytest.raises(error, match=message) as caught:
        _lazy(override)
    assert "command-line overrides" in _one_line(caught) or error is UnknownNameError


@pytest.mark.parametrize(
    "override, message",
    [  # a typo'd key was added to the config and ignored: the run went on with the file's value
        (
            "train.output_dri=/tmp/out",
            r"has no 'train\.output_dri'; did you mean train\.output_dir\?",
        ),
        ("trian.device=cpu", r"has no 'trian'; did you mean train\?"),
        (
            "dataloader.tset.batch_size=2",
            r"has no 'dataloader\.tset'; did you mean dataloader\.test",
        ),
        ("=3", r"has no ''"),
        (  # a character Hydra's override grammar does not take unquoted: its lexer's words
            "train.output_dir=~/out",
            r"LexerNoViableAltException.*; quote the value: train\.output_dir='~/out'$",
        ),
        (  # Hydra's a,b (a sweep): omegaconf's 'Unsupported value type' over three lines
            "model.vocabulary=cat,dog",
            r"Unsupported value type.*; quote a value holding commas: model\.vocabulary='cat,dog'",
        ),
    ],
)
def test_lazy_overrides_of_keys_that_are_not_there_or_of_unparsable_values_are_named(
    override, message
):
    with pytest.raises(UnknownNameError, match=message) as caught:
        _lazy(override)
    assert _one_line(caught).startswith(f"command-line override {override}: ")
    assert _lazy("model.prob_thd=0.5", "model.vocabulary='cat, dog'").model.vocabulary == "cat, dog"


def test_a_lazy_config_that_raises_on_import_is_named(tmp_path):
    config = tmp_path / "raises.py"
    config.write_text("x = 1\ny = {}['missing']\nmodel = dataloader = train = {}\n")
    with pytest.raises(ConfigError) as caught:
        _lazy(config=str(config))
    message = _one_line(caught)
    assert message == f"config file {config}, line 2 raised KeyError: 'missing'; fix the file"


def test_the_published_lazy_configs_load():
    for config in glob.glob(os.path.join(REPO, "configs", "lazy", "sample_*.py")):
        assert _lazy("model.paper_size=336", config=config).model.paper_size == 336


# ---------------------------------------------------------------- tools' arguments


def test_tool_arguments_are_checked_in_the_same_format():
    check_argument("--port", 7860, int, 1, 65535)
    check_argument("--batch-sizes", [1, 2, 4], int, 1)
    check_argument("--cases", ["paper_224"], choices=("paper_224", "standard"))
    for args, message in (
        (("--port", 0, int, 1, 65535), "--port must be from 1 to 65535, got 0"),
        (("--limit", -1, int, 0), "--limit must be at least 0, got -1"),
        (("--limit", 2.5, int, 0), "--limit must be a whole number at least 0, got 2.5"),
        (("--scale", float("nan"), float, 0), "--scale must be a finite number >= 0, got nan"),
        (("--batch-sizes", [1, 0], int, 1), "--batch-sizes must be a list of whole numbers, each"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_argument(*args)
    with pytest.raises(ConfigError, match="--cases must be one of paper_224, standard, got 'x'"):
        check_argument("--cases", ["paper_224", "x"], choices=("paper_224", "standard"))


def test_resolve_device_falls_back_on_a_frozen_config_and_keeps_it_frozen():
    import torch

    from cliptrase_d2.config import resolve_device

    config = os.path.join(REPO, "configs", "sample", "voc21_standard.yaml")
    cfg = load_config(config, ["MODEL.DEVICE", "cuda"], resolve=False)
    cfg.freeze()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(cfg) == cfg.MODEL.DEVICE == expected
    assert cfg.is_frozen()


def test_an_output_folder_under_a_quoted_tilde_is_the_home_folder_s(tmp_path, monkeypatch):
    """OUTPUT_DIR "~/out" (quoted, or from a YAML file) and train.output_dir=~/out are the home
    folder's: the claim, the logs, the results and config.yaml all read the config's value, which
    made a folder named '~' in the working folder. (Unquoted, Hydra's grammar refuses the ~.)"""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = os.path.join(REPO, "configs", "paper", "voc21_224.yaml")
    assert load_config(config, ["OUTPUT_DIR", "~/out"]).OUTPUT_DIR == str(tmp_path / "home/out")
    assert _lazy("train.output_dir='~/lazy'").train.output_dir == str(tmp_path / "home/lazy")
