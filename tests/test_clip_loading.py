"""Tests of cliptrase_d2.clip_loading (model building, exact and safe weights loading) and
tools/fetch_weights.py."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before open_clip / huggingface_hub are imported

import builtins  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as hf_constants  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from conftest import WritesMarker, flip_byte_in_first_tensor, skip_outside_ci  # noqa: E402
from cliptrase_d2 import clip_loading  # noqa: E402
from cliptrase_d2.clip_loading import (  # noqa: E402
    WeightsError,
    build_clip,
    get_tokenizer,
    weights_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CLIPTRASE_FIXTURES", REPO.parent / "shared" / "fixtures"))
TINY_CONFIG = FIXTURES / "tiny_clip.json"
TINY_WEIGHTS = FIXTURES / "tiny_clip_openai.pt"
VIT_B_16_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_files():
    """(config JSON, OpenAI-style state dict) of the shared tiny CLIP; skipped (failed under CI) if
    absent."""
    if not (TINY_CONFIG.is_file() and TINY_WEIGHTS.is_file()):
        skip_outside_ci(
            f"tiny CLIP fixtures not found in {FIXTURES} "
            "(set CLIPTRASE_FIXTURES to the folder holding tiny_clip.json and tiny_clip_openai.pt)"
        )
    return str(TINY_CONFIG), str(TINY_WEIGHTS)


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_files):
    """The tiny CLIP's weights as stored in the fixture file (OpenAI key names, fp32)."""
    return torch.load(tiny_files[1], map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    return build_clip(*tiny_files)


@pytest.fixture(scope="module")
def tiny_archive(tiny_model, tmp_path_factory):
    """The tiny CLIP as a TorchScript archive laid out like OpenAI's (fp32)."""
    return _save_torchscript(tiny_model, tmp_path_factory.mktemp("archive") / "ViT-tiny.pt")


@pytest.fixture
def gelu_config(tiny_files, tmp_path):
    """The tiny architecture with plain GELU (quick_gelu false), as a model-config JSON."""
    config = json.loads(Path(tiny_files[0]).read_text())
    config["quick_gelu"] = False
    path = tmp_path / "tiny_clip_gelu.json"
    path.write_text(json.dumps(config))
    return str(path)


class _OpenAIStyle(torch.nn.Module):
    """Laid out like OpenAI's archives: CLIP's modules under the same names, plus the three
    model-description buffers OpenAI stores (input_resolution, context_length, vocab_size)."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.ln_final = clip.ln_final
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def _save_torchscript(
    clip: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float32
) -> Path:
    module = _OpenAIStyle(copy.deepcopy(clip).to(dtype))
    torch.jit.script(module).save(str(path))
    with zipfile.ZipFile(path) as archive:  # really a TorchScript archive (what torch.load refuses)
        assert any(name.endswith("/constants.pkl") for name in archive.namelist())
    return path


def _assert_weights_equal(model: torch.nn.Module, state_dict, dtype: torch.dtype = torch.float32):
    """Every model tensor equals the file's tensor (cast to ``dtype``) bit for bit."""
    model_state = model.state_dict()
    assert set(model_state) == set(state_dict)
    for key, tensor in model_state.items():
        assert tensor.dtype == dtype, key
        assert torch.equal(tensor, state_dict[key].to(dtype)), key


# ---------------------------------------------------------------------------------------------
# Loading: formats and exactness
# ---------------------------------------------------------------------------------------------


def test_tiny_model_from_json_and_openai_state_dict_is_exact(tiny_model, tiny_state_dict):
    _assert_weights_equal(tiny_model, tiny_state_dict)
    assert isinstance(tiny_model, open_clip.model.CLIP)
    assert torch.allclose(tiny_model.logit_scale.exp(), torch.tensor(100.0))
    assert not tiny_model.training and not any(m.training for m in tiny_model.modules())
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert all(p.device.type == "cpu" for p in tiny_model.parameters())
    assert isinstance(
        tiny_model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )
    assert "tiny_clip" in open_clip.list_models()


def test_model_encodes_images_and_text(tiny_model, tiny_files):
    tokens = get_tokenizer(tiny_files[0])(["a photo of a cat", "a dog"])  # (2, 77)
    with torch.no_grad():
        image_features = tiny_model.encode_image(torch.zeros(1, 3, 224, 224))  # (1, 64)
        text_features = tiny_model.encode_text(tokens)  # (2, 64)
    assert image_features.shape == (1, 64) and text_features.shape == (2, 64)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16-like-openai"])
def test_torchscript_archive_is_exact_and_never_jit_loaded(
    tiny_model, tiny_archive, tiny_files, tiny_state_dict, tmp_path, monkeypatch, dtype
):
    archive = (
        tiny_archive
        if dtype == torch.float32
        else _save_torchscript(tiny_model, tmp_path / "h.pt", dtype)
    )

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must never be used to read weights")

    monkeypatch.setattr(torch.jit, "load", refuse)
    model = build_clip(tiny_files[0], str(archive))
    # OpenAI stores fp16: the fp32 model then holds those values exactly (fp16 -> fp32 is lossless).
    _assert_weights_equal(model, {k: v.to(dtype) for k, v in tiny_state_dict.items()})


def test_torchscript_archive_turns_on_quick_gelu(tiny_archive, gelu_config, tiny_files):
    plain = build_clip(gelu_config, tiny_files[1])
    assert isinstance(plain.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    scripted = build_clip(gelu_config, str(tiny_archive))
    assert isinstance(
        scripted.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])  # open_clip's, Detectron2's
def test_open_clip_checkpoint_with_module_prefix(tiny_files, tiny_state_dict, tmp_path, wrapper):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(
        {
            "epoch": 32,
            "name": "tiny",
            wrapper: {"module." + k: v for k, v in tiny_state_dict.items()},
        },
        path,
    )
    _assert_weights_equal(build_clip(tiny_files[0], str(path)), tiny_state_dict)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_safetensors_checkpoint(tiny_files, tiny_state_dict, tmp_path, prefix):
    path = tmp_path / "open_clip_model.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    _assert_weights_equal(build_clip(tiny_files[0], str(path)), tiny_state_dict)


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_lower_precision_rounds_the_file_once(tiny_files, tiny_state_dict, precision, dtype):
    """bf16: every tensor in bf16. fp16 as OpenAI runs CLIP (open_clip's mixed fp16): the
    LayerNorms, the embeddings and the logit scale stay fp32, the rest is fp16."""
    model = build_clip(*tiny_files, precision=precision)
    kept = {
        key
        for key in tiny_state_dict
        if precision == "fp16" and re.search(r"(^|\.)ln_|embedding|^logit_scale$", key)
    }
    if precision == "fp16":
        assert {"visual.ln_pre.weight", "ln_final.bias", "visual.positional_embedding"} <= kept
        assert {"token_embedding.weight", "logit_scale"} <= kept
    state = model.state_dict()
    assert set(state) == set(tiny_state_dict)
    for key, tensor in state.items():
        expected = torch.float32 if key in kept else dtype
        assert tensor.dtype == expected, key
        assert torch.equal(tensor, tiny_state_dict[key].to(expected)), key  # rounded once


def test_unknown_precision_is_rejected(tiny_files):
    with pytest.raises(WeightsError, match=r"'fp8'.*fp32"):
        build_clip(*tiny_files, precision="fp8")


# ---------------------------------------------------------------------------------------------
# Tags and downloads
# ---------------------------------------------------------------------------------------------


def test_openai_tag_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 at import

    def no_network(*args, **kwargs):
        raise AssertionError("offline: nothing may be downloaded")

    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    with pytest.raises(WeightsError) as error:
        build_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
    message = str(error.value)
    for expected in (
        "weights/ViT-B-16.pt",
        "tools/fetch_weights.py",
        "MODEL.WEIGHTS",
        "HF_HUB_OFFLINE",
    ):
        assert expected in message


def test_openai_tag_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", unreachable)
    # the server answers the connection check, then the download fails
    monkeypatch.setattr("cliptrase_d2.clip_loading._network_problem", lambda url: None)
    with pytest.raises(WeightsError, match=r"Network is unreachable.*weights/ViT-B-16\.pt"):
        build_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))


