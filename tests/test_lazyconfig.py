"""configs/lazy/*.py with tools/lazyconfig_train_net.py --eval-only: the same label maps and metrics
as the YAML configs they mirror, on the VOC sample; and their errors."""

import argparse
import os
import sys

import numpy as np
import pytest
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser
from PIL import Image

from conftest import REPO, TINY_CONFIG, TINY_WEIGHTS, skip_outside_ci
from cliptrase_d2.atomic import recorded_files
from cliptrase_d2.engine.trainer import Trainer, load_config
from cliptrase_d2.errors import OutputExistsError

sys.path.insert(0, os.path.join(REPO, "tools"))
import lazyconfig_train_net  # noqa: E402

SAMPLE_ROOT = os.path.join(REPO, "datasets", "cliptrase_sample_voc21")
DATASET = "cliptrase_sample_voc20"  # no background class: label maps that vary with the tiny CLIP
TWINS = [
    ("sample_voc21_standard.py", "voc21_standard.yaml"),
    ("sample_voc21_paper_224.py", "voc21_paper_224.yaml"),
]


def _require_sample(monkeypatch):
    if not os.path.isdir(os.path.join(SAMPLE_ROOT, "annotations")):
        skip_outside_ci(
            f"sample dataset missing at {SAMPLE_ROOT}: run `python datasets/prepare_sample.py`"
        )
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))


def _predictions(folder):
    files = sorted(os.listdir(folder))
    return {name: np.array(Image.open(os.path.join(folder, name))) for name in files}


@pytest.mark.parametrize("lazy, yaml", TWINS)
def test_lazy_config_predicts_exactly_what_the_yaml_config_does(
    lazy, yaml, tiny_opts, text_cache_dir, monkeypatch, tmp_path
):
    _require_sample(monkeypatch)
    cfg = load_config(
        os.path.join(REPO, "configs", "sample", yaml),
        [
            *tiny_opts,
            "OUTPUT_DIR",
            str(tmp_path / "yaml"),
            "DATALOADER.NUM_WORKERS",
            "0",
            "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE",
            "224",
            "DATASETS.TEST",
            f"('{DATASET}',)",
        ],
    )
    expected = Trainer.test(cfg, Trainer.build_model(cfg))[
        "sem_seg"
    ]  # one dataset: not keyed by name

    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "lazy", lazy),
        eval_only=True,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
        opts=[
            f"model.clip_model.model={TINY_CONFIG}",
            f"model.clip_model.weights={TINY_WEIGHTS}",
            f"model.text_cache.setting={text_cache_dir}",
            "model.standard_short_side=224",
            f"train.output_dir={tmp_path / 'lazy'}",
            "train.device=cpu",
            "dataloader.test.num_workers=0",
            "dataloader.test.batch_size=3",  # batches of 3 and 1: the same as the YAML's 1 by 1
            f"dataloader.test.dataset.names={DATASET}",
        ],
    )
    lazyconfig_train_net.validate(args)  # claims train.output_dir, as the tool does
    results = lazyconfig_train_net.main(args)["sem_seg"]

    assert results.keys() == expected.keys()
    for key, value in expected.items():  # every metric, exactly (NaN for classes absent from both)
        assert results[key] == value or (np.isnan(value) and np.isnan(results[key])), key
    yaml_maps = _predictions(tmp_path / "yaml" / "predictions" / DATASET)
    lazy_maps = _predictions(tmp_path / "lazy" / "predictions" / DATASET)
    assert sorted(lazy_maps) == sorted(yaml_maps) and len(yaml_maps) == 4
    for name, labels in yaml_maps.items():
        np.testing.assert_array_equal(lazy_maps[name], labels, err_msg=name)
    assert len({labels.tobytes() for labels in yaml_maps.values()}) >= 2  # not one map four times
    # config.yaml is the run's, as tools/train_net.py's: the next run moves it with the results
    assert "config.yaml" in recorded_files(str(tmp_path / "lazy"))


