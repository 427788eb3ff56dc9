"""Builds the open_clip CLIP model and loads its weights as data only, from one read, exactly.

    model = build_clip("ViT-B-16", "weights/ViT-B-16.pt")    # OpenAI's TorchScript archive
    model = build_clip("ViT-B-16", "openai")                   # open_clip download / HF cache
    model = build_clip("path/to/tiny_clip.json", "tiny_clip_openai.pt")
    tokenizer = get_tokenizer("ViT-B-16")

open_clip builds the model (``create_model``, in the requested precision: ``"fp16"`` keeps its
``LayerNormFp32`` and the embeddings in fp32, as OpenAI runs CLIP), resolves and downloads
pretrained tags and reads ``torch.load(weights_only=True)`` checkpoints (``load_state_dict``).
What stays ours:

- ``read_weights`` reads the file once: the sha256 of those bytes (for OpenAI's published hash
  and ``weights_fingerprint``), the zip CRC-32s (torch.load does not check them), the tensors.
  ProxyCLIP's VFM weights (``modeling/vfm.py``) are read by it too.
  The file is not given to ``create_model(pretrained=path)``, which would read it again, refuse
  OpenAI's archive and interpolate a positional embedding where the weights do not fit.
- ``read_torchscript`` (module ``torchscript_archive``) reads OpenAI's TorchScript archive
  without running its code, which ``torch.jit.load`` would do.
- ``_load_exact`` copies the tensors in after checking that every key and shape fits and every
  value is finite, or raises a ``WeightsError`` naming what does not fit.
- ``_download_tag``: a tag without network fails in seconds. Offline (``HF_HUB_OFFLINE`` set,
  or a TCP probe finds the download host unreachable) the file is only looked up in
  huggingface_hub's cache, through its per-call offline setting (``local_files_only``), instead
  of waiting out huggingface_hub's connection attempts.

QuickGELU: OpenAI's weights were trained with QuickGELU, open_clip's plain ``ViT-B-16`` config
uses GELU. The model is built with QuickGELU when its config asks for it (``*-quickgelu`` names,
the fixtures' ``tiny_clip.json``), when the tag's open_clip entry says so (``openai``), or when
the weights are a TorchScript archive (only OpenAI distributes CLIP that way). An open_clip
``.bin`` holding OpenAI weights carries no such marker: name the model ``ViT-B-16-quickgelu``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import threading
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import open_clip
import safetensors.torch
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from open_clip.factory import load_state_dict
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from .errors import WeightsError
from .torchscript_archive import ArchiveError, pickled_code, read_torchscript, torchscript_root

logger = logging.getLogger(__name__)

__all__ = [
    "WeightsError",
    "PRECISIONS",
    "build_clip",
    "get_tokenizer",
    "open_clip_model_name",
    "read_weights",
    "weights_fingerprint",
]

# MODEL.CLIPTRASE.PRECISION -> open_clip's precision: "fp16" is its mixed fp16 (LayerNorm in fp32,
# as OpenAI runs CLIP), "bf16" its "pure_bf16" (every tensor bf16).
PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "bf16": "pure_bf16"}
# A weights value ending in one of these (or containing a path separator) is a file path.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Tensors OpenAI's archives store beside the weights; they describe the model and are not loaded.
OPENAI_EXTRA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})
# Where the docs and error messages tell users to put downloaded weights (relative to the repo).
WEIGHTS_DIR = "weights"
FETCH_TOOL = "tools/fetch_weights.py"
# Seconds to wait for a TCP connection to the download host before calling the machine offline.
NETWORK_PROBE_SECONDS = 3.0


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def build_clip(
    model: str = "ViT-B-16",
    weights: str = "openai",
    *,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    cache_dir: Optional[str] = None,
) -> "open_clip.model.CLIP":
    """Builds an open_clip CLIP model and loads ``weights`` into it exactly.

    Args:
        model: open_clip model name (``"ViT-B-16"``) or path to an open_clip model-config JSON
            (registered with ``open_clip.add_model_config`` under its file stem).
        weights: checkpoint file (OpenAI TorchScript archive, state dict ``.pt``/``.pth``/
            ``.bin``, ``.safetensors``) or an open_clip pretrained tag such as ``"openai"``.
        precision: ``"fp32"`` (default, exact), ``"fp16"`` (open_clip's mixed fp16, LayerNorm in
            fp32) or ``"bf16"`` (every tensor bf16); the file's values are rounded once.
        device: where the returned model lives.
        cache_dir: download cache for tags (default: the Hugging Face hub cache).

    Returns:
        The model in eval mode on ``device``, with ``requires_grad=False`` on every parameter.

    Raises:
        WeightsError: unknown model or precision, missing/corrupt/unsafe file, weights that do
            not fit the model or hold NaN/inf, or a tag that cannot be downloaded (offline).
    """
    if precision not in PRECISIONS:
        raise WeightsError(
            f"Unknown precision {precision!r} (MODEL.CLIPTRASE.PRECISION): use one of "
            f"{sorted(PRECISIONS)}."
        )
    spec = _resolve_model(model)
    checkpoint, tag_quick_gelu = _resolve_weights(spec, weights, cache_dir)
    tensors, sha256, torchscript = read_weights(checkpoint)

    quick_gelu = _needs_quick_gelu(
        spec, weights, checkpoint, tag_quick_gelu=tag_quick_gelu, torchscript=torchscript
    )
    clip = _instantiate(spec, quick_gelu, PRECISIONS[precision])
    _load_exact(clip, tensors, checkpoint=checkpoint, spec=spec)
    clip.to(device)
    clip.eval()
    clip.requires_grad_(False)
    logger.info(
        "Loaded %s (%s, %s) from %s",
        spec.label,
        "QuickGELU" if quick_gelu else "GELU",
        precision,
        checkpoint,
    )
    return clip


def get_tokenizer(model: str):
    """Returns open_clip's tokenizer for a model name or model-config JSON path.

    For CLIP configs this is the BPE tokenizer with context length 77 (from the config's
    ``text_cfg.context_length``): ``tokenizer(["a photo of a cat"])`` is a (1, 77) LongTensor.
    """
    spec = _resolve_model(model)
    return open_clip.get_tokenizer(spec.name)


def open_clip_model_name(model: str) -> str:
    """The name open_clip builds ``model`` (a MODEL.CLIPTRASE.CLIP_MODEL value) under: a built-in
    name, or the stem of a model-config JSON once the file is checked and registered."""
    return _resolve_model(model).name


def weights_fingerprint(weights: str) -> str:
    """Short stable id of a weights value, for cache keys.

    A file gives the first 16 hex digits of the sha256 of its content (taken from the read that
    loaded it, else computed once per file version in this process); a tag such as ``"openai"``
    is returned unchanged.
    """
    weights = str(weights)
    if not _is_path(weights):
        return weights
    path = _existing_file(weights)
    version = _file_version(path)
    if version not in _SHA256:
        with open(path, "rb") as f:
            _SHA256[version] = hashlib.file_digest(f, "sha256").hexdigest()
    return _SHA256[version][:16]


def _file_version(path: Path) -> Tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# (resolved path, size, mtime) -> hex sha256 of that file's content
_SHA256: Dict[Tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------
# Model resolution
# ---------------------------------------------------------------------------------------------


class _ModelSpec(NamedTuple):
    name: str  # name open_clip knows the config under
    config: Dict[str, Any]  # the open_clip model config
    label: str  # how messages refer to the model
    builtin: bool  # a built-in open_clip name (pretrained tags apply), not a JSON file


def _resolve_model(model: str) -> _ModelSpec:
    """Maps a model name or model-config JSON path to the config open_clip will build."""
    model = str(model)
    if model.lower().endswith(".json") or os.path.isfile(model):
        return _register_config_json(model)
    if model.startswith(("hf-hub:", "local-dir:")):
        raise WeightsError(
            f"CLIP model {model!r}: 'hf-hub:'/'local-dir:' names are not supported; give a "
            "built-in open_clip name (e.g. 'ViT-B-16') or a model-config JSON, and the "
            "checkpoint file as the weights."
        )
    name = model.replace("/", "-")  # OpenAI spells it "ViT-B/16"
    config = open_clip.get_model_config(name)
    if config is None:
        available = open_clip.list_models()
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5) or available[:8]
        raise WeightsError(
            f"Unknown open_clip model {model!r} (MODEL.CLIPTRASE.CLIP_MODEL). Did you mean one of "
            f"{close}? open_clip.list_models() lists all {len(available)} names; a custom "
            "architecture can be given as the path of an open_clip model-config JSON (*.json)."
        )
    return _ModelSpec(name, config, name, builtin=True)


def _register_config_json(path: str) -> _ModelSpec:
    """Validates an open_clip model-config JSON and registers it with open_clip under its stem."""
    file = Path(path).expanduser()
    if file.suffix.lower() != ".json":
        raise WeightsError(
            f"Model config {path} must be a .json file (open_clip only registers *.json); "
            "rename it, or give a built-in name such as 'ViT-B-16'."
        )
    if not file.is_file():
        raise WeightsError(
            f"Model config {path} not found (resolved to {file.resolve()}): give an existing "
            "open_clip model-config JSON or a built-in name such as 'ViT-B-16'."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(
            f"Model config {path} is not valid JSON ({e}); fix or replace the file."
        ) from e
    required = ("embed_dim", "vision_cfg", "text_cfg")
    if not isinstance(config, dict) or any(key not in config for key in required):
        raise WeightsError(
            f"Model config {path} is not an open_clip model config: it needs the keys "
            f"{list(required)} (see open_clip's model_configs/*.json for examples)."
        )
    # open_clip's sizes (its config fields with a positive int default, image_size and ResNet
    # layers also lists of them) and quick_gelu, whose string "false" would turn it on
    sizes = {"embed_dim": config["embed_dim"]}
    for section, fields in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        if not isinstance(config[section], dict):
            raise WeightsError(
                f"Model config {path}: {section} must be a JSON object; fix the file."
            )
        ints = {
            f.name for f in dataclasses.fields(fields) if type(f.default) is int and f.default > 0
        }
        sizes.update(
            {f"{section}.{k}": v for k, v in config[section].items() if k in ints and v is not None}
        )
    for key, value in sizes.items():
        if not all(type(v) is int and v > 0 for v in (value if type(value) is list else [value])):
            raise WeightsError(
                f"Model config {path}: {key} must be a positive integer, got {value!r}; fix the "
                "file (see open_clip's model_configs/*.json for examples)."
            )
    if not isinstance(config.get("quick_gelu", False), bool):
        raise WeightsError(f"Model config {path}: quick_gelu must be true or false (no quotes).")
    name = file.stem
    if open_clip.get_model_config(name) != config:
        if name in open_clip.list_models():
            logger.warning(
                "Model config %s replaces open_clip's config named %r for this process", path, name
            )
        # Validated above: a bad file would stay in open_clip's search path and break every rescan.
        open_clip.add_model_config(file)
    return _ModelSpec(name, config, f"{name} (model config {path})", builtin=False)


def _needs_quick_gelu(
    spec: _ModelSpec, weights: str, checkpoint: Path, *, tag_quick_gelu: bool, torchscript: bool
) -> bool:
    """QuickGELU if the config asks for it or the weights are OpenAI's (see the module
    docstring)."""
    if spec.config.get("quick_gelu", False):
        return True
    if tag_quick_gelu or torchscript:
        reason = f"tag '{weights}'" if tag_quick_gelu else "OpenAI TorchScript archive"
        logger.info("Building %s with QuickGELU (%s)", spec.label, reason)
        return True
    if "openai" in str(checkpoint).lower():  # only a hint: the file name proves nothing
        fix = (
            f"use the model name {spec.name}-quickgelu"
            if f"{spec.name}-quickgelu" in open_clip.list_models()
            else 'set "quick_gelu": true in its model config'
        )
        logger.warning(
            "%s is built with GELU, but %s looks like OpenAI's weights, which need QuickGELU: "
            "if so, %s (MODEL.CLIPTRASE.CLIP_MODEL).",
            spec.label,
            checkpoint,
            fix,
        )
    return False


def _instantiate(spec: _ModelSpec, quick_gelu: bool, precision: str) -> torch.nn.Module:
    """Builds the randomly initialised model on the CPU in open_clip's ``precision``. Its warning
    that the model is 'initialized randomly' (logged through the root logger) is hidden: the
    weights are loaded right after."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    logging.getLogger().addFilter(keep)
    try:
        return open_clip.create_model(
            spec.name, precision=precision, device="cpu", force_quick_gelu=quick_gelu
        )
    except Exception as e:  # a config open_clip rejects: unknown keys, bad sizes
        raise WeightsError(
            f"open_clip could not build {spec.label}: {type(e).__name__}: {e}"
        ) from e
    finally:
        logging.getLogger().removeFilter(keep)


