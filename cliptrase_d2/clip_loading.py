"""Builds the open_clip CLIP model and loads its weights: safely (no pickled code) and exactly (fp32).

    model = build_clip("ViT-B-16", "weights/ViT-B-16.pt")          # OpenAI's TorchScript archive
    model = build_clip("ViT-B-16", "openai")                         # open_clip download / HF cache
    model = build_clip("path/to/tiny_clip.json", "tiny_clip_openai.pt")
    tokenizer = get_tokenizer("ViT-B-16")

The architecture always comes from an open_clip model config (a built-in name or a JSON file) and is
instantiated in fp32; the checkpoint is then copied into it with ``load_state_dict``. We never use
open_clip's ``build_model_from_openai_state_dict``, which rounds every weight to fp16, so after loading
an fp32 checkpoint every parameter equals the file's tensor bit for bit.

Accepted weights (``MODEL.WEIGHTS``):
  - OpenAI's TorchScript archive (``ViT-B-16.pt`` from OpenAI's CLIP release), read with a restricted
    unpickler (see "Reading TorchScript archives" below), never with ``torch.jit.load``;
  - a plain state dict with OpenAI/open_clip key names, or an open_clip checkpoint (``.pt``/``.bin``,
    possibly under ``"state_dict"``, possibly with ``module.`` prefixes), read with
    ``torch.load(..., weights_only=True)``;
  - a ``.safetensors`` file;
  - an open_clip pretrained tag valid for the model (``openai``, ``laion2b_s34b_b88k``, ...), fetched
    through open_clip (Hugging Face hub cache); offline, only the local cache is consulted.

QuickGELU: OpenAI's weights were trained with QuickGELU, open_clip's plain ``ViT-B-16`` config uses
GELU. The model is built with QuickGELU when its config asks for it (``*-quickgelu`` names, the
fixtures' ``tiny_clip.json``), when the tag's open_clip entry says so (``openai``), or when the weights
are a TorchScript archive (only OpenAI distributes CLIP that way). An open_clip ``.bin`` holding OpenAI
weights carries no such marker: name the model ``ViT-B-16-quickgelu`` for it (see weights/README.md).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import pickle
import socket
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

import open_clip
import torch

logger = logging.getLogger(__name__)

__all__ = ["WeightsError", "PRECISIONS", "build_clip", "get_tokenizer", "weights_fingerprint"]

# precision name -> dtype every parameter and buffer is cast to after loading.
PRECISIONS: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A weights value ending in one of these (or containing a path separator) is a file path, never a tag.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Tensors OpenAI's archives store beside the weights; they describe the model and are not loaded.
OPENAI_EXTRA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})
# Where the docs and error messages tell users to put downloaded weights (relative to the repo root).
WEIGHTS_DIR = "weights"
FETCH_TOOL = "tools/fetch_weights.py"

_MAX_PICKLE_BYTES = 256 * 2**20  # a TorchScript data.pkl holds structure only (tens of KB for CLIP)
_MAX_MODULE_DEPTH = 64  # CLIP's module tree is 6 levels deep


class WeightsError(RuntimeError):
    """A model or weights value that cannot be used; the message names the value and how to fix it."""


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
        weights: checkpoint file (OpenAI TorchScript archive, state dict ``.pt``/``.pth``/``.bin``,
            ``.safetensors``) or an open_clip pretrained tag such as ``"openai"``.
        precision: ``"fp32"`` (default, exact), ``"fp16"`` or ``"bf16"``: every floating-point
            parameter and buffer is cast after loading.
        device: where the returned model lives.
        cache_dir: download cache for tags (default: the Hugging Face hub cache).

    Returns:
        The model in eval mode on ``device``, with ``requires_grad=False`` on every parameter.

    Raises:
        WeightsError: unknown model or precision, missing/corrupt/unsafe file, weights that do not
            fit the model, or a tag that cannot be downloaded (offline).
    """
    dtype = _precision_dtype(precision)
    spec = _resolve_model(model)
    checkpoint, tag_quick_gelu = _resolve_weights(spec, weights, cache_dir)
    state_dict, file_format = _read_checkpoint(checkpoint)

    quick_gelu = _needs_quick_gelu(spec, weights, checkpoint, tag_quick_gelu=tag_quick_gelu,
                                   torchscript=file_format == "torchscript")
    clip = _instantiate(spec, quick_gelu)
    _load_exact(clip, state_dict, checkpoint=checkpoint, spec=spec)
    if dtype != torch.float32:
        clip.to(dtype=dtype)
    clip.to(device)
    clip.eval()
    clip.requires_grad_(False)
    logger.info("Loaded %s (%s, %s) from %s", spec.label, "QuickGELU" if quick_gelu else "GELU",
                precision, checkpoint)
    return clip


