"""Image conversions at the package's boundaries: tensors are NCHW float in [-1, 1]."""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Tile [B, H, W, 3] uint8 images into one image, ``cols`` per row (about square by default)."""
    b, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = im
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an HxWx3 uint8 array as PNG atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp.name, path)
    return path


class ImageError(ValueError):
    """A photo cannot be read; the message names the file and the reason."""


# Single-channel modes holding 16-bit samples ("I" is how older Pillow opens 16-bit grayscale PNGs).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | Path) -> np.ndarray:
    """Read a photo as an HxWx3 uint8 RGB array, upright as its EXIF orientation says.

    Grayscale and palette images become RGB, transparency is composited on white, CMYK is
    converted (through its ICC profile when it has one) and 16-bit samples keep their high byte,
    as Pillow does for 16-bit RGB. Every failure is an ImageError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()  # Image.open is lazy: decoding here is what detects truncated or corrupt data
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (Pillow does not recognise its format)") from None
    except PermissionError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{path}: image has zero size ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = (np.asarray(im).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "CMYK":
        return np.array(_cmyk_to_rgb(im))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(im.convert("RGB"))


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    profile = im.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable embedded profile: fall back to Pillow's plain conversion
    return im.convert("RGB")
