"""Reads OpenAI's TorchScript CLIP archives as data, and finds code in weights pickles.

OpenAI distributes CLIP as TorchScript archives (a zip: <name>/data.pkl, <name>/data/<key>,
<name>/code/..., <name>/constants.pkl). ``torch.load(weights_only=True)`` refuses them, and the
only library reader, ``torch.jit.load``, compiles the archive's code and runs its scripted
``__setstate__`` methods: PyTorch treats TorchScript files as executable code, to be loaded from
trusted sources only. So this module reads the zip records itself: data.pkl goes through a
``pickle.Unpickler`` whose ``find_class`` (every callable a pickle uses comes from it) returns
inert placeholders for the few names such an archive uses and refuses every other global, so no
pickled code can run; tensor storages are the raw bytes of data/<key> (their sizes checked),
and tensors are views on them made by the function torch's own weights-only unpickler uses.
Nothing in code/ is read.

    root = torchscript_root(archive)             # None for any other zip
    state_dict = read_torchscript(archive, root)  # {"visual.conv1.weight": tensor, ...}
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["ArchiveError", "pickled_code", "read_torchscript", "torchscript_root"]

_MAX_PICKLE_BYTES = 256 * 2**20  # a data.pkl holds structure only (tens of KB for CLIP)
_MAX_MODULE_DEPTH = 64  # CLIP's module tree is 6 levels deep
# Globals a weights pickle may name (torch's tensor types and containers); anything else is code.
_DATA_GLOBALS = (
    "torch.",
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "_codecs.encode",
)
_STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# TorchScript's typed-list helpers: they only rebuild a list from a list.
_LIST_BUILDERS = frozenset(
    {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}
)


class ArchiveError(ValueError):
    """The file cannot be read as weights: the message says why; ``code`` names the pickled
    code found in it (then it was refused, not damaged)."""

    def __init__(self, detail: str, code: Sequence[str] = ()):
        super().__init__(detail)
        self.code = list(code)


class _ScriptObject:
    """Inert stand-in for a TorchScript object (a ``__torch__.*`` class): records its attributes."""

    def __init__(self, *_args: Any) -> None:
        self.attributes: Dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _restore_type_tag(value: Any, _type_str: Any) -> Any:
    return value


class _RefusedGlobal(pickle.UnpicklingError):
    """A global outside the archive format's inert names: the pickle carries code."""


class _RestrictedTorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl into inert objects and tensors; any other global is an
    error. Tensors are rebuilt by torch's ``_rebuild_tensor_v2``, which torch's weights-only
    unpickler allows as well (it refuses any view that does not fit its storage), on storages
    read from the archive's data/<key> records."""

    def __init__(self, archive: zipfile.ZipFile, root: str):
        info = archive.getinfo(root + "data.pkl")
        _check_stored(info)
        if info.file_size > _MAX_PICKLE_BYTES:
            raise ArchiveError(f"its data.pkl is {info.file_size} bytes, far too large")
        super().__init__(archive.open(info), encoding="utf-8")
        self.archive, self.root = archive, root
        self.storages: Dict[str, torch.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return torch._utils._rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> torch.TypedStorage:
        # ('storage', dtype from find_class, key, location such as 'cuda:0' (ignored), numel)
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], torch.dtype)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.root}data/{key}")
            _check_stored(info)
            if info.file_size != numel * dtype.itemsize:
                raise ArchiveError(
                    f"storage data/{key} has {info.file_size} bytes, "
                    f"expected {numel * dtype.itemsize}"
                )
            raw = bytearray(self.archive.read(info))  # CRC-checked by zipfile
            data = (
                torch.frombuffer(raw, dtype=torch.uint8)
                if raw
                else torch.empty(0, dtype=torch.uint8)
            )
            self.storages[key] = torch.TypedStorage(
                wrap_storage=data.untyped_storage(), dtype=dtype, _internal=True
            )
        return self.storages[key]


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
        ArchiveError: a damaged or malformed archive, or one whose pickle imports code.
    """
    try:
        if root + "byteorder" in archive.namelist():
            order = archive.read(root + "byteorder").decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise ArchiveError(
                    f"it was written on a {order}-endian machine and this one is "
                    f"{sys.byteorder}-endian; convert it to .safetensors first"
                )
        try:
            module = _RestrictedTorchScriptUnpickler(archive, root).load()
        except _RefusedGlobal as e:
            raise ArchiveError("its data.pkl imports code", code=[str(e)]) from e
        except (ArchiveError, zipfile.BadZipFile, KeyError):
            raise
        except Exception as e:  # truncated pickle, wrong opcodes, a view outside its storage
            raise ArchiveError(f"data.pkl: {type(e).__name__}: {e}") from e
        if not isinstance(module, _ScriptObject):
            raise ArchiveError("its data.pkl does not hold a TorchScript module")
        tensors: Dict[str, torch.Tensor] = {}
        _collect_tensors(module, "", tensors, seen=set())
        return tensors
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:  # bad CRC, missing record
        raise ArchiveError(f"{type(e).__name__}: {e}") from e


def _check_stored(info: zipfile.ZipInfo) -> None:
    """PyTorch stores records uncompressed; a compressed one could inflate far beyond the file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise ArchiveError(f"record {info.filename} is compressed, which PyTorch never writes")


def _collect_tensors(
    obj: _ScriptObject, prefix: str, out: Dict[str, torch.Tensor], seen: set, depth: int = 0
) -> None:
    """Walks the module tree: tensors become 'a.b.c' entries, submodules are visited once each."""
    if depth > _MAX_MODULE_DEPTH:
        raise ArchiveError(f"its modules nest more than {_MAX_MODULE_DEPTH} levels deep")
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():  # unset when the pickle had no BUILD
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