def test_unknown_tag_lists_the_model_tags():
    with pytest.raises(WeightsError, match=r"'no_such_tag'.*'openai'"):
        build_clip("ViT-B-16", "no_such_tag")


def test_tag_with_a_json_model_is_rejected(tiny_files):
    with pytest.raises(WeightsError, match="tags only exist for built-in"):
        build_clip(tiny_files[0], "openai")


# ---------------------------------------------------------------------------------------------
# Bad models and bad files
# ---------------------------------------------------------------------------------------------


def test_unknown_model_name_suggests_names(tiny_files):
    with pytest.raises(WeightsError, match=r"'ViT-B-61'.*ViT-B-16"):
        build_clip("ViT-B-61", tiny_files[1])


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('{"embed_dim": 64}', "not an open_clip model config"),
    ],
)
def test_bad_model_config_json(tiny_files, tmp_path, content, match):
    path = tmp_path / "custom_clip.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WeightsError, match=match) as error:
        build_clip(str(path), tiny_files[1])
    assert str(path) in str(error.value)
    assert "custom_clip" not in open_clip.list_models()  # a bad file is never registered


@pytest.mark.parametrize(
    "change,match",
    [
        (("vision_cfg", "layers", "12"), r"vision_cfg.layers must be a positive integer, got '12'"),
        (("vision_cfg", "width", -128), "vision_cfg.width must be a positive integer, got -128"),
        (("text_cfg", "context_length", 77.0), "text_cfg.context_length must be a positive int"),
        ((None, "embed_dim", "64"), "embed_dim must be a positive integer"),
        ((None, "vision_cfg", [1]), "vision_cfg must be a JSON object"),
        ((None, "quick_gelu", "false"), "quick_gelu must be true or false"),
    ],
)
def test_model_config_values_of_the_wrong_type_are_named(tiny_files, tmp_path, change, match):
    """Before, these ended in open_clip's TypeError/RuntimeError, a string "false" turned
    QuickGELU on, and a vision_cfg list stayed registered and broke every later misfit message."""
    config = json.loads(Path(tiny_files[0]).read_text())
    section, key, value = change
    (config[section] if section else config)[key] = value
    path = tmp_path / f"bad_{key}.json"
    path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=match) as error:
        build_clip(str(path), tiny_files[1])
    assert str(path) in str(error.value)
    assert path.stem not in open_clip.list_models()


