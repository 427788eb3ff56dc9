"""Images of every kind become 8-bit RGB; unreadable files give errors that name them."""

import numpy as np
import pytest
from PIL import Image

from cliptrase_d2.data.image_io import read_rgb
from cliptrase_d2.errors import InputError


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_grayscale_palette_rgba_become_rgb(tmp_path):
    gray = _save(tmp_path, "gray.png", Image.fromarray(np.full((5, 6), 77, np.uint8), mode="L"))
    assert read_rgb(gray).shape == (5, 6, 3) and (read_rgb(gray) == 77).all()
    palette = Image.new("P", (4, 4))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert read_rgb(_save(tmp_path, "p.png", palette))[0, 0].tolist() == [10, 20, 30]
    rgba = Image.new("RGBA", (3, 3), (200, 100, 50, 0))
    assert read_rgb(_save(tmp_path, "rgba.png", rgba))[0, 0].tolist() == [200, 100, 50]


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(values))
    assert read_rgb(path)[0, :, 0].tolist() == [0, 128, 255]


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        read_rgb(str(tmp_path / "nothere.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        read_rgb(str(corrupt))
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        read_rgb(str(truncated))
    with pytest.raises(ValueError, match=f"image {tmp_path} is a folder: give an image file"):
        read_rgb(str(tmp_path))  # not the OS's "Is a directory" with a hint about truncation


def test_evaluation_reads_pixels_as_stored_and_the_api_upright(tmp_path):
    """An EXIF orientation tag turns the image for users (API, demo), not for evaluation, whose
    label maps are aligned with the stored pixels."""
    from cliptrase_d2.data.dataset_mapper import SemSegTestMapper

    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:, :30] = 255  # left half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "tagged.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    record = SemSegTestMapper(image_format="RGB")(
        {"file_name": str(path), "sem_seg_file_name": "gt.png"}
    )
    assert (record["height"], record["width"]) == (40, 60)
    np.testing.assert_array_equal(record["image"].permute(1, 2, 0).numpy(), stored)
    assert read_rgb(str(path)).shape == (60, 40, 3)


def _png_claiming(path, width, height):
    """A 1 x 1 PNG whose header (IHDR, with its CRC) says width x height: refused from the header,
    or it would fail decoding with another error."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: length, type, then width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "width, height, message",
    [
        (20000, 20000, r"huge\.png is too large to decode: .*400000000 pixels"),
        (
            10000,
            9000,
            r"huge\.png is 10000x9000 = 90000000 pixels by its header, over the 89478485",
        ),
    ],
)
def test_images_over_the_decode_limit_are_refused_by_their_header(
    tmp_path, monkeypatch, width, height, message
):
    path = _png_claiming(tmp_path / "huge.png", width, height)
    with monkeypatch.context() as unlimited:
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as image:
            assert image.size == (width, height)  # the header says so; the pixels are 1 x 1
    with pytest.raises(InputError, match=message) as caught:
        read_rgb(path)
    assert "PIL.Image.MAX_IMAGE_PIXELS" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_decode_limit_is_pillows_setting(tmp_path, monkeypatch):
    path = _save(tmp_path, "small.png", Image.new("RGB", (20, 10), (5, 6, 7)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(InputError, match=r"20x10 = 200 pixels by its header, over the 199"):
        read_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    assert read_rgb(path).shape == (10, 20, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert read_rgb(path)[0, 0].tolist() == [5, 6, 7]


def test_a_text_file_named_like_an_image_is_named(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n")
    with pytest.raises(InputError, match=r"cannot read image .*notes\.jpg: it is not an image"):
        read_rgb(str(path))
