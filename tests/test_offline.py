"""Without network and without a local weights file, the three ways in (tools/train_net.py, which
tools/main.sh runs, tools/demo.py and tools/web_demo.py) stop within seconds with the same message
saying how to get the weights, instead of retrying downloads for a minute."""

import os
import socket
import sys
import time

import pytest

from conftest import REPO, require_fixtures
from cliptrase_d2 import clip_loading
from cliptrase_d2.clip_loading import WeightsError

sys.path.insert(0, os.path.join(REPO, "tools"))
import demo  # noqa: E402
import train_net  # noqa: E402

SECONDS = 10


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """The download server refuses connections, nothing is cached, HF_HUB_OFFLINE is not set."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connecting is refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from the variable at import
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return port


def _stops_fast(call):
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < SECONDS, f"took {elapsed:.1f} s to fail"
    message = str(error.value)
    assert "no network" in message and "tools/fetch_weights.py --model ViT-B-16" in message
    assert "MODEL.WEIGHTS weights/ViT-B-16.pt" in message
    return message


def test_all_entry_points_fail_fast_with_the_same_message(no_network, tmp_path):
    require_fixtures()
    web_demo = pytest.importorskip("web_demo")  # needs Gradio (requirements/web.txt)
    image = os.path.join(REPO, "..", "shared", "fixtures", "images", "coffee.png")
    args = train_net.default_argument_parser().parse_args(
        [
            "--eval-only",
            "--config-file",
            os.path.join(REPO, "configs", "sample", "voc21_standard.yaml"),
            "MODEL.DEVICE",
            "cpu",
            "OUTPUT_DIR",
            str(tmp_path / "train_net"),
        ]
    )
    messages = {
        "train_net": _stops_fast(lambda: train_net.main(args)),
        "demo": _stops_fast(
            lambda: demo.main(
                [
                    "--input",
                    image,
                    "--output",
                    str(tmp_path / "demo"),
                    "--opts",
                    "MODEL.DEVICE",
                    "cpu",
                ]
            )
        ),
        "web_demo": _stops_fast(
            lambda: web_demo.main(["--port", str(no_network), "--opts", "MODEL.DEVICE", "cpu"])
        ),
    }
    assert len(set(messages.values())) == 1, messages
    assert f"cannot reach 127.0.0.1:{no_network}" in messages["demo"]


def test_cached_tag_file_is_used_without_network(no_network, tmp_path):
    """Offline with the file in the Hugging Face cache: that file, at once."""
    from huggingface_hub import constants

    spec = clip_loading._resolve_model("ViT-B-16")
    tag_config = clip_loading.open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    repo = tag_config["hf_hub"].rstrip("/").replace("/", "--")
    snapshot = os.path.join(constants.HF_HUB_CACHE, f"models--{repo}", "snapshots", "0" * 40)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(constants.HF_HUB_CACHE, f"models--{repo}", "refs"))
    with open(os.path.join(constants.HF_HUB_CACHE, f"models--{repo}", "refs", "main"), "w") as f:
        f.write("0" * 40)
    cached = os.path.join(snapshot, "open_clip_model.safetensors")
    with open(cached, "wb") as f:
        f.write(b"weights")
    start = time.monotonic()
    found = clip_loading._download_tag(spec, "openai", tag_config, None)
    assert time.monotonic() - start < SECONDS and str(found) == cached