def get_tokenizer(model: str):
    """Returns open_clip's tokenizer for a model name or model-config JSON path.

    For CLIP configs this is the BPE tokenizer with context length 77 (from the config's
    ``text_cfg.context_length``): ``tokenizer(["a photo of a cat"])`` is a (1, 77) LongTensor.
    """
    spec = _resolve_model(model)
    return open_clip.get_tokenizer(spec.name)


def weights_fingerprint(weights: str) -> str:
    """Short stable id of a weights value, for cache keys.

    A file gives the first 16 hex digits of the sha256 of its content (computed once per file
    version in this process); a tag such as ``"openai"`` is returned unchanged.
    """
    weights = str(weights)
    if not _is_path(weights):
        return weights
    path = _existing_file(weights)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


_FINGERPRINTS: Dict[Tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------
# Model resolution
# ---------------------------------------------------------------------------------------------


class _ModelSpec(NamedTuple):
    name: str  # name open_clip knows the config under
    config: Dict[str, Any]  # the open_clip model config
    label: str  # how messages refer to the model
    builtin: bool  # a built-in open_clip name (pretrained tags apply), not a JSON file


def _precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise WeightsError(
            f"Unknown precision {precision!r} (MODEL.CLIPTRASE.PRECISION): use one of {sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


def _resolve_model(model: str) -> _ModelSpec:
    """Maps a model name or model-config JSON path to the config open_clip will build."""
    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise WeightsError(f"Invalid CLIP model {model!r}: give an open_clip model name such as 'ViT-B-16' "
                           "or the path of an open_clip model-config JSON.")
    model = str(model)
    if model.lower().endswith(".json") or os.path.isfile(model):
        return _register_config_json(model)
    if model.startswith(("hf-hub:", "local-dir:")):
        raise WeightsError(f"CLIP model {model!r}: 'hf-hub:'/'local-dir:' names are not supported; give a "
                           "built-in open_clip name (e.g. 'ViT-B-16') or a model-config JSON, and the "
                           "checkpoint file as the weights.")
    name = model.replace("/", "-")  # OpenAI spells it "ViT-B/16"
    config = open_clip.get_model_config(name)
    if config is None:
        available = open_clip.list_models()
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5) or available[:8]
        raise WeightsError(
            f"Unknown open_clip model {model!r} (MODEL.CLIPTRASE.CLIP_MODEL). Did you mean one of "
            f"{close}? open_clip.list_models() lists all {len(available)} names; a custom "
            "architecture can be given as the path of an open_clip model-config JSON (*.json).")
    return _ModelSpec(name, config, name, builtin=True)


def _register_config_json(path: str) -> _ModelSpec:
    """Validates an open_clip model-config JSON and registers it with open_clip under its stem."""
    file = Path(path).expanduser()
    if file.suffix.lower() != ".json":
        raise WeightsError(f"Model config {path} must be a .json file (open_clip only registers *.json); "
                           "rename it, or give a built-in name such as 'ViT-B-16'.")
    if not file.is_file():
        raise WeightsError(f"Model config {path} not found (resolved to {file.resolve()}): give an existing "
                           "open_clip model-config JSON or a built-in name such as 'ViT-B-16'.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"Model config {path} is not valid JSON ({e}); fix or replace the file.") from e
    required = ("embed_dim", "vision_cfg", "text_cfg")
    if not isinstance(config, dict) or any(key not in config for key in required):
        raise WeightsError(
            f"Model config {path} is not an open_clip model config: it needs the keys {list(required)} "
            "(see open_clip's model_configs/*.json for examples).")
    name = file.stem
    if open_clip.get_model_config(name) != config:
        if name in open_clip.list_models():
            logger.warning("Model config %s replaces open_clip's config named %r for this process", path, name)
        # Validated above: a bad file would stay in open_clip's search path and break every rescan.
        open_clip.add_model_config(file)
    return _ModelSpec(name, config, f"{name} (model config {path})", builtin=False)


def _needs_quick_gelu(spec: _ModelSpec, weights: str, checkpoint: Path, *, tag_quick_gelu: bool,
                      torchscript: bool) -> bool:
    """QuickGELU if the config asks for it or the weights are OpenAI's (see the module docstring)."""
    if spec.config.get("quick_gelu", False):
        return True
    if tag_quick_gelu or torchscript:
        reason = f"tag '{weights}'" if tag_quick_gelu else "OpenAI TorchScript archive"
        logger.info("Building %s with QuickGELU (%s)", spec.label, reason)
        return True
    if "openai" in str(checkpoint).lower():  # only a hint: the file name proves nothing
        fix = (f"use the model name {spec.name}-quickgelu" if f"{spec.name}-quickgelu" in open_clip.list_models()
               else 'set "quick_gelu": true in its model config')
        logger.warning("%s is built with GELU, but %s looks like OpenAI's weights, which need QuickGELU: if so, "
                       "%s (MODEL.CLIPTRASE.CLIP_MODEL).", spec.label, checkpoint, fix)
    return False


def _instantiate(spec: _ModelSpec, quick_gelu: bool) -> torch.nn.Module:
    """Builds the randomly initialised fp32 model on the CPU (weights are loaded right after)."""
    try:
        with _without_random_init_warning():
            return open_clip.create_model(spec.name, pretrained=None, precision="fp32", device="cpu",
                                          force_quick_gelu=quick_gelu)
    except Exception as e:  # a config open_clip rejects: unknown keys, bad sizes
        raise WeightsError(f"open_clip could not build {spec.label}: {type(e).__name__}: {e}") from e


class _DropRandomInitWarning(logging.Filter):
    """Hides open_clip's 'initialized randomly' warning: build_clip loads the weights itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    root = logging.getLogger()  # open_clip logs through the root logger
    log_filter = _DropRandomInitWarning()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


# ---------------------------------------------------------------------------------------------
# Weights resolution: a file path or a pretrained tag
# ---------------------------------------------------------------------------------------------


def _is_path(weights: str) -> bool:
    """A value with a path separator or a checkpoint suffix, or an existing file, is a path; else a tag."""
    return ("/" in weights or os.sep in weights or weights.lower().endswith(WEIGHTS_SUFFIXES)
            or weights.startswith(("~", ".")) or os.path.isfile(weights))


def _existing_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    hint = ""
    if weights.startswith("hf-hub:"):
        hint = " ('hf-hub:' names are not supported: download the checkpoint file and give its path.)"
    elif path.is_dir():
        hint = " It is a directory: give the checkpoint file inside it."
    where = "" if path.is_absolute() else f" (relative paths start from the current directory {os.getcwd()})"
    raise WeightsError(
        f"Weights file {weights} not found{where}.{hint} For OpenAI's ViT-B/16 run `python {FETCH_TOOL} --model "
        f"ViT-B-16 --dest {WEIGHTS_DIR}/` and set MODEL.WEIGHTS {WEIGHTS_DIR}/ViT-B-16.pt; see "
        f"{WEIGHTS_DIR}/README.md.")


def _resolve_weights(spec: _ModelSpec, weights: str, cache_dir: Optional[str]) -> Tuple[Path, bool]:
    """Returns (checkpoint file, whether the tag's open_clip entry asks for QuickGELU)."""
    if not isinstance(weights, (str, os.PathLike)) or not str(weights):
        raise WeightsError(f"No CLIP weights given ({weights!r}): set MODEL.WEIGHTS to a checkpoint file "
                           f"(e.g. {WEIGHTS_DIR}/ViT-B-16.pt) or an open_clip tag such as 'openai'.")
    weights = str(weights)
    if _is_path(weights):
        return _existing_file(weights), False
    if not spec.builtin:
        raise WeightsError(
            f"Weights {weights!r} look like an open_clip pretrained tag, but tags only exist for built-in "
            f"model names, not for {spec.label}: set MODEL.WEIGHTS to a checkpoint file.")
    tag_config = open_clip.get_pretrained_cfg(spec.name, weights)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise WeightsError(
            f"Weights {weights!r} are neither an existing file nor an open_clip pretrained tag of "
            f"{spec.name} (its tags: {tags}). A file path needs a '/' or a {'/'.join(WEIGHTS_SUFFIXES)} "
            "suffix.")
    return _download_tag(spec, weights, tag_config, cache_dir), bool(tag_config.get("quick_gelu", False))


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set now (huggingface_hub itself only reads it at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download_tag(spec: _ModelSpec, tag: str, tag_config: Mapping[str, Any], cache_dir: Optional[str]) -> Path:
    """The tag's checkpoint from the download cache, downloading it through open_clip when online."""
    if _hub_offline():
        cached = _cached_tag_file(tag_config, cache_dir)
        if cached is None:
            raise _tag_unavailable(spec, tag, tag_config,
                                   "HF_HUB_OFFLINE=1 is set and the file is not in the download cache")
        return cached
    unreachable = _unreachable_source(tag_config)
    if unreachable:  # fail (or use the cache) now, not after huggingface_hub's ~50 s of retries
        cached = _cached_tag_file(tag_config, cache_dir)
        if cached is None:
            raise _tag_unavailable(spec, tag, tag_config, unreachable)
        return cached
    try:
        path = open_clip.download_pretrained(dict(tag_config), cache_dir=cache_dir)
    except Exception as e:  # network down, hub unreachable, no disk space, ...
        raise _tag_unavailable(spec, tag, tag_config, f"the download failed ({type(e).__name__}: {e})") from e
    if not path or not os.path.isfile(path):
        raise _tag_unavailable(spec, tag, tag_config, "open_clip returned no file")
    return Path(path)


def _unreachable_source(tag_config: Mapping[str, Any], timeout: float = 3.0) -> Optional[str]:
    """Why the tag's download server cannot be reached (one TCP connection attempt, through the
    HTTPS proxy when one is set), or None when it can."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    from huggingface_hub import constants

    url = constants.ENDPOINT if tag_config.get("hf_hub") else tag_config.get("url", "")
    server = urlsplit(url)
    proxy = getproxies().get(server.scheme)
    target = urlsplit(proxy) if proxy else server
    if not target.hostname:
        return None
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{target.hostname}:{port} cannot be reached, no network? ({error})"
    return None


def _cached_tag_file(tag_config: Mapping[str, Any], cache_dir: Optional[str]) -> Optional[Path]:
    """The tag's file in the Hugging Face cache (same file names open_clip downloads), or None."""
    hub = tag_config.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hub)  # "timm/vit_base_patch16_clip_224.openai/" -> (repo, "")
    candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for candidate in candidates:
        hit = try_to_load_from_cache(repo_id=repo_id, filename=candidate, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _tag_unavailable(spec: _ModelSpec, tag: str, tag_config: Mapping[str, Any], reason: str) -> WeightsError:
    url = tag_config.get("url", "")
    if "openaipublic" in url:  # OpenAI's archive; its sha256 is the URL's second-to-last segment
        target = f"{WEIGHTS_DIR}/{os.path.basename(url)}"
        base_model = spec.name[: -len("-quickgelu")] if spec.name.endswith("-quickgelu") else spec.name
        how = (f"run `python {FETCH_TOOL} --model {base_model} --dest {WEIGHTS_DIR}/` on a machine with "
               f"internet (or download {url} and check its sha256 {url.split('/')[-2]}), so that the file is "
               f"{target}")
    else:
        repo = tag_config.get("hf_hub", "").rstrip("/")
        target = f"{WEIGHTS_DIR}/{spec.name}-{tag}.bin"
        source = f"https://huggingface.co/{repo}" if repo else (url or "the open_clip release")
        how = f"download the checkpoint from {source} on a machine with internet and save it as {target}"
    return WeightsError(
        f"Cannot get the '{tag}' weights of {spec.name}: {reason}. To run offline, {how}, then set "
        f"MODEL.WEIGHTS {target} (see {WEIGHTS_DIR}/README.md).")


# ---------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """Reads a checkpoint without running pickled code.

    Returns:
        (state dict name -> tensor on CPU, format: "torchscript" | "safetensors" | "state_dict").
    """
    if path.stat().st_size == 0:
        raise WeightsError(f"Weights file {path} is empty: it is not a readable checkpoint; download it again.")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except Exception as e:
            raise _unreadable(path, f"{type(e).__name__}: {e}") from e
    torchscript_root = _torchscript_root(path)
    if torchscript_root is not None:
        return _read_torchscript(path, torchscript_root), "torchscript"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path, e) from e
    except Exception as e:  # truncated zip, random bytes, not a torch file at all
        raise _unreadable(path, f"{type(e).__name__}: {_first_line(e)}") from e
    return _unwrap_state_dict(checkpoint, path), "state_dict"


def _unwrap_state_dict(checkpoint: Any, path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a state dict, unwrapped from {"state_dict": ...} and stripped of "module."."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"Weights file {path} holds a {type(checkpoint).__name__}, not a state dict of "
                           "CLIP weights; give an OpenAI or open_clip checkpoint.")
    tensors = {str(k): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"Weights file {path} contains no tensors (top-level keys: "
                           f"{list(checkpoint)[:10]}); give an OpenAI or open_clip checkpoint.")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in tensors.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _unreadable(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"Weights file {path} is not a readable checkpoint ({detail}). It is probably truncated or "
        "corrupt, or not a PyTorch/safetensors checkpoint at all: download it again (for OpenAI's ViT-B/16, "
        f"`python {FETCH_TOOL}` verifies the sha256).")


def _refused_pickle(path: Path, error: pickle.UnpicklingError) -> WeightsError:
    """Turns torch's weights_only refusal into a message that does not suggest weights_only=False."""
    detail = next((line.split("WeightsUnpickler error:", 1)[1].strip() for line in str(error).splitlines()
                   if "WeightsUnpickler error:" in line), "")
    if not detail:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("Unsupported")), _first_line(error))
    if "Unsupported global" in detail or "GLOBAL" in detail:
        return WeightsError(
            f"Refusing to load weights file {path}: besides tensors it contains pickled Python objects or "
            f"code ({detail.split(' was not an allowed')[0]}), and checkpoints are only read with "
            "torch.load(weights_only=True). Use the official checkpoint (re-download it) or convert the "
            "weights to .safetensors with a trusted tool.")
    return _unreadable(path, f"torch's weights-only reader stopped at: {detail}")


# ---------------------------------------------------------------------------------------------
# Reading TorchScript archives
#
# OpenAI distributes CLIP as TorchScript archives (a zip: <name>/data.pkl, <name>/data/<key>,
# <name>/code/..., <name>/constants.pkl). torch.load(weights_only=True) refuses them ("Cannot use
# weights_only=True with TorchScript archives"), and torch.jit.load is not safe for files from the
# internet: PyTorch's security policy treats TorchScript models as executable code (the archive's code
# is compiled and its scripted __setstate__ methods run while loading), and crashes of its C++
# deserializer on crafted files are closed as "torch::jit::load should only be used with trusted
# inputs" (pytorch/pytorch#77573, #179581). So we read the zip records ourselves: data.pkl goes
# through a pickle.Unpickler whose find_class (every callable a pickle uses comes from it) returns
# inert placeholders for the few names such an archive uses and refuses every other global, so no
# pickled code can run; tensor storages are raw bytes in data/<key>, turned into tensors only after
# unpickling, with their byte counts, sizes, strides and offsets checked. Nothing in code/ is read.
# ---------------------------------------------------------------------------------------------

_STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# TorchScript's typed-list helpers: they only rebuild a list from a list.
_LIST_BUILDERS = frozenset({"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"})


class _ScriptObject:
    """Inert stand-in for a TorchScript object (a ``__torch__.*`` class): records its attributes."""

    __slots__ = ("attributes",)

    def __init__(self, *_args: Any) -> None:
        self.attributes: Dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, Mapping) else {}


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _StorageRef(NamedTuple):
    dtype: torch.dtype
    key: str  # record data/<key> in the archive
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any, *_unused: Any) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor_v2: records the view, builds nothing yet."""
    if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and all(isinstance(v, int) for v in size + stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    return _TensorRef(storage, offset, size, stride)


def _restore_type_tag(value: Any, _type_str: Any) -> Any:
    return value


class _RestrictedTorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl into inert objects; any other global is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _tensor_ref
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights archive")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', <storage type>, key, location, numel); the location (e.g. 'cuda:0') is ignored.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        return _StorageRef(pid[1].dtype, pid[2], pid[4])


def _torchscript_root(path: Path) -> Optional[str]:
    """The record prefix ('<name>/') of a TorchScript archive, or None for any other file."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise _unreadable(path, f"broken zip archive: {e}") from e
    for name in sorted(names):
        if name.endswith("constants.pkl") and name.count("/") <= 1:
            root = name[: -len("constants.pkl")]
            if root + "data.pkl" in names:
                return root
    return None


