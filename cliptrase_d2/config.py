"""Config keys of cliptrase-d2, declared once (Detectron2's add_<project>_config convention), and
``load_config``: Detectron2's defaults plus these keys, a file and overrides, with named errors."""

import difflib
import logging
import numbers
import os

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from .errors import ConfigError, MissingFileError, UnknownNameError

__all__ = [
    "add_cliptrase_config",
    "load_config",
    "resolve_device",
    "check_device",
    "check_images_per_batch",
]


def add_cliptrase_config(cfg):
    """Adds MODEL.CLIPTRASE.* and the project's TEST.* keys to a Detectron2 config, in place."""
    cfg.MODEL.CLIPTRASE = CN()
    c = cfg.MODEL.CLIPTRASE
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
    # Keep the paper's vocabulary quirks (SPEC 'Vocabulary quirks'); paper configs only.
    c.PAPER_VOCABULARY_QUIRKS = False
    # Extra background words for a user vocabulary, merged into one "background" class.
    c.BACKGROUND_WORDS = []
    # Prompt template set in vocabularies.json: "imagenet80" (paper) or "vild14".
    c.TEMPLATES = "imagenet80"
    # Multiply each class map by that class's image-level ([CLS]) logit (the paper does it for
    # VOC20).
    c.IMAGE_LOGIT_WEIGHTING = False
    # Logit scale applied to cosine similarities; 0 = CLIP's learned scale (100 for OpenAI weights).
    c.LOGIT_SCALE = 0.0
    # DBSCAN over rows of the suppressed self-correlation: radius (Euclidean) and core-point size.
    # 0 = automatic: scaled with the side g of the patch grid the model sees (paper: g = 14 ->
    # (0.7, 3), g = 21 -> (1.1, 7); linear in g between and beyond, eps >= 0.1, min_samples >= 2).
    c.DBSCAN_EPS = 0.0
    c.DBSCAN_MIN_SAMPLES = 0
    # Region refinement: "vote" (majority label per region, paper), "mean" (mean logits per
    # region, soft, used inside sliding windows), "none" (raw dense prediction), "tlp" (PEARL's
    # text-aware Laplacian propagation of each predicted frame, no regions) or "pamr" (none, then
    # PAMR on the resized logits, standard protocol; PAMR_STEPS below).
    c.REFINE = "vote"
    # Region maps: upsampling factor of the patch grid before the median filter, and filter size
    # (px).
    c.REGION_UPSAMPLE = 4
    c.MEDIAN_SIZE = 7
    # "paper": resize shorter side to PAPER_SIZE (bicubic), center crop PAPER_SIZE x PAPER_SIZE,
    # predict in that frame. "standard": shorter side STANDARD_SHORT_SIDE, sliding window,
    # prediction at the original resolution.
    c.PROTOCOL = "paper"
    c.PAPER_SIZE = 224
    c.STANDARD_SHORT_SIDE = 336
    # Sliding window (standard protocol): window side (0 = the whole image) and stride in pixels,
    # windows per forward.
    c.WINDOW_SIZE = 224
    c.WINDOW_STRIDE = 112
    c.WINDOW_BATCH = 8
    # ---- Peer protocols (standard protocol only; docs/peer_protocols.md) ----
    # Keep-ratio resize cap: the longer side never exceeds it (mmseg's scale (2048, short side)).
    c.STANDARD_LONG_SIDE = 2048
    # Windows not a multiple of the patch: zero-pad "end" (bottom/right), "even" (ClearCLIP), "none"
    c.WINDOW_PADDING = "end"
    # Pixels a window's sides are padded to a multiple of; 0 = the CLIP patch (ProxyCLIP: 56).
    c.WINDOW_MULTIPLE = 0
    # Pixels whose top class probability (softmax of scaled logits) is below it: background; 0 off.
    c.PROB_THD = 0.0
    # SCLIP: classes predicted on at most this fraction of non-background pixels dropped; 0 = off.
    c.AREA_THD = 0.0
    # REFINE "pamr": propagation steps and neighbour dilations of PAMR (NACLIP's defaults).
    c.PAMR_STEPS = 10
    c.PAMR_DILATIONS = [8, 16]
    # "<head>/<benchmark>" a configs/<head>/published/ config reproduces (a benchmark it reported).
    c.PUBLISHED = ""
    # Text-embedding cache directory; "" = ~/.cache/cliptrase_d2, "none" disables the cache.
    c.TEXT_CACHE_DIR = ""
    # Write OUTPUT_DIR/predictions/<dataset>/<image_id>.png label maps during evaluation.
    cfg.TEST.SAVE_PREDICTIONS = False
    # Images per model call in evaluation (per process; same predictions, docs/EVALUATION.md).
    cfg.TEST.IMS_PER_BATCH = 1
    # ---- PEARL and TLP (docs/peer_protocols.md) ----
    # HEAD "pearl": weight of the centred key-key term in its attention logits (PEARL's alpha_kk).
    c.PEARL_KK_WEIGHT = 0.08
    # REFINE "tlp": target side of the propagation grid (maps pooled by round(side / TLP_GRID)).
    c.TLP_GRID = 80
    # ---- ProxyCLIP (HEAD "proxyclip", docs/methods.md) ----
    c.PROXYCLIP = CN()
    # Its vision foundation model: dino_vits16, dino_vitb16, dino_vitb8, dinov2_vits14_reg,
    # dinov2_vitb14_reg or sam_vit_b.
    c.PROXYCLIP.VFM = "dino_vitb8"
    # The VFM's checkpoint (its authors' release or timm's), or "online" (download it).
    c.PROXYCLIP.VFM_WEIGHTS = "online"

    # ---- Bounded work: an image over a limit is refused before any work; 0 = no limit ----
    # Pixels of the protocol's resized frame (paper: before the crop) and standard-protocol output.
    c.MAX_PIXELS = 50_000_000
    # Sliding windows per image under the standard protocol (the defaults need at most 54).
    c.MAX_WINDOWS = 1024


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