@pytest.mark.parametrize("kind", ["fifo", "device", "dangling link"])
def test_weights_that_are_no_regular_file_say_what_they_are(tiny_files, tmp_path, kind):
    path = tmp_path / "ViT-B-16.pt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.symlink_to(tmp_path / "gone.pt")
    what = "a link to .*gone.pt, which does not exist" if kind == "dangling link" else "a pipe"
    with pytest.raises(WeightsError, match=f"{path} .*{what}"):
        build_clip(tiny_files[0], str(path))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_a_weight_stored_as_integers_is_refused_naming_it(
    tiny_files, tiny_state_dict, tmp_path, dtype
):
    """Before, load_state_dict cast it into the float parameter without a word."""
    key = "visual.conv1.weight"
    path = tmp_path / "cast.pt"
    torch.save(dict(tiny_state_dict, **{key: tiny_state_dict[key].to(dtype)}), path)
    with pytest.raises(WeightsError, match=f"{path} holds tensor {key} as {dtype}, not float"):
        build_clip(tiny_files[0], str(path))


@pytest.mark.parametrize("weights", ["weights/ViT-B-16.pt", "missing.bin", "./ViT-B-16"])
def test_missing_weights_file_is_named(tiny_files, tmp_path, monkeypatch, weights):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="not found") as error:
        build_clip(tiny_files[0], weights)
    assert weights in str(error.value)
    with pytest.raises(WeightsError, match="not found"):
        weights_fingerprint(weights)