def _read_torchscript(path: Path, root: str) -> Dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive's module tree, as a state dict (dotted attribute names)."""
    try:
        with zipfile.ZipFile(path) as archive:
            byteorder = root + "byteorder"
            if byteorder in archive.namelist():
                order = archive.read(byteorder).decode("ascii", "replace").strip()
                if order != sys.byteorder:
                    raise WeightsError(f"Weights file {path} was written on a {order}-endian machine; "
                                       f"this one is {sys.byteorder}-endian. Convert it to .safetensors first.")
            info = archive.getinfo(root + "data.pkl")
            _check_stored(info, path)
            if info.file_size > _MAX_PICKLE_BYTES:
                raise _unreadable(path, f"its data.pkl is {info.file_size} bytes, far too large")
            unpickler = _RestrictedTorchScriptUnpickler(archive.open(info), encoding="utf-8")
            try:
                module = unpickler.load()
            except pickle.UnpicklingError as e:
                if "is not allowed" in str(e):
                    raise WeightsError(
                        f"Refusing to load weights file {path}: its TorchScript data.pkl references "
                        f"Python code ({e}). OpenAI's archives contain only modules and tensors; use the "
                        "official file (re-download it).") from e
                raise _unreadable(path, f"data.pkl: {e}") from e
            except Exception as e:  # truncated pickle, wrong opcodes, odd argument types
                raise _unreadable(path, f"data.pkl: {type(e).__name__}: {e}") from e
            if not isinstance(module, _ScriptObject):
                raise _unreadable(path, "its data.pkl does not hold a TorchScript module")
            refs: Dict[str, _TensorRef] = {}
            _collect_tensor_refs(module, "", refs, seen=set(), path=path)
            storages: Dict[str, torch.Tensor] = {}
            return {name: _materialize(ref, archive, root, storages, path) for name, ref in refs.items()}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:  # bad CRC, truncated record, ...
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e


