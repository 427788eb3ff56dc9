"""Class names, background words and prompt templates: the benchmarks' (vocabularies.json) or
the user's own.

A vocabulary can be given as a benchmark key (``voc21``), a peer method's published list
(``sclip/voc21``), a comma-separated list (``"sky, dog, frisbee"``) or a text file with one
class per line. A class may have several names (``person, person in shirt``: a file line, or a
list in vocabularies.json); its score is the maximum over its names.
"""

import difflib
import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple, Union

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from .errors import InputError, MissingFileError

__all__ = [
    "Vocabulary",
    "load_vocabularies",
    "benchmark_keys",
    "peer_vocabulary_keys",
    "template_set",
    "resolve_vocabulary",
    "refuse_near_key",
    "vocabulary_of_dataset",
]

_VOCABULARY_FILE = os.path.join(os.path.dirname(__file__), "data", "vocabularies.json")

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def load_vocabularies() -> Dict:
    """The parsed vocabularies.json shipped with the package (benchmarks and template sets)."""
    with open(_VOCABULARY_FILE, encoding="utf-8") as f:
        return json.load(f)


def benchmark_keys() -> List[str]:
    return sorted(load_vocabularies()["benchmarks"])


@lru_cache(maxsize=1)
def _peer_entries() -> Dict[str, Dict]:
    """``<peer>/<benchmark>`` -> the class list the peer's released code uses on that benchmark
    (vocabularies.json, 'peer_vocabularies'; an entry "<peer>/<benchmark>" is that peer's list)."""
    peers = load_vocabularies()["peer_vocabularies"]
    entries = {
        f"{peer}/{key}": entry
        for peer, lists in peers.items()
        if not peer.startswith("_")
        for key, entry in lists.items()
    }
    return {key: entries[e] if isinstance(e, str) else e for key, e in entries.items()}


def peer_vocabulary_keys() -> List[str]:
    """``<peer>/<benchmark>`` of every class list a peer method published (vocabularies.json)."""
    return sorted(_peer_entries())


def template_set(name: str) -> Tuple[str, ...]:
    """Prompt templates by name: ``imagenet80`` (OpenAI's 80 ImageNet templates, as open_clip
    ships them; the paper's) or ``vild14`` (ViLD's 14, in vocabularies.json)."""
    templates = dict(load_vocabularies()["templates"])
    templates["imagenet80"] = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    if name not in templates:
        raise InputError(
            f"unknown template set {name!r} (MODEL.CLIPTRASE.TEMPLATES); "
            f"choose one of {sorted(templates)}"
        )
    return tuple(templates[name])