def test_lazy_config_errors(tmp_path):
    with pytest.raises(ValueError, match="voc21_standard.yaml.*tools/train_net.py"):
        lazyconfig_train_net.load(
            os.path.join(REPO, "configs", "sample", "voc21_standard.yaml"), []
        )
    with pytest.raises(FileNotFoundError, match="nothere.py does not exist"):
        lazyconfig_train_net.load(str(tmp_path / "nothere.py"), [])
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(KeyError, match="defines no 'model'"):
        lazyconfig_train_net.load(str(empty), [])
    bad_batch = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py"),
        opts=["dataloader.test.batch_size=0", f"train.output_dir={tmp_path / 'out'}"],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
    )
    with pytest.raises(ValueError, match="dataloader.test.batch_size must be .* got 0"):
        lazyconfig_train_net.validate(bad_batch)
    assert not (tmp_path / "out").exists()  # refused before claiming anything
    cfg = lazyconfig_train_net.load(
        os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py"),
        ["model.clip_model.model=tiny.json"],
    )
    # the tokenizer and the text cache follow the CLIP model (interpolation), as in the YAML configs
    assert cfg.model.tokenizer.model == cfg.model.text_cache.model == "tiny.json"
    assert instantiate(cfg.dataloader.evaluator.run_info)["vocabulary"] == "the dataset's"


@pytest.mark.parametrize(
    "override, message",
    [  # numbers where names go: a TypeError / AttributeError traceback before
        ("train.output_dir=3", "train.output_dir is 3, not a folder name: quote it"),
        ("train.device=3", "train.device=3 is not a device: set train.device to cpu or cuda"),
    ],
)
def test_a_number_for_the_output_folder_or_the_device_is_named(override, message, tmp_path):
    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py"),
        opts=[f"train.output_dir={tmp_path / 'out'}", override],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
    )
    with pytest.raises(ValueError) as caught:
        lazyconfig_train_net.validate(args)
    assert str(caught.value).startswith(message)


def test_resume_is_refused_not_ignored(tmp_path):
    """--resume (Detectron2's parser takes it) was ignored: every image evaluated again, the
    earlier results moved to previous/."""
    config = os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py")
    argv = ["--eval-only", "--resume", "--config-file", config]
    args = default_argument_parser().parse_args([*argv, f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="^--resume continues an evaluation of tools/train_net"):
        lazyconfig_train_net.validate(args)
    assert not (tmp_path / "out").exists()


def test_a_config_yaml_no_run_wrote_is_refused_as_by_tools_train_net(tmp_path):
    """The run writes config.yaml in train.output_dir: a file there that no run wrote is
    refused before any work, as OUTPUT_DIR's is (it was overwritten)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\n")
    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py"),
        opts=[f"train.output_dir={out}"],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
    )
    with pytest.raises(OutputExistsError, match=r"that no evaluation wrote there \(config.yaml\)"):
        lazyconfig_train_net.validate(args)
    assert (out / "config.yaml").read_text() == "# my notes\n"


def test_lazy_paper_config_crops_in_the_loader_as_the_yaml_one_does():
    """The LazyConfigs' mapper makes the model's frame (its protocol, size and MAX_PIXELS follow
    the model by interpolation): the paper crop, or the standard keep-ratio frame."""
    paper = lazyconfig_train_net.load(
        os.path.join(REPO, "configs", "lazy", "sample_voc21_paper_224.py"),
        ["model.paper_size=336", "model.max_pixels=1000000"],
    )
    mapper = instantiate(paper.dataloader.test.mapper)
    assert (mapper.frame.paper_size, mapper.frame.max_pixels) == (336, 1_000_000)
    assert mapper.frame.protocol == "paper"
    standard = lazyconfig_train_net.load(
        os.path.join(REPO, "configs", "lazy", "sample_voc21_standard.py"), []
    )
    frame = instantiate(standard.dataloader.test.mapper).frame
    assert (frame.protocol, frame.short_side, frame.long_side) == ("standard", 336, 2048)


@pytest.mark.parametrize("lazy, yaml", TWINS)
def test_results_record_the_run_as_the_yaml_route_does(lazy, yaml, monkeypatch, tmp_path):
    """The "run" of results.json names the vocabulary given (it said "the dataset's")."""
    _require_sample(monkeypatch)
    cfg = lazyconfig_train_net.load(
        os.path.join(REPO, "configs", "lazy", lazy),
        ["model.vocabulary=voc21", f"train.output_dir={tmp_path}"],
    )
    recorded = instantiate(cfg.dataloader.evaluator)._run_info
    options = ["MODEL.CLIPTRASE.VOCABULARY", "voc21", "OUTPUT_DIR", str(tmp_path)]
    yaml_cfg = load_config(os.path.join(REPO, "configs", "sample", yaml), options)
    expected = Trainer.build_evaluator(yaml_cfg, "cliptrase_sample_voc21")._run_info
    assert recorded == expected
    assert recorded["vocabulary"] == "voc21"