def _check_stored(info: zipfile.ZipInfo, path: Path) -> None:
    """PyTorch stores records uncompressed; a compressed one could inflate far beyond the file size."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise _unreadable(path, f"record {info.filename} is compressed, which PyTorch never writes")


def _collect_tensor_refs(obj: _ScriptObject, prefix: str, out: Dict[str, _TensorRef], seen: set, path: Path,
                         depth: int = 0) -> None:
    """Walks the module tree: tensors become 'a.b.c' entries, submodules are visited once each."""
    if depth > _MAX_MODULE_DEPTH:
        raise _unreadable(path, f"its modules nest more than {_MAX_MODULE_DEPTH} levels deep")
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():  # unset when the pickle had no BUILD
        if not isinstance(name, str):
            continue
        if isinstance(value, _TensorRef):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject) and id(value) not in seen:
            _collect_tensor_refs(value, f"{prefix}{name}.", out, seen, path, depth + 1)


def _materialize(ref: _TensorRef, archive: zipfile.ZipFile, root: str, storages: Dict[str, torch.Tensor],
                 path: Path) -> torch.Tensor:
    """Builds one tensor from its storage record, after checking the view stays inside the bytes read."""
    storage = ref.storage
    if storage.key not in storages:
        info = archive.getinfo(f"{root}data/{storage.key}")
        _check_stored(info, path)
        expected = storage.numel * storage.dtype.itemsize
        if storage.numel < 0 or info.file_size != expected:
            raise _unreadable(path, f"storage data/{storage.key} has {info.file_size} bytes, "
                                    f"expected {expected}")
        raw = bytearray(archive.read(info))  # (numel * itemsize,) bytes
        storages[storage.key] = (torch.frombuffer(raw, dtype=storage.dtype) if raw
                                 else torch.empty(0, dtype=storage.dtype))
    flat = storages[storage.key]  # (numel,)
    size, stride, offset = ref.size, ref.stride, ref.offset
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in size + stride):
        raise _unreadable(path, f"invalid tensor view {size}/{stride}/{offset} on data/{storage.key}")
    if all(size):
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise _unreadable(path, f"tensor view {size} at offset {offset} exceeds data/{storage.key}")
    return flat.as_strided(size, stride, offset)


# ---------------------------------------------------------------------------------------------
# Loading into the model
# ---------------------------------------------------------------------------------------------


def _load_exact(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], *, checkpoint: Path,
                spec: _ModelSpec) -> None:
    """Copies every model tensor from ``state_dict`` (strict: all keys, same shapes) or explains why not."""
    expected = model.state_dict()
    # OpenAI's model-description tensors and the model's own non-persistent buffers (attention masks)
    # may be present in a file but are never weights.
    ignorable = OPENAI_EXTRA_KEYS | {name for name, _ in model.named_buffers() if name not in expected}
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
            problems.append(f"{len(wrong_shape)} tensors of another shape ({'; '.join(wrong_shape[:3])})")
        if missing:
            problems.append(f"{len(missing)} model keys missing from the file (e.g. {missing[:4]})")
        if unexpected:
            problems.append(f"{len(unexpected)} file keys the model lacks (e.g. {unexpected[:4]})")
        raise WeightsError(
            f"Weights file {checkpoint} does not fit the model {spec.label}: {'; '.join(problems)}. "
            f"{_describe_checkpoint(state_dict)} Set MODEL.CLIPTRASE.CLIP_MODEL to the model these weights "
            "were trained as (a built-in open_clip name or a model-config JSON), or MODEL.WEIGHTS to weights "
            f"of {spec.name}.")
    model.load_state_dict(matched, strict=True)


def _describe_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One sentence on what the checkpoint looks like, naming matching open_clip models if any."""
    conv1 = state_dict.get("visual.conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        if any(key.startswith("visual.layer1.") for key in state_dict):
            return "The file looks like a ResNet CLIP (e.g. RN50)."
        return "The file does not look like a CLIP ViT checkpoint (no visual.conv1.weight)."
    width, patch = int(conv1.shape[0]), int(conv1.shape[-1])  # (width, 3, patch, patch)
    layers = len({key.split(".")[3] for key in state_dict if key.startswith("visual.transformer.resblocks.")})
    facts = {"width": width, "patch_size": patch, "layers": layers}
    pos = state_dict.get("visual.positional_embedding")  # (1 + grid^2, width)
    if pos is not None and pos.ndim == 2:
        grid = round((pos.shape[0] - 1) ** 0.5)
        facts["image_size"] = grid * patch
    proj = state_dict.get("text_projection", state_dict.get("visual.proj"))  # (width, embed_dim)
    embed_dim = int(proj.shape[-1]) if proj is not None and proj.ndim == 2 else None
    matches = [name for name in open_clip.list_models() if _config_matches(name, facts, embed_dim)]
    shape = (f"a ViT of width {width}, {layers} blocks, patch {patch}"
             + (f", {facts['image_size']} px" if "image_size" in facts else "")
             + (f", embedding {embed_dim}" if embed_dim else ""))
    if matches:
        return f"The file looks like {shape}, like open_clip's {matches[:4]}."
    return f"The file looks like {shape}; no built-in open_clip model matches, so pass its model-config JSON."


def _config_matches(name: str, facts: Mapping[str, int], embed_dim: Optional[int]) -> bool:
    config = open_clip.get_model_config(name) or {}
    vision = config.get("vision_cfg", {})
    if "timm_model_name" in vision or (embed_dim is not None and config.get("embed_dim") != embed_dim):
        return False
    return all(vision.get(key) == value for key, value in facts.items())
