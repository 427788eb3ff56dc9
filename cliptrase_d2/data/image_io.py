"""Reading images for CLIP: any PIL-readable file as 8-bit RGB, with errors that name the file."""

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import InputError, MissingFileError

__all__ = ["to_rgb", "read_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16/32-bit images to 8-bit
    RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        array = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_rgb(path: str, exif_orientation: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file, with its EXIF orientation applied unless
    ``exif_orientation=False`` (evaluation: label maps are aligned with the stored pixels).

    The size in the file's header is checked before any pixel is decoded: a file of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb limit, 89,478,485 by
    default; set it to change the limit, None for none) is an InputError, as is anything Pillow
    cannot read as an image."""
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise InputError(
                    f"image {path} is {width}x{height} = {width * height} pixels by its header, "
                    f"over the {limit} pixels an image may have to be decoded. {_LIMIT_HINT}"
                )
            image.load()
            if exif_orientation:
                image = ImageOps.exif_transpose(image)
            return np.asarray(to_rgb(image))
    except InputError:  # the size refused above, not a file Pillow cannot read
        raise
    except FileNotFoundError:
        raise MissingFileError(f"image file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"image {path} is a folder: give an image file") from None
    except Image.DecompressionBombError as error:  # Pillow's own check, at twice the limit
        raise InputError(f"image {path} is too large to decode: {error} {_LIMIT_HINT}") from None
    except UnidentifiedImageError:
        raise InputError(
            f"cannot read image {path}: it is not an image file Pillow can read (PNG, JPEG, ...); "
            "check that it is an image and not a file of another kind named like one"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(
            f"cannot read image {path}: {error}. Check that the file is a complete "
            "image (PNG, JPEG, ...) and not truncated or of another format"
        ) from None


_LIMIT_HINT = (
    "Downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS (None: no limit) if the memory allows"
)