# ---------------------------------------------------------------------------------------------
# Weights resolution: a file path or a pretrained tag
# ---------------------------------------------------------------------------------------------


def _is_path(weights: str) -> bool:
    """A value with a path separator or a checkpoint suffix, or an existing file, is a path; else a
    tag."""
    return (
        "/" in weights
        or os.sep in weights
        or weights.lower().endswith(WEIGHTS_SUFFIXES)
        or weights.startswith(("~", "."))
        or os.path.isfile(weights)
    )


def not_a_file(path: Path) -> str:
    """What stands at ``path``, which is no regular file, as a message says it."""
    if path.is_dir():
        return "is a folder"
    if path.exists():  # a pipe or device: no checkpoint, or one read forever
        return "is not a regular file (a pipe or device)"
    if path.is_symlink():
        return f"is a link to {os.readlink(path)}, which does not exist"
    return "not found"


def _existing_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    problem, hint = not_a_file(path), ""
    if weights.startswith("hf-hub:"):
        hint = " ('hf-hub:' names are not supported: download the checkpoint and give its path.)"
    elif path.exists():
        hint = " Give the checkpoint file (inside it)."
    where = "" if path.is_absolute() else f" (relative paths start from {os.getcwd()})"
    raise WeightsError(
        f"Weights file {weights} {problem}{where}.{hint} For OpenAI's ViT-B/16 run `python "
        f"{FETCH_TOOL} --model ViT-B-16 --dest {WEIGHTS_DIR}/` and set MODEL.WEIGHTS "
        f"{WEIGHTS_DIR}/ViT-B-16.pt; see {WEIGHTS_DIR}/README.md."
    )