@pytest.mark.parametrize(
    "corruption",
    ["empty", "random", "truncated", "truncated-torchscript", "bitflip-torchscript", "text"],
)
def test_corrupt_file_is_not_a_readable_checkpoint(tiny_archive, tiny_files, tmp_path, corruption):
    path = tmp_path / "ViT-B-16.pt"
    if corruption == "empty":
        path.write_bytes(b"")
    elif corruption == "random":
        path.write_bytes(
            torch.randint(
                0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
            )
            .numpy()
            .tobytes()
        )
    elif corruption == "truncated":
        data = Path(tiny_files[1]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif corruption == "truncated-torchscript":
        data = tiny_archive.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
    elif corruption == "bitflip-torchscript":
        path.write_bytes(tiny_archive.read_bytes())
        flip_byte_in_first_tensor(path)
    else:
        path.write_text("this is not a checkpoint\n")
    with pytest.raises(WeightsError, match="not a readable checkpoint") as error:
        build_clip(tiny_files[0], str(path))
    assert str(path) in str(error.value)


def test_weights_of_another_model_are_described(tiny_files):
    with pytest.raises(WeightsError) as error:
        build_clip("ViT-B-16", tiny_files[1])
    message = str(error.value)
    assert tiny_files[1] in message and "ViT-B-16" in message
    assert (
        "width 128" in message and "patch 16" in message
    )  # what the file is, read from its shapes
    assert "visual.conv1.weight" in message or "positional_embedding" in message


def test_missing_and_misshapen_keys_are_listed(tiny_files, tiny_state_dict, tmp_path):
    broken = dict(tiny_state_dict)
    del broken["visual.ln_post.bias"]
    broken["text_projection"] = torch.zeros(64, 32)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(WeightsError) as error:
        build_clip(tiny_files[0], str(path))
    message = str(error.value)
    assert str(path) in message and "visual.ln_post.bias" in message
    assert "text_projection: file (64, 32) vs model (64, 64)" in message


@pytest.mark.parametrize(
    "value,format", [(float("nan"), "torch.save"), (-float("inf"), "safetensors")]
)
def test_non_finite_weights_are_refused_naming_the_tensor(
    tiny_files, tiny_state_dict, tmp_path, value, format
):
    key = "visual.transformer.resblocks.3.mlp.c_fc.weight"
    broken = dict(tiny_state_dict, **{key: tiny_state_dict[key].clone()})
    broken[key][5, 7] = value
    if format == "torch.save":
        path = tmp_path / "diverged.pt"
        torch.save(broken, path)
    else:
        path = tmp_path / "diverged.safetensors"
        save_file({k: v.contiguous() for k, v in broken.items()}, str(path))
    with pytest.raises(WeightsError, match=rf"1 NaN or infinite values in tensor {key} ") as error:
        build_clip(tiny_files[0], str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("format", ["state-dict", "torchscript"])
def test_weights_file_is_read_once(tiny_files, tiny_archive, tmp_path, monkeypatch, format):
    """One read gives the tensors, the CRC check and the sha256 that the text cache keys on."""
    source = Path(tiny_files[1]) if format == "state-dict" else tiny_archive
    path = tmp_path / f"copy-{format}.pt"
    path.write_bytes(source.read_bytes())
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    opened, real_open = [], io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            opened.append(args)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    build_clip(tiny_files[0], str(path))
    assert weights_fingerprint(str(path)) == expected
    assert len(opened) == 1


# ---------------------------------------------------------------------------------------------
# Security: pickled code never runs
# ---------------------------------------------------------------------------------------------


def _write_malicious(kind: str, path: Path, marker: Path) -> None:
    payload = WritesMarker(marker)
    if kind == "torch.save":
        torch.save({"visual.conv1.weight": torch.zeros(1), "evil": payload}, path)
    elif kind == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # laid out like a TorchScript archive, so it takes the archive reader's path
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
            archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("kind", ["torch.save", "raw-pickle", "torchscript-layout"])
def test_malicious_pickle_is_refused_without_running(tiny_files, tmp_path, kind):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(WritesMarker(control)))  # the payload is live when unpickled naively
    assert control.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "ViT-B-16.pt"
    _write_malicious(kind, path, marker)
    with pytest.raises(WeightsError) as error:
        build_clip(tiny_files[0], str(path))
    assert str(path) in str(error.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Tokenizer and fingerprints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["json", "ViT-B-16"])
def test_tokenizer_context_length_is_77(tiny_files, model):
    tokenizer = get_tokenizer(tiny_files[0] if model == "json" else model)
    tokens = tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    assert tokens[0, 0] == 49406 and (tokens[0] == 49407).sum() == 1  # <start> ... <end>


def test_weights_fingerprint(tiny_files, tmp_path):
    expected = hashlib.sha256(Path(tiny_files[1]).read_bytes()).hexdigest()[:16]
    assert weights_fingerprint(tiny_files[1]) == expected == weights_fingerprint(tiny_files[1])
    copy_path = tmp_path / "other.pt"
    copy_path.write_bytes(b"other content")
    assert weights_fingerprint(str(copy_path)) == hashlib.sha256(b"other content").hexdigest()[:16]
    assert weights_fingerprint("openai") == "openai"


# ---------------------------------------------------------------------------------------------
# tools/fetch_weights.py
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location(
        "fetch_weights", REPO / "tools" / "fetch_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def source(tmp_path):
    """(file:// URL, sha256) of a small file standing in for the published archive."""
    path = tmp_path / "server" / "ViT-B-16.pt"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 * 2**20 + 17))
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_knows_openai_vit_b_16(fetch):
    assert fetch.openai_archive("ViT-B-16") == (VIT_B_16_URL, VIT_B_16_URL.split("/")[-2])
    assert fetch.openai_archive("ViT-B/16") == fetch.openai_archive("ViT-B-16-quickgelu")
    with pytest.raises(fetch.FetchError, match="ViT-B-16"):
        fetch.openai_archive("ViT-H-14")


