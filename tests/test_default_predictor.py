"""Detectron2's DefaultPredictor with CLIPtrase, as a Detectron2 user runs it: ``get_cfg()``,
``add_cliptrase_config``, a config file, then ``DefaultPredictor(cfg)(bgr_image)``."""

import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data.transforms import NoOpTransform
from detectron2.engine import DefaultPredictor

from conftest import FIXTURES, REPO, TINY_CONFIG, TINY_WEIGHTS, require_fixtures
from cliptrase_d2 import add_cliptrase_config
from cliptrase_d2.api import Segmenter

CONFIGS = {
    "paper": "configs/paper/Base-paper-224.yaml",
    "standard": "configs/standard/Base-standard.yaml",
}


def _predictor(protocol, head, *opts):
    cfg = get_cfg()
    add_cliptrase_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, CONFIGS[protocol]))
    # the tiny CLIP's regions merge whole images: the raw labels, varied enough to compare
    refine = "mean" if protocol == "standard" and head == "cliptrase" else "none"
    cfg.merge_from_list(
        [
            "MODEL.CLIPTRASE.CLIP_MODEL",
            TINY_CONFIG,
            "MODEL.WEIGHTS",
            TINY_WEIGHTS,
            "MODEL.DEVICE",
            "cpu",
            "MODEL.CLIPTRASE.TEXT_CACHE_DIR",
            "none",
            "MODEL.CLIPTRASE.HEAD",
            head,
            "MODEL.CLIPTRASE.REFINE",
            refine,
            "MODEL.CLIPTRASE.VOCABULARY",
            "voc20",
            *opts,
        ]
    )
    return DefaultPredictor(cfg)


@pytest.mark.parametrize("protocol", ["paper", "standard"])
@pytest.mark.parametrize("head", ["cliptrase", "clip", "sclip", "naclip"])
def test_default_predictor_gives_the_apis_labels_and_loads_quietly(protocol, head, caplog):
    """The predictor's float BGR image (no test-time resize: INPUT.MIN_SIZE_TEST 0) gives the
    labels the Python API gives for the same pixels, and its checkpointer loads MODEL.WEIGHTS
    (the CLIP checkpoint) without a warning."""
    require_fixtures()
    bgr = cv2.imread(os.path.join(FIXTURES, "images", "astronaut.png"))
    with caplog.at_level(logging.WARNING):
        predictor = _predictor(protocol, head)
    loading = [r for r in caplog.records if r.name.startswith(("fvcore", "detectron2"))]
    assert loading == [], [r.getMessage()[:200] for r in loading]
    assert isinstance(predictor.aug.get_transform(bgr), NoOpTransform)
    output = predictor(bgr)["sem_seg"]
    size = (224, 224) if protocol == "paper" else bgr.shape[:2]
    assert output.shape == (20, *size)
    labels = output.argmax(dim=0).numpy()
    result = Segmenter(predictor.model).segment(np.ascontiguousarray(bgr[:, :, ::-1]))
    np.testing.assert_array_equal(labels, result.labels)
    assert np.unique(labels).size >= 2  # the comparison can fail


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_input_format_bgr_gives_the_same_labels(protocol):
    """INPUT.FORMAT BGR: the predictor hands the model BGR pixels, which it reads as such."""
    require_fixtures()
    bgr = cv2.imread(os.path.join(FIXTURES, "images", "coffee.png"))
    rgb_labels = _predictor(protocol, "cliptrase")(bgr)["sem_seg"].argmax(dim=0)
    predictor = _predictor(protocol, "cliptrase", "INPUT.FORMAT", "BGR")
    assert predictor.input_format == "BGR"
    bgr_labels = predictor(bgr)["sem_seg"].argmax(dim=0)
    assert (rgb_labels == bgr_labels).all()


