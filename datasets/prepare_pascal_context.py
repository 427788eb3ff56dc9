"""PASCAL Context val for PC59, PC60 and PC459: the 5,104 images of phase ``val`` in the PASCAL in
Detail annotations, which mmseg, SAN and CAT-Seg evaluate (VOC2010's val.txt lists one more,
without Detail annotations). From the extracted VOCtrainval_03-May-2010.tar, PASCAL in Detail's
``trainval_merged.json`` and PASCAL Context's ``trainval/<id>.mat`` (459 classes 1..459), it
writes ``VOCdevkit/VOC2010/pascalcontext_val.txt`` (the val ids, CAT-Seg's file) and, in
``VOCdevkit/VOC2010/annotations_detectron2/``:

    pc459_val/<id>.tif  16-bit: classes 0..458 (from the .mat files), void 65535
    pc59_val/<id>.png   classes 0..58, every other pixel 255
    pc60_val/<id>.png   classes 0..58, every other pixel 59

PC59 and PC60 come from the Detail segments painted in the file's order, as mmseg, SAN, CAT-Seg
and ODISE make them; ``--labels mat`` makes them from the .mat files, ``--from-pc59 DIR`` from
existing PC59 maps. datasets/README.md ('Ground-truth decisions', 'PASCAL Context') has the
details, and which val images are used without the Detail annotations.

    python datasets/prepare_pascal_context.py [--voc2010 path/to/VOCdevkit/VOC2010]
        [--detail-json path/to/trainval_merged.json] [--context path/to/trainval]
        [--labels detail|mat] [--from-pc59 DIR] [--root datasets]
"""

import json
import logging
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import scipy.io
from pycocotools import mask as mask_utils
from tqdm import tqdm

from prepare_common import (
    SPLITS,
    Summary,
    _text_lines,
    argument_parser,
    benchmark_classes,
    copy_file,
    parse_args,
    read_ids,
    read_input,
    read_label_png,
    remap,
    require,
    run,
    same_folder,
    write_atomic,
)

logger = logging.getLogger("prepare")

LAYOUT = Path("VOCdevkit/VOC2010")
LIST = Path(SPLITS["pascal_context"]["list"])  # the val ids, as CAT-Seg's pascalcontext_val.txt
VOC2010_SOURCE = (
    "VOCtrainval_03-May-2010.tar, http://host.robots.ox.ac.uk/pascal/VOC/voc2010/"
    "VOCtrainval_03-May-2010.tar (extract it under the root)"
)
CONTEXT_SOURCE = (
    "PASCAL Context's trainval.tar.gz, "
    "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz "
    "(extract it into VOCdevkit/VOC2010, or pass --context)"
)
DETAIL_SOURCE = (
    "the PASCAL in Detail annotations, "
    "https://codalabuser.blob.core.windows.net/public/trainval_merged.json "
    "(put it into VOCdevkit/VOC2010, or pass --detail-json)"
)
MAT_FAULTS = (scipy.io.matlab.MatReadError, NotImplementedError)  # not a .mat, or a MATLAB 7.3 one
PC59_ALIASES = {"diningtable": "table"}  # PC59 name -> PC459 name, where they differ
VOID_16BIT = 65535
VOID = 255
PC60_BACKGROUND = 59
read_pc59 = partial(read_label_png, values=[*range(59), VOID])  # --from-pc59 maps


def pc459_to_pc59() -> Dict[int, int]:
    """0-based PC459 class id -> PC59 class id, by name (PC59_ALIASES where the names differ)."""
    pc459 = benchmark_classes("pc459")
    pc59 = benchmark_classes("pc59")
    return {pc459.index(PC59_ALIASES.get(name, name)): id_59 for id_59, name in enumerate(pc59)}


def read_label_mat(path: Path) -> np.ndarray:
    """The ``LabelMap`` of a PASCAL Context ``.mat`` (1..459, 0 unlabelled)."""
    return scipy.io.loadmat(str(path))["LabelMap"]


