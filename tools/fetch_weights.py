#!/usr/bin/env python
"""Downloads OpenAI's CLIP weights (the TorchScript archive of OpenAI's CLIP release) and checks
them.

    python tools/fetch_weights.py                              # weights/ViT-B-16.pt
    python tools/fetch_weights.py --model ViT-B-16 --dest weights/
    python tools/fetch_weights.py --model ViT-L-14 --dest /data/clip/ViT-L-14.pt

Then point the config at the file: MODEL.WEIGHTS weights/ViT-B-16.pt (see weights/README.md).
The URL comes from open_clip's registry of OpenAI weights; OpenAI publishes each file's sha256
as the second-to-last segment of its URL, and the download is checked against it. The file is
written to a temporary name beside the destination and renamed only once its sha256 matches, so
an interrupted (Ctrl-C, kill) or corrupted download never leaves a file under the final name. A
destination folder that cannot be created or written is a one-line error. A destination that
already holds the right file is left alone; one that holds anything else is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

from tqdm import tqdm

logger = logging.getLogger("fetch_weights")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_DEST = REPO / "weights"
CHUNK_BYTES = 1 << 20


class FetchError(RuntimeError):
    """A download that cannot be done or verified; the message says what to do instead."""


def openai_archive(model: str) -> Tuple[str, str]:
    """(url, sha256) of OpenAI's archive for an open_clip model name such as "ViT-B-16".

    Raises:
        FetchError: the model has no OpenAI weights (the message lists the models that do).
    """
    import open_clip

    name = model.replace("/", "-")  # OpenAI spells it "ViT-B/16"
    if name.endswith("-quickgelu"):
        name = name[: -len("-quickgelu")]
    url = open_clip.get_pretrained_url(name, "openai")
    sha256 = url.rstrip("/").split("/")[-2] if url else ""
    if "openaipublic" not in url or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        models = sorted(
            m for m in open_clip.list_pretrained_models_by_tag("openai") if "quickgelu" not in m
        )
        raise FetchError(f"No OpenAI archive for model {model!r}; OpenAI released: {models}.")
    return url, sha256


def download_verified(
    url: str, dest: Path, sha256: str, *, timeout: float = 60.0, progress: bool = True
) -> Path:
    """Downloads ``url`` (any URL urllib opens: https://, file://) to ``dest``, unless ``dest``
    already has content with this hex ``sha256``; returns ``dest``.

    The bytes go to a temporary file in ``dest``'s folder, hashed on the way, and are renamed to
    ``dest`` (atomically) only when the hash matches; on any failure the temporary file is removed.

    Raises:
        FetchError: ``dest`` exists with other content (it is kept), the URL cannot be read
            (offline?), or the downloaded bytes do not have the expected sha256 (nothing is kept).
    """
    dest = Path(dest)
    expected = sha256.lower()
    if dest.exists():
        if not dest.is_file():
            raise FetchError(f"{dest} exists and is not a file; choose another --dest.")
        try:
            with open(dest, "rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise FetchError(
                f"Cannot read the existing {dest} ({e.strerror or e}); choose another "
                "--dest or fix its permissions."
            ) from e
        if actual == expected:
            logger.info("%s is already present and its sha256 matches; nothing to do.", dest)
            return dest
        raise FetchError(
            f"{dest} already exists but its sha256 is {actual}, not {expected} (an interrupted "
            "download or another file). It was left untouched: delete it and run again."
        )
    fd, tmp = _temporary_beside(dest)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(
                        total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                    ) as bar:
                        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                            try:
                                out.write(chunk)
                            except OSError as e:  # the disk, not the network
                                raise FetchError(
                                    f"Could not write {tmp}: {e.strerror}. Free some space in "
                                    f"{dest.parent} or choose another --dest."
                                ) from e
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                raise FetchError(
                    f"Could not download {url}: {reason}. Are you offline? Download the file on a "
                    f"machine with internet and copy it to {dest} (expected sha256 {expected})."
                ) from e
        actual = digest.hexdigest()
        if actual != expected:
            raise FetchError(
                f"The file downloaded from {url} has sha256 {actual}, not {expected}: it is "
                "corrupt or not the published file, and was discarded. Try again later."
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are not secret
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    logger.info("Saved %s (sha256 %s).", dest, expected)
    return dest


def _temporary_beside(dest: Path) -> Tuple[int, Path]:
    """(open descriptor, path) of a new hidden ``.part`` file in ``dest``'s folder, which is
    created if missing; a folder that cannot be created or written is a FetchError."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:  # a file where a folder should be, no permission, read-only disk
        reason = f"{e.filename or dest.parent}: {e.strerror or e}"
        if e.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir met a file: name it, not 'File exists'
            reason = (
                f"{next(p for p in dest.parents if p.exists())} is an existing file, not a folder"
            )
        raise FetchError(
            f"Cannot write into the folder {dest.parent} ({reason}); --dest names a folder (or a "
            "new .pt file in one): choose another folder for --dest."
        ) from e
    return fd, Path(name)


def _destination(dest: str, url: str) -> Path:
    """A folder (existing, given with a trailing slash, or without a file suffix) receives the
    URL's file name. ``dest`` is the text as given: Path() would drop the trailing slash. A
    leading ``~`` the shell left (quoted, ``--dest=~/...``) is the home folder."""
    path = Path(dest).expanduser()
    if path.is_dir() or dest.endswith(("/", os.sep)) or not path.suffix:
        return path / os.path.basename(url)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="open_clip model name with OpenAI weights (default: %(default)s)",
    )
    parser.add_argument(
        "--dest",
        default=str(DEFAULT_DEST),
        help="folder (gets the archive's own name, e.g. ViT-B-16.pt) or file path "
        "(default: the repository's weights/ folder)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[fetch_weights] %(message)s")
    # A kill (SIGTERM) unwinds like Ctrl-C, so the partial download is removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        url, sha256 = openai_archive(args.model)
        path = download_verified(
            url, _destination(args.dest, url), sha256, progress=not args.no_progress
        )
    except FetchError as e:
        logger.error("%s", e)
        return 1
    logger.info("Use it with: MODEL.CLIPTRASE.CLIP_MODEL %s MODEL.WEIGHTS %s", args.model, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