def _resolve_weights(spec: _ModelSpec, weights: str, cache_dir: Optional[str]) -> Tuple[Path, bool]:
    """Returns (checkpoint file, whether the tag's open_clip entry asks for QuickGELU)."""
    if not isinstance(weights, (str, os.PathLike)) or not str(weights):
        raise WeightsError(
            f"No CLIP weights given ({weights!r}): set MODEL.WEIGHTS to a checkpoint file "
            f"(e.g. {WEIGHTS_DIR}/ViT-B-16.pt) or an open_clip tag such as 'openai'."
        )
    weights = str(weights)
    if _is_path(weights):
        return _existing_file(weights), False
    if not spec.builtin:
        raise WeightsError(
            f"Weights {weights!r} look like an open_clip pretrained tag, but tags only exist for "
            f"built-in model names, not for {spec.label}: set MODEL.WEIGHTS to a checkpoint file."
        )
    tag_config = open_clip.get_pretrained_cfg(spec.name, weights)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise WeightsError(
            f"Weights {weights!r} are neither an existing file nor an open_clip pretrained tag of "
            f"{spec.name} (its tags: {tags}). A file path needs a '/' or a "
            f"{'/'.join(WEIGHTS_SUFFIXES)} suffix."
        )
    return _download_tag(spec, weights, tag_config, cache_dir), bool(
        tag_config.get("quick_gelu", False)
    )