def check_labels_txt(context_dir: Path) -> None:
    """Compares the archive's labels.txt (when present) with the PC459 vocabulary order."""
    for candidate in (context_dir / "labels.txt", context_dir.parent / "labels.txt"):
        if candidate.is_file():
            lines = read_input(
                candidate, "PASCAL Context's labels.txt", CONTEXT_SOURCE, _text_lines
            )
            names = [line.split(":", 1)[1].strip() for line in lines if ":" in line]
            expected = benchmark_classes("pc459")
            squash = [n.replace(" ", "").lower() for n in names]
            if squash != [n.replace(" ", "").lower() for n in expected]:
                raise ValueError(
                    f"{candidate} does not list the 459 classes of vocabularies.json "
                    f"in order (it lists {len(names)}); is it PASCAL Context's "
                    "labels.txt?"
                )
            return


class DetailAnnotations:
    """The val images of trainval_merged.json and their segments, decoded into label maps of
    1-based PC459 ids (0 where no segment is)."""

    def __init__(self, path: Path):
        logger.info("reading %s ...", path)
        self.path = path
        read_input(path, "PASCAL in Detail's trainval_merged.json", DETAIL_SOURCE, self._read)

    def _read(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        self.images = {
            Path(image["file_name"]).stem: image
            for image in data["images"]
            if image.get("phase") == "val"
        }
        val_ids = {image["image_id"] for image in self.images.values()}
        self.segments = defaultdict(list)
        for segment in data["annos_segmentation"]:
            if segment["image_id"] in val_ids:
                self.segments[segment["image_id"]].append(segment)

    def label_map(self, stem: str) -> np.ndarray:
        image = self.images[stem]
        height, width = image["height"], image["width"]
        labels = np.zeros((height, width), dtype=np.int64)
        for segment in self.segments[image["image_id"]]:
            labels[self.mask(segment, stem, height, width) > 0] = segment["category_id"]
        return labels

    def mask(self, segment: dict, stem: str, height: int, width: int) -> np.ndarray:
        """The (H, W) mask of one segment: compressed RLE, uncompressed RLE or polygons (COCO's
        three forms); ValueError naming the image for anything else."""
        shape = segment.get("segmentation")
        if (
            isinstance(shape, list)
            or isinstance(shape, dict)
            and isinstance(shape.get("counts"), list)
        ):
            shape = mask_utils.frPyObjects(shape, height, width)
            shape = mask_utils.merge(shape) if isinstance(shape, list) else shape
        elif not (isinstance(shape, dict) and "counts" in shape):
            raise ValueError(
                f"{self.path}: a segment of image {stem} has a 'segmentation' that is neither "
                f"RLE nor polygons ({str(shape)[:60]}); is it PASCAL in Detail's file?"
            )
        mask = mask_utils.decode(shape)
        if mask.shape[:2] != (height, width):  # an RLE of another size than its image
            raise ValueError(
                f"{self.path}: a segment of image {stem} is {mask.shape[1]} x {mask.shape[0]}, "
                f"the image {width} x {height}; is it PASCAL in Detail's file?"
            )
        return mask


def val_ids(source: Path, out: Path, detail, pc59_maps: Optional[Path]) -> Tuple[List[str], bool]:
    """The ids of the val images and whether they are the published split (the Detail val
    images, or a list or PC59 maps made from them) rather than VOC2010's val.txt."""
    if detail is not None:
        if not detail.images:
            raise ValueError(
                f"{detail.path} has no images of phase 'val'; is it PASCAL in Detail's "
                f"trainval_merged.json? (it comes from {DETAIL_SOURCE})"
            )
        return sorted(detail.images), True
    if pc59_maps is not None:
        maps = sorted(p.stem for p in pc59_maps.glob("*.png") if not p.name.startswith("."))
        if not maps:
            raise FileNotFoundError(f"no PC59 maps (*.png) in {pc59_maps} (--from-pc59)")
        return maps, True
    for catseg_list in (source / LIST.name, out / LIST.name):
        if catseg_list.is_file():
            logger.info("PASCAL Context val: the images listed in %s", catseg_list)
            return read_ids(catseg_list), True
    val_txt = require(source / "ImageSets/Main/val.txt", "VOC2010 val split", VOC2010_SOURCE)
    ids = read_ids(val_txt)
    logger.warning(
        "warning: the PASCAL Context val images are %s; without that file they are not known "
        "here, so the %d ids of %s are used (the dataset check reports the difference). For "
        "the published split give %s, or put CAT-Seg's pascalcontext_val.txt into %s.",
        SPLITS["pascal_context"]["what"],
        len(ids),
        val_txt,
        DETAIL_SOURCE,
        out,
    )
    return ids, False


def write_list(path: Path, ids: List[str]) -> bool:
    """Writes the val ids, one a line; keeps an existing list (a warning when it differs)."""
    listed = read_ids(path) if path.is_file() else ids
    if listed != ids:
        logger.warning(
            "warning: %s lists %d ids, this run's val images are %d: kept as it is (delete it "
            "and run the script again to replace it)",
            path,
            len(listed),
            len(ids),
        )
    return write_atomic(path, lambda tmp: tmp.write_text("".join(f"{i}\n" for i in ids)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(
        "Prepare PASCAL Context val for cliptrase_pc59/pc60/pc459_val.",
        {
            "--voc2010": "extracted VOC2010 folder (default: <root>/VOCdevkit/VOC2010)",
            "--context": "folder of PASCAL Context's 459-class <id>.mat files "
            "(default: <voc2010>/trainval)",
            "--detail-json": "PASCAL in Detail's trainval_merged.json "
            "(default: <voc2010>/trainval_merged.json)",
            "--from-pc59": "existing PC59 maps made from the Detail annotations (SAN's "
            "pcontext/val/label, CAT-Seg's pc59_val): copied as PC59, and PC60 derived from them",
        },
    )
    parser.add_argument(
        "--labels",
        choices=("detail", "mat"),
        default="detail",
        help="source of PC59 and PC60: the Detail annotations (default, as "
        "mmseg, SAN and CAT-Seg) or the .mat files",
    )
    args = parse_args(parser, argv)
    root = args.root
    out = root / LAYOUT
    source = args.voc2010 or out
    require(source, "VOC2010 folder", VOC2010_SOURCE, folder=True)
    images_dir = require(source / "JPEGImages", "VOC2010 images", VOC2010_SOURCE, folder=True)
    context_dir = args.context or source / "trainval"
    detail_json = args.detail_json or source / "trainval_merged.json"
    if args.context:  # given: it must be there (only the default places may lack them)
        require(context_dir, "PASCAL Context label folder (--context)", CONTEXT_SOURCE, folder=True)
    if args.detail_json:
        require(detail_json, "PASCAL in Detail annotations (--detail-json)", DETAIL_SOURCE)
    pc59_maps = None
    if args.from_pc59:
        pc59_maps = require(
            args.from_pc59, "PC59 maps", "SAN's or CAT-Seg's PASCAL Context script", folder=True
        )
    have_mat, have_detail = context_dir.is_dir(), detail_json.is_file()
    if not have_mat and (args.labels == "mat" or not have_detail) and pc59_maps is None:
        require(context_dir, "PASCAL Context label folder", CONTEXT_SOURCE, folder=True)
    if not have_mat:
        logger.warning(
            "warning: PASCAL Context label folder not found: %s (it comes from %s); "
            "PC459 is not written",
            context_dir,
            CONTEXT_SOURCE,
        )
    else:
        check_labels_txt(context_dir)
    pc59_source = "maps" if pc59_maps else args.labels
    if pc59_source == "detail" and not have_detail:
        logger.warning(
            "warning: %s not found (it comes from %s); PC59 and PC60 are not written. "
            "Pass --labels mat to make them from the .mat files instead (not what the "
            "published numbers used).",
            detail_json,
            DETAIL_SOURCE,
        )
        pc59_source = None
    use_detail = have_detail and pc59_source in ("detail", "mat")
    detail = DetailAnnotations(detail_json) if use_detail else None
    to_pc59 = pc459_to_pc59()
    detail_to_pc59 = {id_459 + 1: id_59 for id_459, id_59 in to_pc59.items()}
    copy_images = not same_folder(source, out)
    annotations = out / "annotations_detectron2"
    folders = {key: annotations / f"{key}_val" for key in ("pc459", "pc59", "pc60")}
    if not have_mat:
        del folders["pc459"]
    if pc59_source is None:
        del folders["pc59"], folders["pc60"]

    image_ids, published = val_ids(source, out, detail, pc59_maps)
    val_txt = source / "ImageSets/Main/val.txt"
    not_in_split = sorted(set(read_ids(val_txt)) - set(image_ids)) if val_txt.is_file() else []
    if published and not_in_split:
        logger.info(
            "%s lists %d images that are not PASCAL Context val images (%s): not prepared, as "
            "mmseg, SAN and CAT-Seg do not evaluate them",
            val_txt,
            len(not_in_split),
            ", ".join(not_in_split[:5]),
        )
    summary = Summary("PASCAL Context val", "pascal_context", len(image_ids))
    differing_pixels = differing_images = compared_pixels = 0
    if published:
        summary.write(write_list(root / LIST, image_ids))
    for image_id in tqdm(image_ids, desc=summary.name):
        image = images_dir / f"{image_id}.jpg"
        if not image.is_file():  # no label maps either: they would have no image
            summary.missing_file(image, "VOC2010 image", VOC2010_SOURCE)
            continue
        if copy_images:
            summary.write(copy_file(image, out / "JPEGImages" / f"{image_id}.jpg"))
        targets = {
            key: folder / f"{image_id}{'.tif' if key == 'pc459' else '.png'}"
            for key, folder in folders.items()
        }
        if all(path.exists() for path in targets.values()):
            continue
        pc459 = None
        if have_mat:
            mat = context_dir / f"{image_id}.mat"
            if mat.is_file():
                # 1..459, 0 unlabelled
                label_map = read_input(
                    mat, "a PASCAL Context label map", CONTEXT_SOURCE, read_label_mat, MAT_FAULTS
                ).astype(np.int64)
                pc459 = np.where(label_map > 0, label_map - 1, VOID_16BIT)
                summary.save(pc459, targets["pc459"], VOID_16BIT)
            else:
                summary.missing_file(mat, "PASCAL Context label map", CONTEXT_SOURCE)
        if pc59_source is None or (targets["pc59"].exists() and targets["pc60"].exists()):
            continue
        from_detail = None
        if detail is not None:
            from_detail = remap(detail.label_map(image_id), detail_to_pc59, default=VOID)
        from_mat = remap(pc459, to_pc59, default=VOID) if pc459 is not None else None
        if from_detail is not None and from_mat is not None:
            same_shape = from_detail.shape == from_mat.shape
            differing = int((from_detail != from_mat).sum()) if same_shape else from_detail.size
            differing_pixels += differing
            differing_images += int(differing > 0)
            compared_pixels += from_detail.size
        if pc59_source == "maps":
            pc59_file = pc59_maps / f"{image_id}.png"
            if not pc59_file.is_file():
                summary.missing_file(pc59_file, "PC59 map", "--from-pc59")
                continue
            pc59 = read_input(pc59_file, "a PC59 map", "--from-pc59", read_pc59)
        else:
            pc59 = from_detail if pc59_source == "detail" else from_mat
        if pc59 is None:
            continue
        summary.save(pc59, targets["pc59"], VOID)
        # PC60 as mmseg defines it (and SCLIP, ClearCLIP, NACLIP evaluate it): every pixel outside
        # the 59 classes is background, unlabelled ones included; nothing is ignored.
        summary.save(np.where(pc59 == VOID, PC60_BACKGROUND, pc59), targets["pc60"], -1)
    if compared_pixels:
        logger.info(
            "PC59 from %s and from the .mat files: %d of %d pixels differ (%.3f%%), in %d images",
            detail_json.name,
            differing_pixels,
            compared_pixels,
            100.0 * differing_pixels / compared_pixels,
            differing_images,
        )
    classes = {"pc459": 459, "pc59": 59, "pc60": 60}
    return summary.finish({folder: classes[key] for key, folder in folders.items()})


if __name__ == "__main__":
    run(main)
