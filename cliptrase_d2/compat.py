"""Lets detectron2 0.6 run on today's Pillow, NumPy and a build without its C++ ops.

Imported first by the package. Each shim only fills in what the installed detectron2 needs and
its environment lacks; with a current official detectron2 (main: a compiled ``detectron2._C``,
no removed Pillow or NumPy names) nothing is patched. docs/detectron2_versions.md lists them.
"""

import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Optional

import numpy as np
from PIL import Image

# The NumPy aliases of builtins that NumPy 1.24 removed and detectron2 0.6 still uses.
NUMPY_ALIASES = (("int", int), ("float", float), ("bool", bool), ("str", str))


def _detectron2_source(relative_path: str) -> Optional[str]:
    """The text of one of detectron2's modules, read without importing it; None when absent."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def uses_removed_names(transform_source: Optional[str]) -> bool:
    """Whether a detectron2 still names what Pillow 10 and NumPy 1.24 removed, told by its
    ``data/transforms/transform.py``: its ``Image.LINEAR`` default (needed at import) was the
    last of those uses to go (July 2023, after ``np.int``, ``np.float``, ``np.bool``,
    ``np.str``)."""
    return transform_source is not None and "Image.LINEAR" in transform_source


class _MissingCppOps(types.ModuleType):
    """Stands in for detectron2._C when detectron2 was installed without its C++/CUDA extension.

    The three functions detectron2's environment report calls answer that the ops are absent;
    any other attribute (an op) raises an ImportError that says what to install.
    """

    @staticmethod
    def get_compiler_version():
        return "not built (detectron2 installed without its C++ ops)"

    @staticmethod
    def get_cuda_version():
        return "not built (detectron2 installed without its C++ ops)"

    @staticmethod
    def has_cuda():
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"detectron2._C.{name} is not available: this detectron2 was installed without its "
            "compiled C++/CUDA ops (the pb1-detectron2 sdist used on CPU machines). CLIPtrase does "
            "not need them; if your own code does, install the official detectron2 build "
            "(see README, 'GPU users: the official detectron2')."
        )


if uses_removed_names(_detectron2_source(os.path.join("data", "transforms", "transform.py"))):
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
    for alias, builtin in NUMPY_ALIASES:
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
# (find_spec answers from sys.modules for a module already imported, the stub included)
if importlib.util.find_spec("detectron2._C") is None:
    _stub = _MissingCppOps("detectron2._C")
    _stub.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    sys.modules["detectron2._C"] = _stub