@dataclass(frozen=True)
class Vocabulary:
    """C class names plus B background words, all merged into one background class C.

    ``extra_names``: empty, or per class the names it has besides its class name (a class's
    score is the maximum over all its names, as the peer methods' multi-name class lists do).
    """

    classes: Tuple[str, ...]
    background: Tuple[str, ...] = field(default=())
    extra_names: Tuple[Tuple[str, ...], ...] = field(default=())

    def __post_init__(self):
        for key in ("classes", "background"):  # lists become tuples; a string is refused
            names, example = getattr(self, key), "a tuple of names, e.g. ('cat', 'dog')"
            if isinstance(names, str):
                raise TypeError(f"Vocabulary {key} must be {example}, got the string {names!r}")
            object.__setattr__(self, key, _strings(names, f"Vocabulary {key}", example))
        if self.extra_names and len(self.extra_names) != len(self.classes):
            raise InputError(
                f"extra_names has {len(self.extra_names)} entries for "
                f"{len(self.classes)} classes: give one tuple of names per class "
                "(empty for a single-name class)"
            )
        if not self.classes:
            raise InputError(
                "the vocabulary is empty: give at least one class name "
                "(a benchmark key, a comma-separated list or a file with one name per line)"
            )
        extra = tuple(name for names in self.extra_names for name in names)
        for kind, names in (
            ("class name", self.classes + extra),
            ("background word", self.background),
        ):
            for name in names:
                if not isinstance(name, str) or not name.strip():
                    raise InputError(f"empty {kind} in the vocabulary: {list(names)!r}")
                if not any(character.isalnum() for character in name):
                    raise InputError(
                        f"{kind} {name!r} has no letter or digit: CLIP cannot segment "
                        "punctuation or symbols; give words (e.g. 'cat, dog')"
                    )
                # Cc, and U+2028/U+2029: the web page's split (str.splitlines) breaks at them
                if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
                    raise InputError(
                        f"{kind} {name!r} has a line break, tab or other control character: "
                        "separate names by commas, e.g. 'cat, dog', or give a list"
                    )
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError(
                        f"{kind} {name!r} is not valid text (undecodable bytes, e.g. from a "
                        "terminal in another encoding): write it in UTF-8"
                    ) from None
        if self.background and "background" in map(_name_key, self.classes):
            raise InputError(
                "a class is named 'background' and background words are given too: the "
                "background words already form the output class 'background'; drop that "
                "class or rename it"
            )
        seen = {}
        for name in self.classes + extra + self.background:
            key = _name_key(name)
            if key in seen and not self._is_benchmark_quirk(name):
                raise InputError(
                    f"duplicate name {name!r} in the vocabulary (also given as {seen[key]!r}); "
                    "each class must appear once: remove or rename one of them"
                )
            seen[key] = name

    def _is_benchmark_quirk(self, name: str) -> bool:
        # The paper's VOC21 background list has 'bed' twice; benchmark vocabularies are kept as
        # published, also when the user adds background words after them.
        # The SCLIP/NACLIP COCO-Object lists have 'bed' as a class and as a background word.
        def published(entry):
            own = tuple(entry.get("background", ()))
            return (
                self.classes == _class_names(entry)[0]
                and self.background[: len(own)] == own
                and name in own
            )

        entries = list(load_vocabularies()["benchmarks"].values())
        return any(published(e) for e in entries + list(_peer_entries().values()))

    @property
    def num_classes(self) -> int:
        """Number of output classes: C, plus one when there are background words."""
        return len(self.classes) + (1 if self.background else 0)

    @property
    def class_names(self) -> List[str]:
        """Output class names (``background`` last when there are background words)."""
        return list(self.classes) + (["background"] if self.background else [])

    @property
    def text_rows(self) -> Tuple[str, ...]:
        """Names that get a text embedding: each class's names (class name first), then
        background words."""
        extra = self.extra_names or ((),) * len(self.classes)
        names = (n for name, more in zip(self.classes, extra) for n in (name,) + more)
        return tuple(names) + self.background

    @property
    def row_classes(self) -> Tuple[int, ...]:
        """The output class of each text row: its class index, C for the background words."""
        extra = self.extra_names or ((),) * len(self.classes)
        rows = tuple(index for index, names in enumerate(extra) for _ in range(1 + len(names)))
        return rows + (len(self.classes),) * len(self.background)

    @property
    def has_multiple_names(self) -> bool:
        """Whether some class has more than one name."""
        return any(self.extra_names)


def _class_names(entry: Dict) -> Tuple[Tuple[str, ...], Tuple[Tuple[str, ...], ...]]:
    """(class names, extra names) of a vocabularies.json entry or a file's lines: each class is a
    name or a list of names (first the class name); extra names are () when no class has any."""
    classes = [[item] if isinstance(item, str) else list(item) for item in entry["classes"]]
    extra = tuple(tuple(names[1:]) for names in classes)
    return tuple(names[0] for names in classes), extra if any(extra) else ()


def _without_quirks(names: Sequence[str]) -> Tuple[str, ...]:
    """The paper's vocabulary quirks fixed: names stripped, 'beachhill' split, duplicates
    dropped."""
    cleaned = []
    for name in names:
        for part in ["beach", "hill"] if name.strip() == "beachhill" else [name.strip()]:
            if part not in cleaned:
                cleaned.append(part)
    return tuple(cleaned)


def _with_background(
    classes: Sequence[str],
    own: Sequence[str],
    extra: Sequence[str],
    extra_names: Tuple[Tuple[str, ...], ...] = (),
) -> Vocabulary:
    """Classes with their own background words plus ``extra`` ones (those not already there)."""
    present = set(map(_name_key, own))
    words = tuple(own) + tuple(w for w in extra if _name_key(w) not in present)
    return Vocabulary(tuple(classes), words, extra_names)


