"""Class names, background words and prompt templates: the benchmarks' (vocabularies.json) or
the user's own.

A vocabulary can be given as a benchmark key (``voc21``), a comma-separated list
(``"sky, dog, frisbee"``) or a text file with one name per line.
"""
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

__all__ = ["Vocabulary", "load_vocabularies", "benchmark_keys", "template_set", "resolve_vocabulary"]

_VOCABULARY_FILE = os.path.join(os.path.dirname(__file__), "data", "vocabularies.json")


@lru_cache(maxsize=1)
def load_vocabularies() -> Dict:
    """The parsed vocabularies.json shipped with the package (benchmarks and template sets)."""
    with open(_VOCABULARY_FILE, encoding="utf-8") as f:
        return json.load(f)


def benchmark_keys() -> List[str]:
    return sorted(load_vocabularies()["benchmarks"])


def template_set(name: str) -> Tuple[str, ...]:
    """Prompt templates by name (``imagenet80``, ``vild14``)."""
    templates = load_vocabularies()["templates"]
    if name not in templates:
        raise ValueError(f"unknown template set {name!r} (MODEL.CLIPTRASE.TEMPLATES); "
                         f"choose one of {sorted(templates)}")
    return tuple(templates[name])


@dataclass(frozen=True)
class Vocabulary:
    """C class names plus B background words, all merged into one background class C."""

    classes: Tuple[str, ...]
    background: Tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.classes:
            raise ValueError("the vocabulary is empty: give at least one class name "
                             "(a benchmark key, a comma-separated list or a file with one name per line)")
        for kind, names in (("class name", self.classes), ("background word", self.background)):
            for name in names:
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"empty {kind} in the vocabulary: {list(names)!r}")
        seen = {}
        for name in self.classes + self.background:
            key = name.strip().lower()
            if key in seen and not self._is_benchmark_quirk(name):
                raise ValueError(f"duplicate name {name!r} in the vocabulary (also given as {seen[key]!r}); "
                                 "each class must appear once: remove or rename one of them")
            seen[key] = name

    def _is_benchmark_quirk(self, name: str) -> bool:
        # The paper's VOC21 background list has 'bed' twice; benchmark vocabularies are kept as published.
        return any(self.classes == tuple(b["classes"]) and self.background == tuple(b.get("background", ()))
                   for b in load_vocabularies()["benchmarks"].values())

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
        """Names that get a text embedding: classes then background words."""
        return self.classes + self.background


def _split_names(text: str) -> List[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _without_quirks(names: Sequence[str]) -> Tuple[str, ...]:
    """The paper's vocabulary quirks fixed: names stripped, 'beachhill' split, duplicates dropped."""
    cleaned = []
    for name in names:
        for part in (["beach", "hill"] if name.strip() == "beachhill" else [name.strip()]):
            if part not in cleaned:
                cleaned.append(part)
    return tuple(cleaned)


def resolve_vocabulary(spec, background: Sequence[str] = (), paper_quirks: bool = False) -> Vocabulary:
    """A Vocabulary from a benchmark key, a comma-separated string, a file path or a list of names.

    ``background`` adds background words to a user vocabulary (ignored for a benchmark key,
    which brings its own). Benchmark vocabularies come with the paper's quirks fixed (SPEC
    'Vocabulary quirks': VOC21's doubled 'bed' and 'beachhill', ADE150's 'bed ') unless
    ``paper_quirks`` asks for them byte for byte.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, (list, tuple)):
        return Vocabulary(tuple(str(n).strip() for n in spec), tuple(background))
    if not isinstance(spec, str):
        raise TypeError(f"vocabulary must be a string or a list of names, got {type(spec).__name__}")
    benchmarks = load_vocabularies()["benchmarks"]
    if spec in benchmarks:
        entry = benchmarks[spec]
        classes, words = tuple(entry["classes"]), tuple(entry.get("background", ()))
        if not paper_quirks:
            classes, words = _without_quirks(classes), _without_quirks(words)
        return Vocabulary(classes, words)
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        if not names:
            raise ValueError(f"vocabulary file {spec} has no class names (one name per line)")
        return Vocabulary(tuple(names), tuple(background))
    if "," not in spec and (spec.endswith(".txt") or os.sep in spec):
        raise FileNotFoundError(f"vocabulary file {spec} does not exist")
    names = _split_names(spec)
    if not names:
        raise ValueError(f"vocabulary {spec!r} has no class names; give a benchmark key "
                         f"({', '.join(sorted(benchmarks))}), a comma-separated list or a file")
    return Vocabulary(tuple(names), tuple(background))