def check_config_file(config_file: str) -> None:
    """Raises a named error when ``config_file`` is missing, unreadable, not YAML or not a
    mapping of config keys."""
    if not os.path.isfile(config_file):
        raise MissingFileError(
            f"config file {config_file} does not exist: check the path (configs/ holds the "
            "project's configs)"
        )
    try:
        with open(config_file, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.constructor.ConstructorError:
        return  # Python tags: Detectron2 reads those with its unsafe loader
    except yaml.YAMLError as error:
        raise ConfigError(
            f"config file {config_file} is not valid YAML ({_yaml_problem(error)}): fix the file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ConfigError(f"cannot read config file {config_file}: {reason}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {config_file} holds a {type(loaded).__name__}, not config keys "
            "(KEY: value lines, as in configs/)"
        )


def _merge(cfg, merge, source: str):
    try:
        merge()
    except yaml.YAMLError as error:  # a _BASE_ file
        raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(error)})") from None
    except FileNotFoundError as error:  # a _BASE_ file
        raise MissingFileError(
            f"{source}: the file {error.filename} it names (_BASE_) does not exist"
        ) from None
    except ValueError as error:  # yacs: a value of another type than the key's default
        if "Type mismatch" not in str(error):
            raise
        raise ConfigError(f"{source}: {error}") from None
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


def load_config(config_file: str = "", opts=(), resolve: bool = True) -> CN:
    """Detectron2 defaults + CLIPtrase keys + ``config_file`` + ``opts``; CUDA falls back to cpu
    (unless ``resolve=False``)."""
    cfg = get_cfg()
    add_cliptrase_config(cfg)
    if config_file:
        check_config_file(config_file)
        _merge(cfg, lambda: cfg.merge_from_file(config_file), f"config file {config_file}")
    if opts:
        _merge(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line options")
    check_images_per_batch(cfg.TEST.IMS_PER_BATCH)
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
    try:
        parsed = torch.device(device)
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


def resolve_device(cfg) -> str:
    """Checks cfg.MODEL.DEVICE (``check_device``); falls back to ``cpu`` (one log line) when it
    asks for CUDA and none is present."""
    check_device(cfg.MODEL.DEVICE)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("cliptrase_d2").info(
            "MODEL.DEVICE=%s but CUDA is not available: running on cpu", cfg.MODEL.DEVICE
        )
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg.MODEL.DEVICE
