"""Lets detectron2 0.6 run on today's Pillow, NumPy and a build without its C++ ops.

Imported first by the package. Each shim only fills in what is missing, so a current official
detectron2 build (with a compiled ``detectron2._C``) and old library versions are left untouched.
"""
import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
from PIL import Image

# Pillow 10 removed Image.LINEAR (detectron2 0.6's ResizeTransform default uses it).
if not hasattr(Image, "LINEAR"):
    Image.LINEAR = Image.BILINEAR

# NumPy 1.24 removed these aliases of the builtins; detectron2 0.6 still uses np.int, np.float, np.bool.
for _alias, _builtin in (("int", int), ("float", float), ("bool", bool), ("object", object), ("str", str)):
    if _alias not in np.__dict__:
        setattr(np, _alias, _builtin)


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


def _install_cpp_stub():
    if "detectron2._C" in sys.modules:
        return
    try:
        has_ops = importlib.util.find_spec("detectron2._C") is not None
    except ImportError:  # detectron2 itself missing: nothing to patch, the real import error comes later
        return
    if not has_ops:
        stub = _MissingCppOps("detectron2._C")
        stub.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
        sys.modules["detectron2._C"] = stub


_install_cpp_stub()
