"""Is a generated image a face? A score per image from a face detector, so that no metric can call
a smear an erased identity.

- ``dlib-mmod`` (default): dlib's CNN face detector (max-margin object detection); the score is
  its detection confidence (about 1 for a clear face, no detection = -1). It tells smears from
  faces: on dcgan-digiface64 the demo's smeared target and after-image scored 0.68 / 0.71, the
  generator's own samples a median of 1.03 (docs/method.md has the figures).
- ``mtcnn``: MTCNN's face probability (facenet-pytorch's weights). It is lenient: it gave the same
  smears probability 1.00, so it is offered for comparison, not as the default.

Images (NCHW in [-1, 1]) are resized to ``CHECK_SIZE`` px first, so 64 px and 1024 px generators
are judged at one scale, and only detections at least ``MIN_WIDTH`` of the image wide count: a
generator's face fills a good part of its frame, a face-like speck in a texture does not.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights

CHECK_SIZE = 256
MIN_WIDTH = 0.2
DEFAULT_THRESHOLDS = {"dlib-mmod": 0.8, "mtcnn": 0.9}
NO_FACE = {"dlib-mmod": -1.0, "mtcnn": 0.0}


def _resized(image: torch.Tensor, size: int = CHECK_SIZE) -> torch.Tensor:
    """[1, 3, H, W] -> [1, 3, size, size] (area when shrinking, bilinear when enlarging)."""
    if image.shape[-1] > size:
        return F.interpolate(image, size=(size, size), mode="area")
    if image.shape[-1] < size:
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    return image


class FaceCheck:
    """``check(images) -> [B]`` face scores; ``is_face(score)`` compares one with the threshold."""

    def __init__(self, detector: str = "dlib-mmod", threshold: float | None = None,
                 device: str | torch.device | None = None):
        if detector not in DEFAULT_THRESHOLDS:
            raise ValueError(f"face detector {detector!r} is not one of {', '.join(DEFAULT_THRESHOLDS)}")
        self.name = detector
        self.threshold = DEFAULT_THRESHOLDS[detector] if threshold is None else float(threshold)
        self.no_face = NO_FACE[detector]
        if detector == "dlib-mmod":
            import dlib

            self._mmod = dlib.cnn_face_detection_model_v1(str(weights.path("dlib-mmod")))
        else:
            from .mtcnn import MTCNN

            self._mtcnn = MTCNN(device)

    def is_face(self, score: float) -> bool:
        return score >= self.threshold

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B] scores of NCHW images in [-1, 1]; ``no_face`` for an image with no face or one that is
        not finite (a diverged generator's)."""
        scores = torch.full((len(images),), self.no_face)
        for i, image in enumerate(images):
            if bool(torch.isfinite(image).all()):
                scores[i] = self._score(_resized(image[None].float()))
        return scores

    def _score(self, image: torch.Tensor) -> float:
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round()  # as the image would be saved, uint8
        if self.name == "mtcnn":
            return self._mtcnn.face_probability(pixels, MIN_WIDTH)
        array = np.ascontiguousarray(pixels[0].permute(1, 2, 0).cpu().numpy().astype(np.uint8))
        found = [d.confidence for d in self._mmod(array, 0) if d.rect.width() >= MIN_WIDTH * image.shape[-1]]
        return max(found, default=self.no_face)
