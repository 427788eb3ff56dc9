"""The checks of CLIPtrase's settings, with the config keys named in their messages (the
method layer names none), and the mapping of MODEL.CLIPTRASE's keys to the method's settings."""

import dataclasses
import logging
import re
from typing import Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import log_first_n

from ..config import RANGES
from ..errors import ConfigError
from ..method.heads import Head, get_head
from ..method.peer_heads import PEARL_KEY_KEY_WEIGHT
from ..method.pipeline import RefinementSettings
from ..method.propagation import TLP_GRID
from ..method.sliding import PADDINGS
from ..vocabulary import Vocabulary, peer_vocabulary_keys

__all__ = [
    "PROTOCOLS",
    "check_dataset_classes",
    "check_published",
    "check_settings",
    "check_single_names",
    "configured_head",
    "head_refinement",
    "refinement_settings",
]

PROTOCOLS = ("paper", "standard")

# Head options (Head.options) -> their config keys and defaults
HEAD_OPTION_KEYS = {
    "key_key_weight": ("PEARL_KK_WEIGHT", PEARL_KEY_KEY_WEIGHT),
    "vfm": ("PROXYCLIP.VFM", None),
}


def refinement_settings(c, auto_eps: float, auto_min_samples: int) -> RefinementSettings:
    """MODEL.CLIPTRASE's refinement keys as RefinementSettings (0 = automatic DBSCAN settings;
    'pamr' runs no region refinement inside the windows); bad values named by their keys."""
    try:
        return RefinementSettings(
            refine="none" if c.REFINE == "pamr" else c.REFINE,
            dbscan_eps=c.DBSCAN_EPS if c.DBSCAN_EPS != 0 else auto_eps,
            dbscan_min_samples=c.DBSCAN_MIN_SAMPLES
            if c.DBSCAN_MIN_SAMPLES != 0
            else auto_min_samples,
            region_upsample=c.REGION_UPSAMPLE,
            median_size=c.MEDIAN_SIZE,
            image_logit_weighting=c.IMAGE_LOGIT_WEIGHTING,
            tlp_grid=c.TLP_GRID,
        )
    except ValueError as error:
        # each field is named as its config key, in lower case (as in the LazyConfigs)
        fields = "|".join(field.name for field in dataclasses.fields(RefinementSettings))
        message = re.sub(
            rf"\b({fields})\b", lambda field: f"MODEL.CLIPTRASE.{field[1].upper()}", str(error)
        )
        raise ConfigError(message.replace(", tlp", ", tlp, pamr")) from None


def head_refinement(head: str) -> Optional[str]:
    """The REFINE a head's authors run it with, as its configs/<head>/standard.yaml sets it:
    'tlp' for PEARL, 'none' for the other peers (no region refinement); None for CLIPtrase,
    whose refinement is the protocol's (the config's own)."""
    return None if head == "cliptrase" else "tlp" if head == "pearl" else "none"


def report_unused_settings(
    head: str, refinement: RefinementSettings, unused_options: Sequence[str] = ()
) -> None:
    """Says once per (head, refinement) which settings have no effect, instead of ignoring them
    silently. ``unused_options``: head options set but not taken by the head."""
    messages = [
        f"head {head!r}: MODEL.CLIPTRASE.{HEAD_OPTION_KEYS[option][0]} does not apply "
        "(the head has no such setting)"
        for option in unused_options
    ]
    if refinement.refine != "tlp" and refinement.tlp_grid != TLP_GRID:
        messages.append(
            f"MODEL.CLIPTRASE.REFINE {refinement.refine!r}: TLP_GRID does not apply (no TLP runs)"
        )
    if refinement.refine in ("none", "tlp"):
        messages.append(
            f"head {head!r} with MODEL.CLIPTRASE.REFINE {refinement.refine!r}: "
            "DBSCAN_EPS, DBSCAN_MIN_SAMPLES, MEDIAN_SIZE and REGION_UPSAMPLE do not apply (no "
            "clustering or region refinement runs)"
        )
    for message in messages:
        log_first_n(logging.WARNING, message, name=__name__, key="message")


def check_published(cfg) -> None:
    """MODEL.CLIPTRASE.PUBLISHED, when set: a benchmark the configured peer head reported."""
    published, head = cfg.MODEL.CLIPTRASE.PUBLISHED, cfg.MODEL.CLIPTRASE.HEAD
    reported = [key for key in peer_vocabulary_keys() if key.startswith(f"{head}/")]
    if published and published not in reported:
        raise ConfigError(
            f"MODEL.CLIPTRASE.PUBLISHED {published!r}: head {head!r} has no published "
            f"setting for that benchmark; its published settings are "
            f"{', '.join(reported) or 'none'} "
            "(configs/<head>/published/<benchmark>.yaml)"
        )


