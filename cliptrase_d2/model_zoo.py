"""The project's configs by name, from a source checkout or an installed package (as
``detectron2.model_zoo.get_config_file`` does for Detectron2's).

``pip install .`` copies ``configs/`` into the package as ``cliptrase_d2/configs``; in a source
checkout (or an editable install) they are read where they are.
"""

from pathlib import Path

from .errors import MissingFileError

__all__ = ["get_config_file", "config_root"]


def config_root() -> Path:
    """The folder holding the project's configs: the installed copy, else the checkout's."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def get_config_file(name: str) -> str:
    """Absolute path of a project config, e.g. ``"paper/voc21_224.yaml"`` (a leading
    ``configs/`` is accepted too, so the paths in the docs work as names)."""
    relative = Path(name)
    if relative.parts and relative.parts[0] == "configs":
        relative = Path(*relative.parts[1:])
    path = config_root() / relative
    if relative.is_absolute() or ".." in relative.parts or not path.is_file():
        raise MissingFileError(
            f"no project config named {name!r} under {config_root()}: give a path relative to "
            "configs/, such as 'paper/voc21_224.yaml' or 'standard/Base-standard.yaml'"
        )
    return str(path)
