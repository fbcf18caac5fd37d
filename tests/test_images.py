"""load_image on the awkward files users actually have: odd modes, 16 bits, EXIF rotation, damage."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from guide_ray import weights
from guide_ray.images import ImageError, load_image
from tests.helpers import require_weights


def write_png16_rgb(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): unfiltered rows, one IDAT chunk."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


SIXTEEN_BIT_SAMPLES = np.array([0, 255, 256, 4660, 32767, 32768, 51400, 65280, 65535], dtype=np.uint16)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgb = load_image(tmp_path / "gray.png")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb == gray[..., None]).all()


def test_palette_image_uses_its_palette(tmp_path):
    colours = np.array([[255, 0, 0], [0, 128, 255], [20, 200, 20]], dtype=np.uint8)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(colours.flatten().tolist())
    im.save(tmp_path / "palette.png")
    assert (load_image(tmp_path / "palette.png") == colours[indices]).all()

    im.save(tmp_path / "palette_transparent.png", transparency=0)  # index 0 fully transparent
    expected = np.where((indices == 0)[..., None], 255, colours[indices])
    assert (load_image(tmp_path / "palette_transparent.png") == expected).all()


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, alpha 0, 128 and 255 across each row
    rgba[..., 3] = [0, 128, 255]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    rgb = load_image(tmp_path / "rgba.png").astype(int)
    assert (rgb[:, 0] == 255).all()
    assert (rgb[:, 2] == [200, 0, 0]).all()
    assert np.abs(rgb[:, 1] - [227, 127, 127]).max() <= 1  # half way between the colour and white

    gray_alpha = Image.fromarray(np.stack([np.full((2, 2), 10), np.full((2, 2), 0)], -1).astype(np.uint8), "LA")
    gray_alpha.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg")
    rgb = load_image(tmp_path / "cyan.jpg").astype(int)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb - [0, 255, 255]).max() <= 3


def test_16_bit_grayscale_png_keeps_the_high_byte(tmp_path):
    Image.fromarray(SIXTEEN_BIT_SAMPLES.reshape(1, -1)).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    rgb = load_image(tmp_path / "gray16.png")
    expected = (SIXTEEN_BIT_SAMPLES >> 8).astype(np.uint8)  # scaled, not clipped at 255
    assert (rgb[0] == expected[:, None]).all()


def test_16_bit_rgb_png_keeps_the_high_byte(tmp_path):
    pixels = np.stack([SIXTEEN_BIT_SAMPLES, SIXTEEN_BIT_SAMPLES[::-1], SIXTEEN_BIT_SAMPLES // 2], -1)[None]
    write_png16_rgb(tmp_path / "rgb16.png", pixels)
    assert (load_image(tmp_path / "rgb16.png") == (pixels >> 8).astype(np.uint8)).all()


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = [255, 0, 0]  # left half red, right half blue as stored
    stored[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "rotated.jpg").astype(int)
    assert shown.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert np.abs(shown[:15].mean((0, 1)) - [255, 0, 0]).max() < 20  # the stored left is now the top
    assert np.abs(shown[25:].mean((0, 1)) - [0, 0, 255]).max() < 20


@pytest.fixture(scope="module")
def real_jpeg():
    require_weights("openpeople")
    return weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"


def test_real_jpeg_loads(real_jpeg):
    rgb = load_image(real_jpeg)
    assert rgb.shape == (2048, 2048, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable


def test_truncated_jpeg_is_an_image_error_naming_the_file(real_jpeg, tmp_path):
    data = real_jpeg.read_bytes()
    cut = tmp_path / "half.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="half.jpg.*truncated"):
        load_image(cut)


def test_text_file_is_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        load_image(tmp_path / "notes.jpg")


def test_missing_empty_and_folder_paths(tmp_path):
    with pytest.raises(ImageError, match="nowhere.png: file not found"):
        load_image(tmp_path / "nowhere.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    assert issubclass(ImageError, ValueError)