def test_default_predictor_with_openais_torchscript_archive(tmp_path, caplog):
    """MODEL.WEIGHTS as OpenAI ships it, a TorchScript archive (which torch.load, and so
    Detectron2's checkpointer, refuses): the checkpointer leaves the weights the model was built
    from to the model, with no warning, and the labels are those of the state-dict file."""
    require_fixtures()
    from test_clip_loading import _save_torchscript

    from cliptrase_d2.clip_loading import build_clip

    archive = _save_torchscript(build_clip(TINY_CONFIG, TINY_WEIGHTS), tmp_path / "ViT-tiny.pt")
    bgr = cv2.imread(os.path.join(FIXTURES, "images", "astronaut.png"))
    with caplog.at_level(logging.WARNING):
        predictor = _predictor("paper", "clip", "MODEL.WEIGHTS", str(archive))
    loading = [r for r in caplog.records if r.name.startswith(("fvcore", "detectron2"))]
    assert loading == [], [r.getMessage()[:200] for r in loading]
    labels = predictor(bgr)["sem_seg"].argmax(dim=0)
    expected = _predictor("paper", "clip")(bgr)["sem_seg"].argmax(dim=0)
    assert (labels == expected).all() and labels.unique().numel() >= 2


def test_checkpointer_still_loads_other_files(tmp_path):
    """Weights other than those the model was built from are loaded by the checkpointer (a CLIP
    state dict's keys read as clip_model's)."""
    require_fixtures()
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    model = _predictor("paper", "clip").model
    state = {k: torch.zeros_like(v) for k, v in model.clip_model.state_dict().items()}
    torch.save(state, tmp_path / "zeros.pth")
    DetectionCheckpointer(model).load(str(tmp_path / "zeros.pth"))
    assert all(not v.any() for v in model.clip_model.state_dict().values())


def test_checkpointer_reads_other_files_as_clip_weights_are(tmp_path):
    """Another file is read as build_clip reads weights, not by torch.load: OpenAI's TorchScript
    archive (torch.load: a RuntimeError advising weights_only=False), {"state_dict": ...} (a
    ValueError), Detectron2's own {"model": ...} load; a damaged or missing file or an integer
    weight is one WeightsError naming it (before: KeyError: 101, AssertionError, cast silently)."""
    require_fixtures()
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from test_clip_loading import _save_torchscript

    from cliptrase_d2.errors import WeightsError

    model = _predictor("paper", "clip").model
    state = {k: v.clone() for k, v in model.clip_model.state_dict().items()}
    checkpointer = DetectionCheckpointer(model)
    files = {"archive.pt": None, "wrapped.pth": {"state_dict": state}}
    files["d2.pth"] = {"model": {f"clip_model.{k}": v for k, v in state.items()}, "iteration": 3}
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            _save_torchscript(model.clip_model, path)
        else:
            torch.save(content, path)
        model.clip_model.visual.proj.data.zero_()
        checkpointer.load(str(path))
        assert torch.equal(model.clip_model.visual.proj, state["visual.proj"]), name
    (tmp_path / "garbage.pt").write_bytes(b"hello")
    with pytest.raises(WeightsError, match="garbage.pt is not a readable checkpoint"):
        checkpointer.load(str(tmp_path / "garbage.pt"))
    with pytest.raises(WeightsError, match="missing.pt not found"):
        checkpointer.load(str(tmp_path / "missing.pt"))
    torch.save({**state, "visual.proj": state["visual.proj"].int()}, tmp_path / "int.pt")
    with pytest.raises(WeightsError, match="int.pt holds tensor visual.proj as torch.int32"):
        checkpointer.load(str(tmp_path / "int.pt"))
    # a file named like OpenAI's release is held to its published sha256, as build_clip holds it
    torch.save(state, tmp_path / "ViT-B-16.pt")
    with pytest.raises(WeightsError, match="ViT-B-16.pt is named like OpenAI's ViT-B-16 release"):
        checkpointer.load(str(tmp_path / "ViT-B-16.pt"))