def test_fetch_downloads_and_verifies(fetch, source, tmp_path):
    url, sha256 = source
    dest = tmp_path / "weights" / "ViT-B-16.pt"
    assert fetch.download_verified(url, dest, sha256, progress=False) == dest
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha256
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ViT-B-16.pt"]  # no temporary left


def test_fetch_bad_hash_leaves_nothing(fetch, source, tmp_path):
    url, _ = source
    dest = tmp_path / "weights" / "ViT-B-16.pt"
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch.download_verified(url, dest, "0" * 64, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_fetch_keeps_existing_files(fetch, source, tmp_path):
    url, sha256 = source
    dest = tmp_path / "ViT-B-16.pt"
    dest.write_bytes(Path(url[len("file://") :]).read_bytes())
    before = dest.stat().st_mtime_ns
    # A good file is kept without downloading (the URL is not even readable).
    assert fetch.download_verified(url + ".gone", dest, sha256, progress=False) == dest
    assert dest.stat().st_mtime_ns == before
    # Another file under that name is never overwritten.
    dest.write_bytes(b"partial")
    with pytest.raises(fetch.FetchError, match="delete it"):
        fetch.download_verified(url, dest, sha256, progress=False)
    assert dest.read_bytes() == b"partial"


def test_fetch_unreachable_url_is_a_clear_error(fetch, tmp_path):
    dest = tmp_path / "ViT-B-16.pt"
    with pytest.raises(fetch.FetchError, match="offline"):
        fetch.download_verified((tmp_path / "nowhere.pt").as_uri(), dest, "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_main_rejects_models_without_openai_weights(fetch, tmp_path):
    assert fetch.main(["--model", "ViT-H-14", "--dest", str(tmp_path), "--no-progress"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_fetch_destination_keeps_the_trailing_slash(fetch, tmp_path):
    url = VIT_B_16_URL
    assert (
        fetch._destination(str(tmp_path / "clip.v2") + "/", url)
        == tmp_path / "clip.v2" / "ViT-B-16.pt"
    )
    assert fetch._destination(str(tmp_path / "mine.pt"), url) == tmp_path / "mine.pt"
    assert (
        fetch._destination(str(tmp_path / "weights"), url) == tmp_path / "weights" / "ViT-B-16.pt"
    )


def test_fetch_destination_with_a_tilde_the_shell_left_is_in_home(fetch, tmp_path, monkeypatch):
    """--dest "~/weights/" (quoted) or --dest=~/weights/ made a folder named '~' in the working
    folder and saved the weights there."""
    monkeypatch.setenv("HOME", str(tmp_path))
    destination = fetch._destination("~/weights/", VIT_B_16_URL)
    assert destination == tmp_path / "weights" / "ViT-B-16.pt"


def test_fetch_full_disk_is_not_called_offline(fetch, source, tmp_path, monkeypatch):
    url, sha256 = source
    dest = tmp_path / "weights" / "ViT-B-16.pt"
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, chunk):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(fetch.FetchError, match="No space left on device. Free some space") as error:
        fetch.download_verified(url, dest, sha256, progress=False)
    assert "offline" not in str(error.value)
    assert list(dest.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Integrity, refused code, fast offline failure, fetch_weights paths (issues 15, 16)
# ---------------------------------------------------------------------------------------------


def test_zip_checkpoint_with_a_damaged_tensor_is_refused(tiny_files, tmp_path):
    path = tmp_path / "tiny_clip_openai.pt"  # torch.save's zip format, as the fixture
    path.write_bytes(Path(tiny_files[1]).read_bytes())
    flip_byte_in_first_tensor(path)
    with pytest.raises(WeightsError, match=r"not a readable checkpoint.*CRC-32.*damaged") as error:
        build_clip(tiny_files[0], str(path))
    assert str(path) in str(error.value)


def test_openai_archive_with_a_wrong_sha256_is_refused(tiny_archive, tmp_path):
    path = tmp_path / "ViT-B-16.pt"  # named like OpenAI's release, but another archive
    path.write_bytes(tiny_archive.read_bytes())
    with pytest.raises(WeightsError) as error:
        build_clip("ViT-B-16", str(path))
    message = str(error.value)
    assert str(path) in message and VIT_B_16_URL.split("/")[-2] in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert "tools/fetch_weights.py" in message


@pytest.mark.parametrize("format", ["torchscript", "state dict"])
def test_any_file_named_like_an_openai_release_needs_its_sha256(
    tiny_files, tiny_archive, tmp_path, monkeypatch, format
):
    """fetch_weights refuses any file under the release's name whose sha256 differs; the loader
    checked only TorchScript archives, so such a state dict loaded (and without QuickGELU)."""
    build_clip(*tiny_files)  # registers tiny_clip.json: 'tiny_clip' is a built-in name from now
    url = f"https://openaipublic.azureedge.net/clip/models/{'0' * 64}/tiny_clip.pt"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny_clip", {"openai": {"url": url}})
    path = tmp_path / "tiny_clip.pt"
    source = tiny_archive if format == "torchscript" else Path(tiny_files[1])
    path.write_bytes(source.read_bytes())
    with pytest.raises(WeightsError, match=f"{path} is named like OpenAI's tiny_clip release"):
        build_clip("tiny_clip", str(path))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickled_code_is_reported_as_refused_code(tiny_files, tmp_path, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save(
        {"visual.conv1.weight": torch.zeros(1), "evil": WritesMarker(marker)},
        buffer,
        pickle_protocol=protocol,
    )
    path.write_bytes(buffer.getvalue())
    with pytest.raises(
        WeightsError,
        match=r"this file contains pickled code \((__)?builtins?(__)?\.exec\)"
        r".*refused",
    ) as error:
        build_clip(tiny_files[0], str(path))
    assert str(path) in str(error.value) and "truncated" not in str(error.value)
    assert not marker.exists()


def test_torchscript_archive_with_code_is_reported_as_refused_code(tiny_files, tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    _write_malicious("torchscript-layout", path, marker)
    with pytest.raises(
        WeightsError,
        match=r"evil\.pt: this file contains pickled code "
        r"\(__builtin__\.exec\).*refused",
    ):
        build_clip(tiny_files[0], str(path))
    assert not marker.exists()


def test_forced_full_unpickling_is_refused(tiny_files, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(WeightsError, match=r"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set.*unset it"):
        build_clip(*tiny_files)


def _no_network(monkeypatch):
    """Every new TCP connection fails as on a machine without network; returns the attempts."""
    attempts = []

    def unreachable(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: unreachable(address))
    return attempts


@pytest.mark.parametrize("hf_offline", ["0", "1"])
def test_openai_tag_without_network_fails_within_10_s(tmp_path, monkeypatch, hf_offline):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", hf_offline == "1")
    attempts = _no_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:  # open_clip's real download_pretrained
        build_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10.0
    message = str(error.value)
    for expected in (
        "not in the download cache",
        "tools/fetch_weights.py",
        "on a machine with internet",
        "MODEL.WEIGHTS weights/ViT-B-16.pt",
    ):
        assert expected in message
    assert ("HF_HUB_OFFLINE=1" in message) == (hf_offline == "1")
    assert "local_files_only" not in message  # huggingface_hub's advice is for its caller
    assert len(attempts) == (0 if hf_offline == "1" else 1)  # only the probe, never retries
    assert hf_constants.HF_HUB_OFFLINE == (hf_offline == "1")  # its setting is left as it was


def test_unanswering_download_host_is_offline_after_the_probe_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(clip_loading, "NETWORK_PROBE_SECONDS", 0.5)
    # A DNS lookup or SYN that never gets an answer (a firewall dropping packets) until the
    # test ends; then it times out as a real one would, so the probe's daemon thread ends
    # cleanly instead of failing in a later test.
    released = threading.Event()

    def unanswered(*args, **kwargs):
        released.wait(5)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", unanswered)
    start = time.monotonic()
    try:
        with pytest.raises(
            WeightsError,
            match=r"no network \(huggingface\.co:443 did not answer "
            r"within 0\.5 s\).*weights/ViT-B-16",
        ):
            build_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
        assert time.monotonic() - start < 3.0
    finally:
        released.set()


def test_online_download_is_unchanged(tmp_path, tiny_state_dict, monkeypatch):
    from huggingface_hub import constants

    server = socket.create_server(("127.0.0.1", 0))  # a reachable "hub"
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as imported without the variable
    calls = []

    def download(cfg, cache_dir=None):
        calls.append(constants.HF_HUB_OFFLINE)
        raise OSError("HTTP 503 from the hub")

    monkeypatch.setattr(open_clip, "download_pretrained", download)
    with server, pytest.raises(WeightsError, match=r"the download failed \(OSError: HTTP 503"):
        build_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert calls == [False]  # downloaded as open_clip does, not from the cache only


@pytest.mark.parametrize("case", ["file-as-folder", "unwritable-folder"])
def test_fetch_bad_destination_is_one_line(fetch, source, tmp_path, case, monkeypatch):
    url, sha256 = source
    blocker = tmp_path / "blocker"
    if case == "file-as-folder":
        blocker.write_text("a file")
        dest = blocker / "weights" / "ViT-B-16.pt"
    else:
        blocker.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root writes anyway: refuse as the kernel would for a user

            def denied(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(blocker))

            monkeypatch.setattr(fetch.tempfile, "mkstemp", denied)
        dest = blocker / "ViT-B-16.pt"
    with pytest.raises(fetch.FetchError, match=r"Cannot write into the folder .*--dest") as error:
        fetch.download_verified(url, dest, sha256, progress=False)
    assert "\n" not in str(error.value) and str(dest.parent) in str(error.value)
    assert fetch.main(["--dest", str(dest), "--no-progress"]) == 1


@pytest.mark.parametrize("under", ["", "sub/ViT-B-16.pt"])
def test_fetch_dest_that_is_an_existing_file_says_so(fetch, tmp_path, caplog, under):
    """--dest FILE (or FILE/sub/x.pt), FILE an existing file, said '(FILE: File exists)'."""
    (tmp_path / "weights").write_text("a file")
    dest = tmp_path / "weights" / under
    with caplog.at_level("ERROR", logger="fetch_weights"):
        assert fetch.main(["--dest", str(dest), "--no-progress"]) == 1
    assert caplog.messages == [
        f"Cannot write into the folder {dest.parent if under else dest} ({tmp_path / 'weights'} "
        "is an existing file, not a folder); --dest names a folder (or a new .pt file in one): "
        "choose another folder for --dest."
    ]


def test_a_torchscript_module_tree_nested_past_64_levels_is_refused():
    from cliptrase_d2.torchscript_archive import ArchiveError, _collect_tensors, _ScriptObject

    def chain(levels):
        root = node = _ScriptObject()
        for _ in range(levels):
            node.attributes = {"m": _ScriptObject()}
            node = node.attributes["m"]
        node.attributes = {"w": torch.zeros(1)}
        return root

    tensors = {}
    _collect_tensors(chain(64), "", tensors, set())
    assert list(tensors) == ["m." * 64 + "w"]
    with pytest.raises(ArchiveError, match="nest more than 64 levels deep"):
        _collect_tensors(chain(65), "", {}, set())