def _download_tag(
    spec: _ModelSpec, tag: str, tag_config: Mapping[str, Any], cache_dir: Optional[str]
) -> Path:
    """The tag's checkpoint: downloaded (or revalidated) by open_clip when online; when offline
    (HF_HUB_OFFLINE, or the download host does not answer) only huggingface_hub's cache is read."""
    # where open_clip.download_pretrained fetches the tag from: it prefers the HF hub
    url = hub_constants.ENDPOINT if tag_config.get("hf_hub") else tag_config.get("url", "")
    offline = "HF_HUB_OFFLINE=1 is set" if hub_constants.HF_HUB_OFFLINE else _network_problem(url)
    try:
        if offline and tag_config.get("hf_hub"):
            path = _cached_tag_file(tag_config["hf_hub"], cache_dir)
        else:
            path = open_clip.download_pretrained(dict(tag_config), cache_dir=cache_dir)
    except Exception as e:  # network down, not in the cache, hub error, no disk space, ...
        if offline:
            reason = f"{offline} and the file is not in the download cache"
        else:
            reason = "the download failed"
        # huggingface_hub's text for a cache miss offline advises setting local_files_only, a
        # parameter of our call, not the user's: the reason above says it all
        if not (offline and isinstance(e, LocalEntryNotFoundError)):
            reason += f" ({type(e).__name__}: {_first_line(str(e))})"
        raise _tag_unavailable(spec, tag, tag_config, reason) from e
    if not path or not os.path.isfile(path):
        raise _tag_unavailable(spec, tag, tag_config, "open_clip returned no file")
    return Path(path)