def _name_key(name: str) -> str:
    """A name as it reads, for telling names apart: fullwidth and combined letters folded,
    invisible characters (a zero-width space, a BOM) dropped, surrounding spaces and case
    ignored."""
    name = unicodedata.normalize("NFKC", name)
    return "".join(c for c in name if unicodedata.category(c) != "Cf").strip().casefold()


def _key_form(text: str) -> str:
    """``text`` as a benchmark key would be typed: lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _read_names(path: str) -> Dict:
    """One class per line, its names separated by commas (first the class name); blank lines
    and lines starting with '#' skipped; UTF-8 (a BOM is fine). -> {"classes": name lists}."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as error:
        raise InputError(
            f"vocabulary file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
            "save it as UTF-8"
        ) from None
    classes = []
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#"):
            continue
        names = [name.strip() for name in line.split(",")]
        if not all(names):
            raise InputError(
                f"vocabulary file {path}, line {number}: empty name in {line!r}; "
                "separate a class's names by single commas, e.g. "
                "'person, person in shirt'"
            )
        classes.append(names)
    if not classes:
        raise InputError(f"vocabulary file {path} has no class names (one class per line)")
    return {"classes": classes}


def _strings(given, what: str, example: str) -> Tuple[str, ...]:
    """``given`` as a tuple of strings: a string is one item (never split into characters), a
    list or tuple must hold strings only; anything else is a TypeError naming ``what``."""
    if isinstance(given, str):
        return (given,)
    if not isinstance(given, (list, tuple)):
        raise TypeError(f"{what} must be {example}, got {type(given).__name__} {given!r}")
    for index, item in enumerate(given):
        if not isinstance(item, str):
            raise TypeError(
                f"{what} item {index} is {item!r} ({type(item).__name__}), not a string: give "
                f"{example}"
            )
    return tuple(given)


def resolve_vocabulary(
    spec,
    background: Union[str, Sequence[str]] = (),
    paper_quirks: bool = False,
    files: bool = True,
) -> Vocabulary:
    """A Vocabulary from a benchmark key, a comma-separated string, a file path, a list of names
    or a Vocabulary.

    ``background`` adds background words (a string is one word): to a user's names, and to the
    words a benchmark key or a Vocabulary already brings (VOC20 plus ``"sky"`` gets a background
    class). Names and words of another type than ``str`` are a TypeError. Benchmark keys
    are matched ignoring case and surrounding spaces; a single name that looks like a key
    (``voc-21``) is an error that suggests the key. Benchmark vocabularies come with the paper's
    quirks fixed (docs/method.md, 'Vocabulary quirks': VOC21's doubled 'bed' and 'beachhill',
    ADE150's 'bed ') unless ``paper_quirks`` asks for them byte for byte. ``files=False``: a
    file path is refused (the model's forward reads no file: specs are resolved before it).
    """
    background = _strings(background, "background", "a word or a list of words, e.g. ['sky']")
    if isinstance(spec, Vocabulary):
        if not background:
            return spec
        return _with_background(spec.classes, spec.background, background, spec.extra_names)
    if isinstance(spec, (list, tuple)):
        names = _strings(spec, "vocabulary", "class names, e.g. ['cat', 'dog']")
        entry = {"classes": [name.strip() for name in names]}
    elif isinstance(spec, str):
        entry = _entry_of_string(spec, paper_quirks, files)
    else:
        raise TypeError(
            f"vocabulary must be a string (a benchmark key, comma-separated names or a file), a "
            f"list of names or a Vocabulary, got {type(spec).__name__} {spec!r}"
        )
    classes, extra_names = _class_names(entry)
    vocabulary = _with_background(classes, entry.get("background", ()), background, extra_names)
    if vocabulary.num_classes == 1:  # never a benchmark's or a peer's
        logger.warning(
            "the vocabulary %r has a single class and no background words: every pixel gets "
            "that class. Give more class names (comma-separated) or background words.",
            spec,
        )
    return vocabulary


