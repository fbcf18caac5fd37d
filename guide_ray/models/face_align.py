"""Find the face in a photo and crop it the way FFHQ-trained generators saw faces.

dlib's HOG frontal detector runs on a copy of the photo downscaled to ``detect_size`` (its MMOD CNN
detector when HOG finds nothing); the 68-point shape predictor then runs on the full-resolution
photo. ``align_ffhq`` maps the oriented square that FFHQ's recipe derives from the eyes and mouth
onto the output square, so eyes and mouth land where the generator expects them.

Coordinates are (x, y) image pixels with pixel centres at integers, as dlib reports landmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .. import weights
from ..images import load_image

try:
    import dlib
except ImportError as e:  # not a dependency of the rest of the package
    raise ImportError("face alignment needs dlib: pip install dlib-bin") from e


class FaceError(ValueError):
    """No usable face, or an ambiguous one, in a photo; the message names the photo."""


@dataclass(eq=False)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (x1, y1 exclusive) in image pixels
    landmarks: np.ndarray  # [68, 2] (x, y), the iBUG 300-W order of dlib's shape predictor
    score: float  # detector confidence: HOG's SVM margin or MMOD's CNN score
    detector: str = "hog"  # "hog" or "mmod"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height


class FaceAligner:
    """dlib face detection and 68-point landmarks; weights by manifest name or file path."""

    def __init__(self, landmarks: str | Path = "dlib-landmarks68", cnn_detector: str | Path = "dlib-mmod",
                 detect_size: int = 1024):
        self.detect_size = detect_size
        self.hog = dlib.get_frontal_face_detector()
        self.cnn = dlib.cnn_face_detection_model_v1(str(weights.resolve_file(cnn_detector)))
        self.predictor = dlib.shape_predictor(str(weights.resolve_file(landmarks)))
        probe = self.predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7))
        if probe.num_parts != 68:
            raise ValueError(f"{landmarks} predicts {probe.num_parts} landmarks; a 68-point predictor is needed")

    def detect(self, image: np.ndarray, source: str = "image") -> list[Face]:
        """Every face in an HxWx3 uint8 RGB image, largest box first."""
        image = _check_rgb(image, source)
        h, w = image.shape[:2]
        scale = min(1.0, self.detect_size / max(h, w))
        small = image
        if scale < 1:
            small = np.asarray(Image.fromarray(image).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
        sx, sy = small.shape[1] / w, small.shape[0] / h
        rects, scores, _ = self.hog.run(small, 0, 0.0)
        detector = "hog"
        if not rects:
            found = self.cnn(small, 0)
            rects, scores, detector = [d.rect for d in found], [d.confidence for d in found], "mmod"
        faces = []
        for rect, score in zip(rects, scores):
            box = (rect.left() / sx, rect.top() / sy, (rect.right() + 1) / sx, (rect.bottom() + 1) / sy)
            full_rect = dlib.rectangle(round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1)
            shape = self.predictor(image, full_rect)
            landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box=box, landmarks=landmarks, score=float(score), detector=detector))
        return sorted(faces, key=lambda f: (f.area, f.score), reverse=True)

    def face(self, image: np.ndarray, source: str = "image", min_size: int = 64,
             multiple: Literal["error", "largest"] = "error") -> Face:
        """The one face to work on; FaceError when there is none, it is too small, or it is ambiguous.

        Faces smaller than ``min_size`` px could never be used, so they do not make a photo
        ambiguous. Several usable faces are an error by default: an erasure request must name one
        person; ``multiple="largest"`` takes the largest.
        """
        if multiple not in ("error", "largest"):
            raise ValueError(f"multiple must be 'error' or 'largest', not {multiple!r}")
        faces = self.detect(image, source)
        if not faces:
            raise FaceError(f"no face found in {source}")
        usable = [f for f in faces if min(f.width, f.height) >= min_size]
        if not usable:
            largest = faces[0]
            raise FaceError(f"the face in {source} is only {largest.width:.0f}x{largest.height:.0f} px; "
                            f"at least {min_size} px is needed: use a larger photo or one taken closer")
        if len(usable) > 1 and multiple == "error":
            raise FaceError(f"{len(usable)} faces found in {source}; "
                            f"crop the photo to the person or pass multiple='largest'")
        return usable[0]


@cache
def default_aligner() -> FaceAligner:
    """One shared FaceAligner with the cached dlib weights (loading the predictor takes a second)."""
    return FaceAligner()


def _check_rgb(image: np.ndarray, source: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{source}: expected an HxWx3 uint8 RGB array, got {got}")
    return np.ascontiguousarray(image)


def _rot90(v: np.ndarray) -> np.ndarray:
    """(dx, dy) -> (-dy, dx): a quarter turn, clockwise on screen since y points down."""
    return np.array([-v[1], v[0]])


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ's crop square from 68 landmarks: corners [top-left, bottom-left, bottom-right, top-right].

    The square is centred a little below the eyes, oriented by the eye line and the eye-to-mouth
    direction together, and sized by the larger of twice the eye distance and 1.8 times the
    eye-to-mouth distance (its half-side).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68x2 landmarks, got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    # Horizontal axis: the eye line averaged with the normal of the eye-to-mouth line.
    x = eye_to_eye - _rot90(eye_to_mouth)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = _rot90(x)
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def landmarks5(face: Face) -> np.ndarray:
    """[5, 2]: left eye centre, right eye centre, nose tip, left and right mouth corners (ArcFace order)."""
    lm = face.landmarks
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[30], lm[48], lm[54]])


def sub_quad(quad: np.ndarray, box) -> np.ndarray:
    """The part ``box`` (x0, y0, x1, y1 in [0, 1] of the square) of a [TL, BL, BR, TR] quad."""
    origin, right, down = quad[0], quad[3] - quad[0], quad[1] - quad[0]
    x0, y0, x1, y1 = box
    return np.stack([origin + x0 * right + y0 * down, origin + x0 * right + y1 * down,
                     origin + x1 * right + y1 * down, origin + x1 * right + y0 * down])


def align_ffhq(image: np.ndarray, face: Face, size: int, box=(0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """The FFHQ crop of ``face`` as a size x size x 3 uint8 array; ``box`` selects a part of the
    FFHQ square (a generator whose frame is not FFHQ's declares it as ``ffhq_box``).

    Only the quad's neighbourhood is processed: it is cropped out, shrunk first when the quad is
    over twice the output size (bicubic sampling alone would alias), reflect-padded where the quad
    leaves the photo, then warped onto the output square.
    """
    image = _check_rgb(image, "image")
    h, w = image.shape[:2]
    quad = sub_quad(ffhq_quad(face.landmarks), box) + 0.5  # PIL's transforms measure from pixel edges
    side = float(np.hypot(*(quad[3] - quad[0])))
    margin = 4  # context for the bicubic kernel at the quad's edges
    x0, y0 = (math.floor(v) - margin for v in quad.min(axis=0))
    x1, y1 = (math.ceil(v) + margin for v in quad.max(axis=0))
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 - 1 or cy0 >= cy1 - 1:
        raise FaceError("the face's crop square lies outside the image")
    crop = Image.fromarray(image[cy0:cy1, cx0:cx1])
    quad -= (cx0, cy0)
    pad = np.array([cx0 - x0, cy0 - y0, x1 - cx1, y1 - cy1], dtype=np.float64)  # left, top, right, bottom
    shrink = side / (2 * size)
    if shrink > 1:
        small_size = (max(2, round(crop.width / shrink)), max(2, round(crop.height / shrink)))
        scale = np.array(small_size) / crop.size
        crop = crop.resize(small_size, Image.LANCZOS)
        quad *= scale
        pad *= np.tile(scale, 2)
    left, top, right, bottom = (math.ceil(p) for p in pad)
    padded = np.pad(np.asarray(crop), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    quad += (left, top)
    out = Image.fromarray(padded).transform((size, size), Image.QUAD, quad.flatten().tolist(), Image.BICUBIC)
    return np.asarray(out).copy()


def photo_to_generator_crop(path: str | Path, size: int, aligner: FaceAligner | None = None,
                            min_size: int = 64, multiple: Literal["error", "largest"] = "error",
                            box=(0.0, 0.0, 1.0, 1.0)) -> torch.Tensor:
    """A photo file -> its face aligned as a generator's images are (FFHQ's recipe, restricted to
    the generator's ``ffhq_box``) as a [1, 3, size, size] float tensor in [-1, 1]."""
    aligner = aligner or default_aligner()
    image = load_image(path)
    face = aligner.face(image, source=str(path), min_size=min_size, multiple=multiple)
    crop = align_ffhq(image, face, size, box)
    return torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def generator_crop(path: str | Path, generator, aligner: FaceAligner | None = None,
                   multiple: Literal["error", "largest"] = "error") -> torch.Tensor:
    """A photo as ``generator``'s own images frame a face: at its resolution, in its ``ffhq_box``,
    on its device (what an inversion fits and an evaluation compares against)."""
    return photo_to_generator_crop(path, generator.resolution, aligner=aligner, multiple=multiple,
                                   box=generator.ffhq_box).to(generator.device)