def _cached_tag_file(hf_hub: str, cache_dir: Optional[str]) -> str:
    """The file ``open_clip.download_pretrained`` would give for an ``hf_hub`` entry (its
    safetensors alternative first), from huggingface_hub's cache only: ``local_files_only`` is
    huggingface_hub's per-call offline setting, which open_clip cannot pass."""
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or open_clip.pretrained.HF_WEIGHTS_NAME
    for name in open_clip.pretrained._get_safe_alternatives(filename):
        with contextlib.suppress(LocalEntryNotFoundError):
            return hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True)
    return hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True)


def _network_problem(url: str) -> Optional[str]:
    """Why ``url``'s host (or the proxy for it) cannot be reached, or None when a TCP connection
    opens within NETWORK_PROBE_SECONDS. A thread bounds a hanging DNS lookup as well."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    outcome: List[Optional[OSError]] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=NETWORK_PROBE_SECONDS).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    probe = threading.Thread(target=connect, name="clip-weights-network-probe", daemon=True)
    probe.start()
    probe.join(NETWORK_PROBE_SECONDS)
    where = f"{address[0]}:{address[1]}"
    if not outcome:
        return f"no network ({where} did not answer within {NETWORK_PROBE_SECONDS:g} s)"
    return None if outcome[0] is None else f"no network (cannot reach {where}: {outcome[0]})"


def _tag_unavailable(
    spec: _ModelSpec, tag: str, tag_config: Mapping[str, Any], reason: str
) -> WeightsError:
    url = tag_config.get("url", "")
    if "openaipublic" in url:  # OpenAI's archive; its sha256 is the URL's second-to-last segment
        target = f"{WEIGHTS_DIR}/{os.path.basename(url)}"
        how = (
            f"run `python {FETCH_TOOL} --model {spec.name} --dest {WEIGHTS_DIR}/` on a machine "
            f"with internet (or download {url} and check its sha256 {url.split('/')[-2]}), so "
            f"that the file is {target}"
        )
    else:
        repo = tag_config.get("hf_hub", "").rstrip("/")
        target = f"{WEIGHTS_DIR}/{spec.name}-{tag}.bin"
        source = f"https://huggingface.co/{repo}" if repo else (url or "the open_clip release")
        how = (
            f"download the checkpoint from {source} on a machine with internet and save it as "
            f"{target}"
        )
    return WeightsError(
        f"Cannot get the '{tag}' weights of {spec.name}: {reason}. To run offline, {how}, then set "
        f"MODEL.WEIGHTS {target} (see {WEIGHTS_DIR}/README.md)."
    )


# ---------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------


def read_weights(path: Path) -> Tuple[Dict[str, torch.Tensor], str, bool]:
    """Reads a checkpoint file once, without running pickled code: (its tensors on the CPU, the
    hex sha256 of its content, whether it is a TorchScript archive). A pickle that names code is
    refused, naming it; anything else unreadable is reported as a damaged file."""
    version = _file_version(path)
    data = path.read_bytes()  # the file's only read
    if not data:
        raise WeightsError(
            f"Weights file {path} is empty: it is not a readable checkpoint; download it again."
        )
    sha256 = _SHA256[version] = hashlib.sha256(data).hexdigest()
    try:
        tensors, torchscript = _read_tensors(path, data)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler refused or failed
        code = pickled_code(data)
        if code:
            raise WeightsError(
                f"Refusing to load weights file {path}: this file contains pickled code "
                f"({', '.join(code[:3])}) that would run when loaded, so it was refused and "
                "nothing in it was executed. Weights are only read as data (torch's weights-only "
                "unpickler). Use the official checkpoint (re-download it) or convert the weights "
                "to .safetensors with a trusted tool."
            ) from e
        detail = _first_line(str(e).split("WeightsUnpickler error:", 1)[-1])  # not its advice
        raise _unreadable(path, f"torch's weights-only reader stopped at: {detail}") from e
    except ArchiveError as e:
        raise _unreadable(path, str(e)) from e
    _check_release(path, sha256)
    return tensors, sha256, torchscript


def _read_tensors(path: Path, data: bytes) -> Tuple[Dict[str, torch.Tensor], bool]:
    """(tensors, whether the file is a TorchScript archive). A zip (torch.save's format,
    TorchScript) has its CRC-32s checked: torch.load does not, so a damaged tensor would load
    silently."""
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        try:
            with zipfile.ZipFile(buffer) as archive:
                root = torchscript_root(archive)
                if root is not None:  # every record read_torchscript reads is CRC-checked
                    return read_torchscript(archive, root), True
                damaged = archive.testzip()  # reads every record, compares its CRC-32
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ArchiveError(f"broken zip archive: {e}") from e
        if damaged is not None:
            raise ArchiveError(
                f"the bytes of record {damaged} disagree with its stored CRC-32, "
                "so the file is damaged"
            )
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in {"1", "y", "yes", "true"}:
        # open_clip retries a torch.load that raised TypeError without weights_only=, which this
        # variable turns into a full unpickle: refuse rather than risk running a file's code.
        raise WeightsError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, so reading weights file "
            f"{path} could run pickled code: unset it to load weights."
        )
    try:
        if path.name.endswith(".safetensors"):  # open_clip reads these only from a path
            state_dict = {
                k.removeprefix("module."): v for k, v in safetensors.torch.load(data).items()
            }
        else:  # torch.load(weights_only=True), {"state_dict": ...} and "module." unwrapped
            state_dict = load_state_dict(io.BytesIO(data), device="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except (AttributeError, StopIteration) as e:  # not a mapping, or an empty one
        raise WeightsError(
            f"Weights file {path} holds no state dict of tensors ({e!r}); give the model's "
            "checkpoint (for CLIP: OpenAI's or open_clip's)."
        ) from e
    except Exception as e:  # truncated zip, random bytes, not a torch file at all
        raise ArchiveError(f"{type(e).__name__}: {_first_line(str(e))}") from e
    if isinstance(state_dict.get("model"), Mapping):  # Detectron2's checkpoints: {"model": ...}
        state_dict = {k.removeprefix("module."): v for k, v in state_dict["model"].items()}
    tensors = {str(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"Weights file {path} contains no tensors (top-level keys: "
            f"{list(state_dict)[:10]}); give the model's checkpoint (for CLIP: OpenAI's or "
            "open_clip's)."
        )
    return tensors, False


def _check_release(path: Path, actual: str) -> None:
    """A file named like one of OpenAI's releases in open_clip's registry (in any format, as
    fetch_weights decides; for any reader: CLIP's, the checkpointer's, the VFM's) must have its
    published sha256 (the second-to-last segment of OpenAI's download URL)."""
    for name, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_url(name, tag) if tag == "openai" else ""
        if "openaipublic" in url and path.name == os.path.basename(url):
            break
    else:
        return
    expected = url.split("/")[-2]
    if actual != expected:
        raise WeightsError(
            f"Weights file {path} is named like OpenAI's {name} release, but its sha256 is "
            f"{actual}, not the published {expected}: it is damaged or another file. Delete it and "
            f"download it again (`python {FETCH_TOOL} --model {name} --dest {path}` checks "
            "it), or rename your own file."
        )


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "no details"


def _unreadable(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"Weights file {path} is not a readable checkpoint ({detail}). It is probably truncated or "
        "corrupt, or not a PyTorch/safetensors checkpoint at all: download it again (for OpenAI's "
        f"CLIP ViT-B/16, `python {FETCH_TOOL}` verifies the sha256)."
    )


# ---------------------------------------------------------------------------------------------
# Loading into the model
# ---------------------------------------------------------------------------------------------


def _load_exact(
    model: torch.nn.Module,
    state_dict: Dict[str, torch.Tensor],
    *,
    checkpoint: Path,
    spec: _ModelSpec,
) -> None:
    """Copies every model tensor from ``state_dict`` (strict: all keys, same shapes, finite
    values) or explains why not."""
    expected = model.state_dict()
    # OpenAI's model-description tensors and the model's own non-persistent buffers (attention
    # masks) may be present in a file but are never weights.
    ignorable = OPENAI_EXTRA_KEYS | {
        name for name, _ in model.named_buffers() if name not in expected
    }
    matched: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    for key, tensor in state_dict.items():
        if key in expected:
            matched[key] = tensor
        elif key not in ignorable and not key.endswith(".attn_mask"):
            unexpected.append(key)
    missing = [key for key in expected if key not in matched]
    wrong_shape = []
    for key, tensor in matched.items():
        target = expected[key].shape
        if tensor.shape != target:
            if key in ("logit_scale", "logit_bias") and tensor.numel() == expected[key].numel():
                matched[key] = tensor.reshape(target)  # () vs (1,) across open_clip versions
            else:
                wrong_shape.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(target)}")
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            problems.append(
                f"{len(wrong_shape)} tensors of another shape ({'; '.join(wrong_shape[:3])})"
            )
        if missing:
            problems.append(f"{len(missing)} model keys missing from the file (e.g. {missing[:4]})")
        if unexpected:
            problems.append(f"{len(unexpected)} file keys the model lacks (e.g. {unexpected[:4]})")
        raise WeightsError(
            f"Weights file {checkpoint} does not fit the model {spec.label}: "
            f"{'; '.join(problems)}. {_describe_checkpoint(state_dict)} Set "
            "MODEL.CLIPTRASE.CLIP_MODEL to the model these weights were trained as (a built-in "
            f"open_clip name or a model-config JSON), or MODEL.WEIGHTS to weights of {spec.name}."
        )
    check_values(expected, matched, checkpoint)
    model.load_state_dict(matched, strict=True)


def check_values(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], checkpoint
) -> None:
    """Refuses what ``load_state_dict`` would take without a word: a tensor of integers,
    booleans or complex numbers for a floating-point one of ``expected`` (the model's state
    dict: it would be cast), NaN or infinite values."""
    for key, tensor in state_dict.items():
        if key in expected and expected[key].is_floating_point() and not tensor.is_floating_point():
            raise WeightsError(
                f"Weights file {checkpoint} holds tensor {key} as {tensor.dtype}, not floating "
                "point, so it cannot be a weight: the file is damaged or was converted wrongly. "
                "Use the model's original checkpoint."
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(
                f"Weights file {checkpoint} holds {count} NaN or infinite values "
                f"in tensor {key} {tuple(tensor.shape)}: the file is damaged or was saved from a "
                "diverged training run. Download it again or use other weights."
            )


def _describe_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One sentence on what the checkpoint looks like, naming matching open_clip models if any."""
    conv1 = state_dict.get("visual.conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        if any(key.startswith("visual.layer1.") for key in state_dict):
            return "The file looks like a ResNet CLIP (e.g. RN50)."
        return "The file does not look like a CLIP ViT checkpoint (no visual.conv1.weight)."
    width, patch = int(conv1.shape[0]), int(conv1.shape[-1])  # (width, 3, patch, patch)
    layers = len(
        {key.split(".")[3] for key in state_dict if key.startswith("visual.transformer.resblocks.")}
    )
    facts = {"width": width, "patch_size": patch, "layers": layers}
    pos = state_dict.get("visual.positional_embedding")  # (1 + grid^2, width)
    if pos is not None and pos.ndim == 2:
        grid = round((pos.shape[0] - 1) ** 0.5)
        facts["image_size"] = grid * patch
    proj = state_dict.get("text_projection", state_dict.get("visual.proj"))  # (width, embed_dim)
    embed_dim = int(proj.shape[-1]) if proj is not None and proj.ndim == 2 else None
    matches = [name for name in open_clip.list_models() if _config_matches(name, facts, embed_dim)]
    shape = (
        f"a ViT of width {width}, {layers} blocks, patch {patch}"
        + (f", {facts['image_size']} px" if "image_size" in facts else "")
        + (f", embedding {embed_dim}" if embed_dim else "")
    )
    if matches:
        return f"The file looks like {shape}, like open_clip's {matches[:4]}."
    return (
        f"The file looks like {shape}; no built-in open_clip model matches, so pass its "
        "model-config JSON."
    )


def _config_matches(name: str, facts: Mapping[str, int], embed_dim: Optional[int]) -> bool:
    config = open_clip.get_model_config(name) or {}
    vision = config.get("vision_cfg", {})
    if "timm_model_name" in vision or (
        embed_dim is not None and config.get("embed_dim") != embed_dim
    ):
        return False
    return all(vision.get(key) == value for key, value in facts.items())
