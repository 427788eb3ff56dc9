"""Reads OpenAI's TorchScript CLIP archives as data, and finds code in weights pickles.

OpenAI distributes CLIP as TorchScript archives (a zip: <name>/data.pkl, <name>/data/<key>,
<name>/code/..., <name>/constants.pkl). ``torch.load(weights_only=True)`` refuses them, and the
only library reader, ``torch.jit.load``, compiles the archive's code and runs its scripted
``__setstate__`` methods: PyTorch treats TorchScript files as executable code, to be loaded from
trusted sources only. So data.pkl goes through torch's own weights-only unpickler (the one
``torch.load(weights_only=True)`` uses), with the archive's ``__torch__.*`` module classes
allowed as inert placeholders and TorchScript's list helpers as ``list``; every other global is
refused as in ``torch.load``. Storages are the raw bytes of data/<key>. Nothing in code/ is read.

    root = torchscript_root(archive)             # None for any other zip
    state_dict = read_torchscript(archive, root)  # {"visual.conv1.weight": tensor, ...}
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from typing import Any, Dict, List, Optional

import torch
from torch._weights_only_unpickler import Unpickler as WeightsOnlyUnpickler

__all__ = ["ArchiveError", "pickled_code", "read_torchscript", "torchscript_root"]

_MAX_PICKLE_BYTES = 256 * 2**20  # a data.pkl holds structure only (tens of KB for CLIP)
_MAX_MODULE_DEPTH = 64  # CLIP's module tree is 6 levels deep
# Globals a weights pickle may name (torch's tensor types and containers, TorchScript's module
# classes, which this reader makes inert); anything else is code.
_DATA_GLOBALS = (
    "torch.",
    "__torch__.",
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "_codecs.encode",
)
# TorchScript's typed-list helpers rebuild a list from a list; restore_type_tag returns its value.
_TORCHSCRIPT_HELPERS = [
    (list, f"torch.jit._pickle.{name}")
    for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
] + [(lambda value, _type: value, "torch.jit._pickle.restore_type_tag")]


class ArchiveError(ValueError):
    """The file cannot be read as weights: the message says why."""


class _ScriptObject:
    """Inert stand-in for a TorchScript object (a ``__torch__.*`` class): keeps its attributes."""

    attributes: Dict[Any, Any] = {}  # stays empty when the pickle has no BUILD for it

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def torchscript_root(archive: zipfile.ZipFile) -> Optional[str]:
    """The record prefix ('<name>/') of a TorchScript archive, or None for any other zip."""
    names = set(archive.namelist())
    for name in sorted(names):
        if name.endswith("constants.pkl") and name.count("/") <= 1:
            root = name[: -len("constants.pkl")]
            if root + "data.pkl" in names:
                return root
    return None


def read_torchscript(archive: zipfile.ZipFile, root: str) -> Dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive's module tree, as a state dict (dotted names).

    Every record read is checked against its stored CRC-32 by ``zipfile``.

    Raises:
        pickle.UnpicklingError: data.pkl names a global that is not data (pickled code).
        ArchiveError: a damaged or malformed archive.
    """
    storages: Dict[str, torch.UntypedStorage] = {}

    def persistent_load(pid: Any) -> torch.TypedStorage:
        # ('storage', storage type, key, location such as 'cuda:0' (ignored), numel)
        _, storage_type, key, _, numel = pid
        if key not in storages:
            raw = _read_stored(archive, f"{root}data/{key}")
            if len(raw) != numel * storage_type.dtype.itemsize:
                raise ArchiveError(
                    f"storage data/{key} has {len(raw)} bytes, "
                    f"expected {numel * storage_type.dtype.itemsize}"
                )
            storages[key] = (
                torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage()
                if raw  # frombuffer refuses an empty buffer
                else torch.UntypedStorage(0)
            )
        return torch.TypedStorage(
            wrap_storage=storages[key], dtype=storage_type.dtype, _internal=True
        )

    try:
        if root + "byteorder" in archive.namelist():
            order = archive.read(root + "byteorder").decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise ArchiveError(
                    f"it was written on a {order}-endian machine and this one is "
                    f"{sys.byteorder}-endian; convert it to .safetensors first"
                )
        data = _read_stored(archive, root + "data.pkl")
        script_classes = {name for name in _pickle_globals(data) if name.startswith("__torch__.")}
        allowed = _TORCHSCRIPT_HELPERS + [(_ScriptObject, name) for name in script_classes]
        unpickler = WeightsOnlyUnpickler(io.BytesIO(data), encoding="utf-8")
        unpickler.persistent_load = persistent_load
        with torch.serialization.safe_globals(allowed):
            module = unpickler.load()
        if not isinstance(module, _ScriptObject):
            raise ArchiveError("its data.pkl does not hold a TorchScript module")
        tensors: Dict[str, torch.Tensor] = {}
        _collect_tensors(module, "", tensors, seen=set())
        return tensors
    except (pickle.UnpicklingError, ArchiveError):
        raise
    except Exception as e:  # bad CRC, missing record, truncated pickle, a view outside its storage
        raise ArchiveError(f"{type(e).__name__}: {e}") from e


def _read_stored(archive: zipfile.ZipFile, name: str) -> bytes:
    """A record's bytes. PyTorch stores records uncompressed; a compressed one could inflate far
    beyond the file, so it is refused."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ArchiveError(f"record {info.filename} is compressed, which PyTorch never writes")
    return archive.read(info)


def _collect_tensors(
    obj: _ScriptObject, prefix: str, out: Dict[str, torch.Tensor], seen: set, depth: int = 0
) -> None:
    """Walks the module tree: tensors become 'a.b.c' entries, submodules are visited once each."""
    if depth > _MAX_MODULE_DEPTH:
        raise ArchiveError(f"its modules nest more than {_MAX_MODULE_DEPTH} levels deep")
    seen.add(id(obj))
    for name, value in obj.attributes.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject) and id(value) not in seen:
            _collect_tensors(value, f"{prefix}{name}.", out, seen, depth + 1)


def pickled_code(data: bytes) -> List[str]:
    """The globals other than torch's data types that a file's pickles import, read from the
    opcodes with pickletools (nothing is run): the pickles of a zip's *.pkl records, or the
    pickles at the start of a raw/legacy torch file."""
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            streams = [
                archive.read(info)
                for info in archive.infolist()
                if info.filename.endswith(".pkl") and info.file_size <= _MAX_PICKLE_BYTES
            ]
    else:
        streams = [data[:_MAX_PICKLE_BYTES]]
    names: List[str] = []
    for stream in streams:
        names += [name for name in _pickle_globals(stream) if not name.startswith(_DATA_GLOBALS)]
    return list(dict.fromkeys(names))


def _pickle_globals(data: bytes) -> List[str]:
    """'module.name' of every GLOBAL/STACK_GLOBAL/INST in the consecutive pickles of ``data``."""
    stream, names, strings = io.BytesIO(data), [], []
    try:
        while stream.tell() < len(data):
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(".".join(str(arg).split(" ", 1)))
                elif opcode.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "STACK_GLOBAL")
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError):  # the bytes after the pickles (storages), or garbage
        pass
    return names