def _entry_of_string(spec: str, paper_quirks: bool, files: bool) -> Dict:
    """A string spec as a vocabularies.json entry: a peer's list, a benchmark's, a file's or
    comma-separated names."""
    benchmarks = load_vocabularies()["benchmarks"]
    key = spec.strip().lower()
    peer, slash, rest = key.partition("/")  # a peer's list, else a path or names
    peers = sorted({name.partition("/")[0] for name in _peer_entries()})
    near = difflib.get_close_matches(peer, peers, n=1) if re.fullmatch(r"\w+", rest) else []
    if slash and (peer in peers or near) and not os.path.exists(spec):
        if peer not in peers:  # '<word>/<key>' with no such file: a mistyped peer
            raise InputError(
                f"vocabulary {spec!r} is not a file and {peer!r} is not a peer method: did you "
                f"mean '{near[0]}/{rest}'? (peers: {', '.join(peers)})"
            )
        if key not in _peer_entries():
            raise InputError(
                f"no published vocabulary {key!r}: {peer}'s lists are "
                f"{', '.join(k for k in peer_vocabulary_keys() if k.startswith(peer + '/'))}"
            )
        return _peer_entries()[key]
    if key in benchmarks:
        entry = benchmarks[key]
        if paper_quirks:
            return entry
        words = entry.get("background", ())
        return {"classes": _without_quirks(entry["classes"]), "background": _without_quirks(words)}
    # said in the log: a one-word spec may be a file in the working directory
    if os.path.isfile(spec):
        if not files:
            raise InputError(
                f"vocabulary {spec!r} is a file: resolve it before the model's forward "
                "(cliptrase_d2.resolve_vocabulary(path), the API and the demo do) and pass the "
                "Vocabulary or its names"
            )
        entry = _read_names(spec)
        logger.info(
            "vocabulary: %d classes from the file %s", len(entry["classes"]), os.path.abspath(spec)
        )
        return entry
    if "," not in spec and (spec.endswith(".txt") or os.sep in spec):
        if os.path.isdir(spec):
            raise InputError(f"vocabulary {spec} is a folder: give a file, one class per line")
        raise MissingFileError(f"vocabulary file {spec} does not exist")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise InputError(
            f"vocabulary {spec!r} has no class names; give a benchmark key "
            f"({', '.join(sorted(benchmarks))}), a comma-separated list or a file"
        )
    refuse_near_key(spec, names)
    return {"classes": names}


def refuse_near_key(spec: str, names: Sequence[str]) -> None:
    """Refuses ``spec`` read as the single name ``names[0]`` when it looks like a benchmark key
    (``voc-21``, ``VOC 21``, ``voc21,``): the key was meant, not one class for every pixel."""
    if len(names) != 1:
        return
    benchmarks = load_vocabularies()["benchmarks"]
    near = [k for k in benchmarks if _key_form(k) == _key_form(names[0])]
    key = spec.strip().lower()
    near = near or difflib.get_close_matches(key, list(benchmarks), n=1, cutoff=0.8)
    if near:
        raise InputError(
            f"vocabulary {spec!r} is not a benchmark key: did you mean {near[0]!r}? "
            f"(keys: {', '.join(sorted(benchmarks))}). For one class of that name, "
            "pass it as a list"
        )


def vocabulary_of_dataset(name: str, paper_quirks: bool = False) -> Vocabulary:
    """The vocabulary a registered dataset is segmented with: its metadata's ``vocabulary`` (a
    benchmark key, names or a file, as this package's datasets have), else its ``stuff_classes``
    (any Detectron2 semantic-segmentation dataset)."""
    from .data.datasets import require_registered

    metadata = require_registered(name)
    spec = metadata.get("vocabulary", None) or metadata.get("stuff_classes", None)
    if not spec:
        raise InputError(
            f"dataset {name!r} has neither 'vocabulary' nor 'stuff_classes' in its metadata: "
            "set MODEL.CLIPTRASE.VOCABULARY, or register the dataset with its class names"
        )
    return resolve_vocabulary(spec, (), paper_quirks)
