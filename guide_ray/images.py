"""Image conversions at the package's boundaries: tensors are NCHW float in [-1, 1]."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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
