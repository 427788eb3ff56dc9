"""Config keys of cliptrase-d2, declared once (Detectron2's add_<project>_config convention), and
``load_config``: Detectron2's defaults plus these keys, a file and overrides, with named errors."""

import dataclasses
import difflib
import functools
import inspect
import logging
import math
import numbers
import os
import traceback
from typing import Dict, NamedTuple, Optional

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from .errors import ConfigError, InputError, MissingFileError, UnknownNameError, invalid_value

__all__ = [
    "add_cliptrase_config",
    "load_config",
    "load_lazy_config",
    "check_lazy_config",
    "resolve_device",
    "available_device",
    "check_device",
    "check_images_per_batch",
    "check_argument",
]


class Range(NamedTuple):
    """What a numeric setting accepts: whole (``int``) or finite (``float``) numbers, at least
    ``low`` and at most ``high`` where given; a list default: a non-empty list of such numbers."""

    kind: type
    default: object
    low: Optional[float] = None
    high: Optional[float] = None
    note: str = ""  # what special values mean, e.g. "0 = off"

    def _bounds(self) -> str:
        if (self.low, self.high) == (0, 1):
            return "a fraction in [0, 1]"
        if self.high is not None:
            return f"from {self.low} to {self.high}"
        if self.low is not None:
            return f"at least {self.low}" if self.kind is int else f">= {self.low}"
        return ""

    def _fits_kind(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return isinstance(value, numbers.Integral) if self.kind is int else math.isfinite(value)

    def check(self, name: str, value, source: str = "") -> None:
        """Raises the one-line ConfigError naming ``name``, ``value`` and ``source`` (a file, the
        command line) unless ``value`` is a number (a list of numbers) of this range."""
        many = isinstance(self.default, list)
        listed = isinstance(value, (list, tuple))
        values = list(value) if many and listed else [value]
        typed = all(map(self._fits_kind, values)) and (listed and values if many else True)
        if typed and all(
            (self.low is None or v >= self.low) and (self.high is None or v <= self.high)
            for v in values
        ):
            return
        bounds = self._bounds()
        if many or (not typed and not bounds.startswith("a ")):
            kind = "a whole number" if self.kind is int else "a finite number"
            kind = "a list of whole numbers, each" if many else kind
            bounds = f"{kind} {bounds}".rstrip()
        note = f" ({self.note})" if self.note else ""
        where = f" in {source}" if source else ""
        default = f" (default {self.default!r})" if self.default not in (None, []) else ""
        raise invalid_value(name, value, bounds + note, where + default)


def check_argument(name: str, value, kind=int, low=None, high=None, choices=None) -> None:
    """Refuses a tool's argument before any work, in the config keys' one-line ConfigError:
    ``choices`` given, a value (each value of a list) not among them; else a number that is not
    whole (``kind`` int) or finite (float), or out of [``low``, ``high``]. E.g.
    ``check_argument("--port", args.port, int, 1, 65535)``."""
    if choices is None:
        Range(kind, [] if isinstance(value, list) else None, low, high).check(name, value)
        return
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item not in choices:
            raise invalid_value(name, item, f"one of {', '.join(map(str, choices))}")


# Full key -> Range of every numeric key, filled where the keys are declared
# (add_cliptrase_config) and checked whatever the source: YAML files, command lines, LazyConfigs.
RANGES: Dict[str, Range] = {}


def _numbers(node, prefix: str):
    """A function that declares a numeric key of ``node``: it sets its default and records its
    Range under ``<prefix>.<key>``."""

    def number(key: str, default, low=None, high=None, note: str = "") -> None:
        node[key] = default
        kind = type(default[0] if isinstance(default, list) else default)
        RANGES[f"{prefix}.{key}"] = Range(kind, default, low, high, note)

    return number


def add_cliptrase_config(cfg):
    """Adds MODEL.CLIPTRASE.* and the project's TEST.* keys to a Detectron2 config, in place."""
    cfg.MODEL.CLIPTRASE = CN()
    c = cfg.MODEL.CLIPTRASE
    number = _numbers(c, "MODEL.CLIPTRASE")  # a numeric key: its default and its Range
    # Detectron2's: processes reading images ahead of the model (0 = in the main process)
    _numbers(cfg.DATALOADER, "DATALOADER")("NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, low=0)
    # open_clip model name (e.g. "ViT-B-16", built with QuickGELU for OpenAI weights) or a path
    # to an open_clip model-config JSON. MODEL.WEIGHTS names the checkpoint file or tag ("openai").
    c.CLIP_MODEL = "ViT-B-16"
    # How dense features are computed: "cliptrase" (default), or a peer method's head.
    c.HEAD = "cliptrase"
    # Numeric precision of the CLIP towers: "fp32" (exact, default), "fp16" or "bf16" (GPU speed).
    c.PRECISION = "fp32"
    # Benchmark key in vocabularies.json, comma-separated class names, or a text file
    # (one name per line). Empty: the vocabulary of the first dataset in DATASETS.TEST.
    c.VOCABULARY = ""
    # Keep the paper's vocabulary quirks (docs/method.md, 'Vocabulary quirks'); paper configs only.
    c.PAPER_VOCABULARY_QUIRKS = False
    # Extra background words for a user vocabulary, merged into one "background" class.
    c.BACKGROUND_WORDS = []
    # Prompt template set: "imagenet80" (open_clip's, the paper's) or "vild14" (vocabularies.json).
    c.TEMPLATES = "imagenet80"
    # Multiply each class map by that class's image-level ([CLS]) logit (the paper does it for
    # VOC20).
    c.IMAGE_LOGIT_WEIGHTING = False
    # Logit scale applied to cosine similarities; 0 = CLIP's learned scale (100 for OpenAI weights).
    number("LOGIT_SCALE", 0.0, low=0, note="0 = the head's own or CLIP's learned scale")
    # DBSCAN over rows of the suppressed self-correlation: radius (Euclidean) and core-point size.
    # 0 = automatic: scaled with the side g of the patch grid the model sees (paper: g = 14 ->
    # (0.7, 3), g = 21 -> (1.1, 7); linear in g between and beyond, eps >= 0.1, min_samples >= 2).
    number("DBSCAN_EPS", 0.0, low=0, note="0 = automatic, else DBSCAN's eps > 0")
    number("DBSCAN_MIN_SAMPLES", 0, low=0, note="0 = automatic")
    # Region refinement: "vote" (majority label per region, paper), "mean" (mean logits per
    # region, soft, used inside sliding windows), "none" (raw dense prediction), "tlp" (PEARL's
    # text-aware Laplacian propagation of each predicted frame, no regions) or "pamr" (none, then
    # PAMR on the resized logits, standard protocol; PAMR_STEPS below).
    c.REFINE = "vote"
    # Region maps: upsampling factor of the patch grid before the median filter, and filter size
    # (px).
    number("REGION_UPSAMPLE", 4, low=1)
    number("MEDIAN_SIZE", 7, low=1)
    # "paper": resize shorter side to PAPER_SIZE (bicubic), center crop PAPER_SIZE x PAPER_SIZE,
    # predict in that frame. "standard": shorter side STANDARD_SHORT_SIDE, sliding window,
    # prediction at the original resolution.
    c.PROTOCOL = "paper"
    # (both at least one CLIP patch: checked when the model is built, which knows the patch)
    number("PAPER_SIZE", 224)
    number("STANDARD_SHORT_SIDE", 336)
    # Sliding window (standard protocol): window side (0 = the whole image) and stride in pixels,
    # windows per forward.
    number("WINDOW_SIZE", 224, low=0, note="0 = the whole image")
    number("WINDOW_STRIDE", 112, low=1)
    number("WINDOW_BATCH", 8, low=1)
    # ---- Peer protocols (standard protocol only; docs/peer_protocols.md) ----
    # Keep-ratio resize cap: the longer side never exceeds it (mmseg's scale (2048, short side)).
    number("STANDARD_LONG_SIDE", 2048, low=1)
    # Windows not a multiple of the patch: zero-pad "end" (bottom/right), "even" (ClearCLIP), "none"
    c.WINDOW_PADDING = "end"
    # Pixels a window's sides are padded to a multiple of; 0 = the CLIP patch (ProxyCLIP: 56).
    number("WINDOW_MULTIPLE", 0, low=0, note="0 = the CLIP patch")
    # Pixels whose top class probability (softmax of scaled logits) is below it: background; 0 off.
    number("PROB_THD", 0.0, low=0, high=1, note="0 = off")
    # SCLIP: classes predicted on at most this fraction of non-background pixels dropped; 0 = off.
    number("AREA_THD", 0.0, low=0, high=1, note="0 = off")
    # REFINE "pamr": propagation steps and neighbour dilations of PAMR (NACLIP's defaults).
    number("PAMR_STEPS", 10, low=0)
    number("PAMR_DILATIONS", [8, 16], low=1)
    # "<head>/<benchmark>" a configs/<head>/published/ config reproduces (a benchmark it reported).
    c.PUBLISHED = ""
    # Text-embedding cache directory; "" = ~/.cache/cliptrase_d2, "none" disables the cache.
    c.TEXT_CACHE_DIR = ""
    # The test-time resize of Detectron2's predictor and mappers: 0 = none (a NoOpTransform), so
    # that the model makes its protocol's own frame from the whole image.
    cfg.INPUT.MIN_SIZE_TEST = 0
    # Write OUTPUT_DIR/predictions/<dataset>/<image_id>.png label maps during evaluation.
    cfg.TEST.SAVE_PREDICTIONS = False
    # Images per model call in evaluation (per process; same predictions, docs/EVALUATION.md).
    cfg.TEST.IMS_PER_BATCH = 1
    # ---- PEARL and TLP (docs/peer_protocols.md) ----
    # HEAD "pearl": weight of the centred key-key term in its attention logits (PEARL's alpha_kk).
    number("PEARL_KK_WEIGHT", 0.08, low=0)
    # REFINE "tlp": target side of the propagation grid (maps pooled by round(side / TLP_GRID)).
    number("TLP_GRID", 80, low=1)
    # ---- ProxyCLIP (HEAD "proxyclip", docs/methods.md) ----
    c.PROXYCLIP = CN()
    # Its vision foundation model: dino_vits16, dino_vitb16, dino_vitb8, dinov2_vits14_reg,
    # dinov2_vitb14_reg or sam_vit_b.
    c.PROXYCLIP.VFM = "dino_vitb8"
    # The VFM's checkpoint (its authors' release or timm's), or "online" (download it).
    c.PROXYCLIP.VFM_WEIGHTS = "online"

    # ---- Bounded work: an image over a limit is refused before any work; 0 = no limit ----
    # Pixels of the protocol's resized frame (paper: before the crop) and standard-protocol output.
    number("MAX_PIXELS", 50_000_000, low=0)
    # Sliding windows per image under the standard protocol (the defaults need at most 54).
    number("MAX_WINDOWS", 1024, low=0)


add_cliptrase_config(get_cfg())  # declares RANGES on import, for checks without a config


def _all_keys(node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _all_keys(value, name + ".")
        else:
            yield name


def _yaml_problem(error: "yaml.YAMLError") -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}: " if mark else ""
    return f"{where}{getattr(error, 'problem', None) or error}"


def check_config_file(config_file: str, chain=()) -> None:
    """Raises a named error when ``config_file`` or a ``_BASE_`` it names is missing, unreadable,
    not YAML, holds a Python tag (configs are data: they never run code), is not a mapping of
    config keys, or when the ``_BASE_`` chain comes back to a file (``chain``: the files before)."""
    if not os.path.isfile(config_file):
        missing = "is a folder, not a file" if os.path.isdir(config_file) else "does not exist"
        if chain:
            raise MissingFileError(
                f"config file {chain[-1]}: the file {config_file} it names (_BASE_) {missing}"
            )
        raise MissingFileError(
            f"config file {config_file} {missing}: check the path (configs/ holds the project's "
            "configs, e.g. configs/paper/voc21_224.yaml)"
        )
    if config_file.endswith(".py"):  # 'not valid YAML: fix the file' would mislead
        raise ConfigError(
            f"config file {config_file} is a Python LazyConfig: evaluate it with "
            "tools/lazyconfig_train_net.py, or give a YAML config (e.g. configs/paper/"
            "voc21_224.yaml)"
        )
    try:
        with open(config_file, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as error:
        raise ConfigError(
            f"config file {config_file} has a tag YAML configs may not have "
            f"({_yaml_problem(error)}): configs are data and never run code; write plain values"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"config file {config_file} is not valid YAML ({_yaml_problem(error)}): fix the file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ConfigError(f"cannot read config file {config_file}: {reason}") from None
    if not isinstance(loaded, dict):  # an empty file loads as None, which Detectron2 can't merge
        held = "nothing" if loaded is None else f"a {type(loaded).__name__}"
        raise ConfigError(
            f"config file {config_file} holds {held}, not config keys "
            "(KEY: value lines, as in configs/)"
        )
    base = loaded.get("_BASE_")
    if base is None or (isinstance(base, str) and base.startswith(("https://", "http://"))):
        return  # no base, or one Detectron2 fetches (and reads with the same safe loader)
    if not isinstance(base, str):
        raise ConfigError(f"config file {config_file}: _BASE_ must be a file name, got {base!r}")
    # relative to the file that names it, as Detectron2 resolves it
    path = os.path.join(os.path.dirname(config_file), os.path.expanduser(base))
    chain = chain + (config_file,)
    if os.path.realpath(path) in map(os.path.realpath, chain):
        raise ConfigError(
            f"config file {config_file}: _BASE_ {base} leads back to itself "
            f"({' -> '.join(chain + (path,))}): remove the _BASE_ line that closes the loop"
        )
    check_config_file(path, chain)


_KINDS = {bool: "True or False", int: "a whole number", float: "a decimal number", str: "text"}


def _merge(cfg, merge, source: str):
    try:
        merge()
    except ValueError as error:  # yacs: a value of another type than the key's default
        if "Type mismatch" not in str(error):
            raise
        key = str(error).rsplit("config key: ", 1)[-1]
        default = functools.reduce(getattr, key.split("."), cfg)
        if isinstance(default, CN):  # (yacs's message: a dump of it all)
            raise ConfigError(
                f"{source}: {key} is a group of keys, not a value: set its keys ({key}.<KEY>)"
            ) from None
        # "Type mismatch (<default's type> vs. <given type>) with values (<default> vs. <given>)"
        given = str(error).split(" with values (", 1)[-1].rsplit(")", 1)[0].split(" vs. ", 1)[-1]
        fix = ""
        if isinstance(default, float) and given.lstrip("-").isdigit():
            fix = f": write {given}.0"
        elif isinstance(default, tuple) and "vs. <class 'str'>)" in str(error):  # one name
            fix = f": write \"('{given}',)\"" if "," not in given else ""
        kind = _KINDS.get(type(default), f"a {type(default).__name__}")
        raise ConfigError(
            f"{source}: {key} takes {kind} (now {default!r}), not {given}{fix}"
        ) from None
    except (KeyError, AssertionError) as error:
        # yacs: KeyError from files, AssertionError from lists
        message = str(error).strip("'\"")
        if "Non-existent" not in message:
            raise
        unknown = message.split(":")[-1].strip()
        close = difflib.get_close_matches(unknown, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = (
            f" Did you mean {' or '.join(close)}?"
            if close
            else " See cliptrase_d2/config.py for the keys."
        )
        raise UnknownNameError(f"{source}: unknown config key {unknown!r}.{hint}") from None


def check_opts(opts) -> None:
    """Command-line options are KEY VALUE pairs (a script checks its user's before adding its
    own, so that the error names the user's last one)."""
    if len(opts) % 2:  # yacs: an AssertionError printing the whole list
        raise ConfigError(
            f"command-line options are KEY VALUE pairs, and {opts[-1]!r} (the last of "
            f"{len(opts)}) has no value: give it one, or remove it"
        )


def load_config(config_file: str = "", opts=(), resolve: bool = True) -> CN:
    """Detectron2 defaults + CLIPtrase keys + ``config_file`` (read as data, never as code) +
    ``opts``, every numeric key then checked against its Range; CUDA falls back to cpu (unless
    ``resolve=False``)."""
    cfg = get_cfg()
    add_cliptrase_config(cfg)
    opts = list(opts)
    if config_file:
        check_config_file(config_file)
        merge = functools.partial(cfg.merge_from_file, config_file, allow_unsafe=False)
        _merge(cfg, merge, f"config file {config_file}")
    check_opts(opts)
    if opts:
        _merge(cfg, lambda: cfg.merge_from_list(opts), "command-line options")
    for name, rule in RANGES.items():
        value = functools.reduce(getattr, name.split("."), cfg)
        rule.check(name, value, "command-line options" if name in opts[::2] else config_file)
    words, key = cfg.MODEL.CLIPTRASE.BACKGROUND_WORDS, "MODEL.CLIPTRASE.BACKGROUND_WORDS"
    where = f" in {'command-line options' if key in opts[::2] else config_file}"
    if not all(isinstance(word, str) for word in words):
        raise invalid_value(key, words, "a list of words, e.g. ['sky', 'wall']", where)
    if words and not cfg.MODEL.CLIPTRASE.VOCABULARY:  # the datasets' own would ignore them
        raise ConfigError(
            f"{key} {words!r}{where} extends a vocabulary of your own, and "
            "MODEL.CLIPTRASE.VOCABULARY is empty: set it (a benchmark key such as voc20, names "
            "or a file) or leave BACKGROUND_WORDS empty"
        )
    from detectron2.modeling import META_ARCH_REGISTRY

    from .modeling.meta_arch import CLIPtrase

    arch = cfg.MODEL.META_ARCHITECTURE  # build_model: a KeyError, or a model without vocabulary
    if arch not in META_ARCH_REGISTRY or not issubclass(META_ARCH_REGISTRY.get(arch), CLIPtrase):
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {arch!r} is not CLIPtrase (nor a subclass of it): set "
            "MODEL.META_ARCHITECTURE CLIPtrase, as configs/Base-CLIPtrase.yaml does"
        )
    check_images_per_batch(cfg.TEST.IMS_PER_BATCH)
    cfg.OUTPUT_DIR = os.path.expanduser(cfg.OUTPUT_DIR)  # a ~ the shell left: the home folder
    if resolve:
        resolve_device(cfg)
    return cfg


def check_images_per_batch(value, key: str = "TEST.IMS_PER_BATCH") -> None:
    """Raises ConfigError naming ``key`` unless ``value`` is a whole number of images >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(
            f"{key} must be a whole number of images per batch, at least 1, got {value!r}: "
            f"set {key} 1 (one image at a time) or more"
        )


def check_device(device: str, key: str = "MODEL.DEVICE") -> None:
    """Raises ConfigError naming ``key`` for a device this project cannot run on: anything but
    cpu, cuda, cuda:N (N below the number of GPUs, when there are GPUs) and mps (where present)."""
    hint = f"set {key} to cpu or cuda (cuda:N for GPU N)"
    try:  # (a number would be a GPU to torch, not to the checks here)
        parsed = torch.device(device if isinstance(device, str) else None)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={device!r} is not a device: {hint}") from None
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={device!r} is not supported: {hint}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and parsed.index is not None and count and parsed.index >= count:
        raise ConfigError(
            f"{key}={device!r} but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1}): "
            f"{hint}"
        )


def available_device(device: str, key: str = "MODEL.DEVICE") -> str:
    """``device`` checked (``check_device``), or ``cpu`` (one log line) when it asks for CUDA and
    none is present."""
    check_device(device, key)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("cliptrase_d2").info(
            "%s=%s but CUDA is not available: running on cpu", key, device
        )
        return "cpu"
    return device


def resolve_device(cfg) -> str:
    """Sets cfg.MODEL.DEVICE to its ``available_device``."""
    device = available_device(cfg.MODEL.DEVICE)
    if device != cfg.MODEL.DEVICE:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        if was_frozen:
            cfg.freeze()
    return device


def load_lazy_config(config_file: str, overrides=()):
    """A LazyConfig (a .py file defining ``model``, ``dataloader``, ``train``) with ``key=value``
    overrides, checked before anything is built (``check_lazy_config``); errors name the file or
    the override."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    if not config_file.endswith(".py"):
        raise InputError(
            f"--config-file {config_file}: a LazyConfig is a .py file (configs/lazy/); "
            "YAML configs run with tools/train_net.py"
        )
    if not os.path.isfile(config_file):
        raise MissingFileError(f"config file {config_file} does not exist")
    try:
        cfg = LazyConfig.load(config_file)
    except SyntaxError as error:
        raise ConfigError(
            f"config file {config_file} is not valid Python (line {error.lineno}: {error.msg})"
        ) from None
    except Exception as error:  # the file's own code failed: say where, not how we ran it
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(error.__traceback__)
            if os.path.realpath(frame.filename) == os.path.realpath(config_file)
        ]
        where = f", line {lines[-1]}" if lines else ""
        raise ConfigError(
            f"config file {config_file}{where} raised {type(error).__name__}: {error}; fix the file"
        ) from None
    for key in ("model", "dataloader", "train"):
        if key not in cfg:
            raise UnknownNameError(
                f"config file {config_file} defines no '{key}' (see configs/lazy/common.py)"
            )
    for item in overrides:  # one at a time, each error naming its override
        key, _, value = item.lstrip("+~").partition("=")
        node, parts = cfg, key.split(".")
        for depth, part in enumerate(parts):  # a new key would be ignored: only a function's
            if not OmegaConf.is_dict(node) or "_target_" in node:  # (check_lazy_config)
                break
            if part not in node:
                close = difflib.get_close_matches(part, [str(name) for name in node], n=1)
                hint = f"; did you mean {'.'.join(parts[:depth] + close[:1])}?" if close else ""
                raise UnknownNameError(
                    f"command-line override {item}: {config_file} has no "
                    f"{'.'.join(parts[: depth + 1])!r}{hint}"
                )
            node = OmegaConf.select(node, part, throw_on_resolution_failure=False)
        try:
            LazyConfig.apply_overrides(cfg, [item])
        except Exception as error:  # omegaconf's errors name the key but not where it came from
            sweep = "," in value and value[:1] not in "[{'\""  # Hydra's a,b: several runs
            quote = f"; quote a value holding commas: {key}='{value}'" if sweep else ""
            if type(error).__name__ == "OverrideParseException":  # Hydra's grammar: ~, $, ...
                quote = f"; quote the value: {key}='{value}'"
            message = str(error).strip("'\"").splitlines()[0]
            raise UnknownNameError(f"command-line override {item}: {message}{quote}") from None
    check_lazy_config(cfg, config_file, [item.split("=")[0] for item in overrides])
    if isinstance(cfg.train.get("output_dir"), str):  # a ~ the shell left: the home folder
        cfg.train.output_dir = os.path.expanduser(cfg.train.output_dir)
    return cfg


# LazyConfig keys outside ``model`` that are config keys with a Range (``model.<key>`` and its
# sub-nodes' keys are MODEL.CLIPTRASE.<KEY>)
_LAZY_KEYS = {"dataloader.test.num_workers": "DATALOADER.NUM_WORKERS"}


def check_lazy_config(cfg, source: str, overridden=()) -> None:
    """What building would refuse, refused now: a key the called function does not take, a
    numeric value outside its config key's Range, a dataset that is not registered, a settings
    dataclass's own refusal. ``source``: the config file; ``overridden``: the keys set on the
    command line."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.utils.registry import locate
    from omegaconf import OmegaConf

    from .data.datasets import require_registered

    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # an interpolation to a key that is not there
        raise ConfigError(f"config file {source}: {str(error).splitlines()[0]}") from None

    def given(key: str) -> str:  # where the value of ``key`` (or of a key under it) came from
        overrides = any(name == key or name.startswith(f"{key}.") for name in overridden)
        return "command-line overrides" if overrides else source

    def walk(node, path):
        target = node.get("_target_")
        target = locate(target) if isinstance(target, str) else target
        try:
            parameters = inspect.signature(target).parameters if target is not None else {}
        except (TypeError, ValueError):  # a builtin without a signature: nothing to compare
            parameters = {}
        if parameters:
            takes = {n for n, p in parameters.items() if p.kind != p.VAR_KEYWORD}
            if len(takes) == len(parameters):
                for key in sorted(set(node) - takes - {"_target_"}):
                    close = difflib.get_close_matches(key, takes, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    raise UnknownNameError(
                        f"{source}: {path}.{key} is not a setting of "
                        f"{getattr(target, '__name__', target)}{hint}"
                    )
        if target is get_detection_dataset_dicts:
            names = node.get("names")
            if not names:  # get_detection_dataset_dicts: an AssertionError or a TypeError
                raise ConfigError(
                    f"{given(path + '.names')}: {path}.names is {names!r}: name the dataset(s) "
                    f"to evaluate, e.g. {path}.names=cliptrase_voc21_val"
                )
            for name in [names] if isinstance(names, str) else names:
                try:
                    require_registered(name)
                except UnknownNameError as error:
                    raise UnknownNameError(f"{source}: {path}.names: {error}") from None
        for key, value in node.items():
            name = f"{path}.{key}"
            if isinstance(value, dict):
                walk(value, name)
                continue
            config_key = _LAZY_KEYS.get(name)
            if path.split(".")[0] == "model":
                config_key = f"MODEL.CLIPTRASE.{key.upper()}"
            if config_key in RANGES:
                RANGES[config_key].check(name, value, given(name))
        if dataclasses.is_dataclass(target) and not any(isinstance(v, dict) for v in node.values()):
            try:  # settings (RefinementSettings): their own checks, e.g. refine's choices
                target(**{key: value for key, value in node.items() if key != "_target_"})
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{given(path)}: {path}: {error}") from None

    for section, node in tree.items():
        if isinstance(node, dict):
            walk(node, section)