def check_settings(model, refinement: RefinementSettings, pearl_kk_weight: float) -> None:
    """Rejects a CLIPtrase's settings (its ``frame``, ``steps``, ``input_format``,
    ``window_batch``, ``window_padding``) out of their config keys' Range (config.RANGES, also
    checked when a config is loaded), below one CLIP patch, or that the protocol cannot honour,
    naming their keys."""
    frame, steps, input_format = model.frame, model.steps, model.input_format
    if frame.protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol {frame.protocol!r} (MODEL.CLIPTRASE.PROTOCOL); choose one of "
            f"{PROTOCOLS}"
        )
    if input_format not in ("RGB", "BGR"):
        raise ConfigError(f"INPUT.FORMAT must be RGB or BGR, got {input_format!r}")
    for key, value in (
        ("WINDOW_STRIDE", frame.stride),
        ("WINDOW_BATCH", model.window_batch),
        ("STANDARD_LONG_SIDE", frame.long_side),
        ("MAX_PIXELS", frame.max_pixels),
        ("MAX_WINDOWS", frame.max_windows),
        ("PROB_THD", steps.prob_thd),
        ("AREA_THD", steps.area_thd),
        ("PAMR_STEPS", steps.pamr_steps),
        ("PAMR_DILATIONS", list(steps.pamr_dilations)),
        ("PEARL_KK_WEIGHT", pearl_kk_weight),
    ):
        RANGES[f"MODEL.CLIPTRASE.{key}"].check(f"MODEL.CLIPTRASE.{key}", value)
    for key, value in (
        ("PAPER_SIZE", frame.paper_size),
        ("STANDARD_SHORT_SIDE", frame.short_side),
        ("WINDOW_SIZE", frame.window or frame.patch),  # 0: whole image
    ):
        if value < frame.patch:
            raise ConfigError(
                f"MODEL.CLIPTRASE.{key} must be at least {frame.patch}"
                f"{' (one CLIP patch)' if frame.patch > 1 else ''}, got {value}"
            )
    if frame.protocol == "standard" and 0 < frame.window < frame.stride:
        raise ConfigError(
            f"MODEL.CLIPTRASE.WINDOW_STRIDE {frame.stride} is larger than WINDOW_SIZE "
            f"{frame.window}: the pixels between windows would not be predicted; set it to at "
            f"most {frame.window}"
        )
    if model.window_padding not in PADDINGS:
        raise ConfigError(
            f"MODEL.CLIPTRASE.WINDOW_PADDING {model.window_padding!r}: choose one of "
            f"{', '.join(PADDINGS)}"
        )
    uses_peer_steps = steps.prob_thd > 0 or steps.area_thd > 0 or steps.pamr_steps > 0
    if frame.protocol == "paper" and uses_peer_steps:
        raise ConfigError(
            "MODEL.CLIPTRASE.PROB_THD, AREA_THD and REFINE 'pamr' apply to the "
            "standard protocol only: set MODEL.CLIPTRASE.PROTOCOL standard or "
            "turn them off"
        )
    if refinement.refine == "vote" and uses_peer_steps:
        raise ConfigError(
            "MODEL.CLIPTRASE.PROB_THD / AREA_THD need soft scores: use REFINE "
            "'mean', 'none' or 'pamr' instead of 'vote'"
        )


def configured_head(
    name: str, refinement: RefinementSettings, pearl_kk_weight: float, vfm=None
) -> Head:
    """The head ``name`` with the options it takes (``vfm``: ProxyCLIP's vision foundation
    model); the settings that have no effect with it (or with ``refinement``) are reported
    once."""
    try:
        head = get_head(name)
    except ValueError as error:
        raise ConfigError(f"MODEL.CLIPTRASE.HEAD: {error}") from None
    if name == "proxyclip" and refinement.refine in ("vote", "mean"):
        raise ConfigError(
            f"head 'proxyclip' has no CLIP-grid self-correlation for REFINE "
            f"{refinement.refine!r}: set MODEL.CLIPTRASE.REFINE none or pamr"
        )
    options = {"key_key_weight": pearl_kk_weight, "vfm": vfm}
    unused = [
        key
        for key, value in options.items()
        if key not in head.options and value != HEAD_OPTION_KEYS[key][1]
    ]
    report_unused_settings(name, refinement, unused)
    return head.configured(**{key: value for key, value in options.items() if key in head.options})


def check_single_names(vocabulary: Vocabulary, where: str) -> None:
    """Refuses classes with several names where ``where`` cannot merge them."""
    if vocabulary.has_multiple_names:
        raise ConfigError(
            "classes with several names are supported under the standard "
            f"protocol with REFINE 'mean', 'none' or 'pamr', not under {where}: "
            "give one name per class"
        )


def check_dataset_classes(vocabulary: Vocabulary, dataset: str) -> None:
    """MODEL.CLIPTRASE.VOCABULARY must give a dataset's own number of classes."""
    expected = len(MetadataCatalog.get(dataset).get("stuff_classes", None) or [])
    if expected and expected != vocabulary.num_classes:
        raise ConfigError(
            f"MODEL.CLIPTRASE.VOCABULARY has {vocabulary.num_classes} output classes but "
            f"dataset {dataset!r} has {expected}: leave VOCABULARY empty to use the "
            "dataset's own, or give one with the same classes"
        )
