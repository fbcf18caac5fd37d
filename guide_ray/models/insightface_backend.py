"""ArcFace embeddings from insightface's ONNX recognition models (e.g. buffalo_l's w600k_r50.onnx).

insightface does the work: ``insightface.utils.face_align.norm_crop`` aligns a face onto the
standard ArcFace five-point template, and ``insightface.model_zoo.arcface_onnx.ArcFaceONNX`` runs
a model file on an onnxruntime session this module creates (so the execution providers are ours,
CUDA when available). ArcFaceONNX decides the pixel normalisation from the graph:
(pixel - 127.5) / 127.5, except for models converted from MXNet, whose graph starts with its own
Sub/Mul normalisation and takes raw pixels (mean 0, std 1). Importing insightface downloads
nothing; model packs are only ever read from disk here.

Everything here is RGB, as in the rest of the package: ``embed`` feeds RGB chips through
``ArcFaceONNX.forward`` (NCHW RGB), which is what ``get_feat`` computes from OpenCV's BGR images
after its ``swapRB``. Embeddings are the raw network outputs (not L2-normalised), as insightface
returns them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils import face_align
from skimage.transform import SimilarityTransform

# insightface's norm_crop estimates its transform with skimage's SimilarityTransform.estimate,
# deprecated in scikit-image 0.26 (FutureWarning on every call); nothing a caller can act on.
warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning,
                        module=r"insightface\.utils\.face_align")

# ArcFace's destination for (left eye, right eye, nose tip, left mouth corner, right mouth corner)
# in a 112x112 chip, (x, y) pixels: insightface's face_align.arcface_dst (a read-only copy).
ARCFACE_TEMPLATE = face_align.arcface_dst.astype(np.float64)
ARCFACE_TEMPLATE.flags.writeable = False


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation, no reflection) mapping ``src``
    onto ``dst`` in the least-squares sense (Umeyama, TPAMI 1991), estimated by scikit-image's
    SimilarityTransform as insightface's ``estimate_norm`` does."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two [K, 2] point sets (K >= 2), got {src.shape} and {dst.shape}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(src, dst)
    if not ok or not np.isfinite(tform.params).all():
        raise ValueError("no similarity maps these points (they coincide)")
    return tform.params[:2].copy()


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ArcFace chip of an HxWx3 uint8 image (channel order kept, RGB here): insightface's
    ``norm_crop``, which warps the 5 landmarks onto the template scaled by size / 112, bilinear,
    black outside."""
    if size % 112:
        raise ValueError(f"ArcFace chips are a multiple of 112 px, not {size}")
    return face_align.norm_crop(image, np.asarray(landmarks, np.float64).reshape(5, 2), image_size=size)


def _default_providers() -> list[str]:
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def _is_recognition_model(path: Path) -> bool:
    """insightface's ModelRouter rule for ArcFace: one [N, 3, S, S] input with S >= 112, S % 16 == 0."""
    inputs = onnx.load(str(path), load_external_data=False).graph.input
    if len(inputs) != 1:
        return False
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return len(dims) == 4 and dims[1] == 3 and dims[2] == dims[3] and (dims[2] or 0) >= 112 and dims[2] % 16 == 0


class ArcFaceEmbedder:
    """An insightface ArcFace ONNX model, run by insightface's ArcFaceONNX on onnxruntime (CUDA
    when available, else CPU).

    ``embed`` takes aligned RGB uint8 chips; ``forward`` (also ``__call__``) takes NCHW tensors in
    [-1, 1] and returns a torch tensor. Neither is differentiable: the network runs in
    onnxruntime, outside autograd, so this backend serves metrics (identity similarity), never
    training losses. Pickles by path (for Ray): the runner is rebuilt on first use.
    """

    def __init__(self, model_file: str | os.PathLike, providers: list[str] | None = None):
        self.model_file = Path(model_file).expanduser()
        if not self.model_file.is_file():
            raise FileNotFoundError(f"ArcFace ONNX model not found: {self.model_file}")
        self.providers = providers or _default_providers()
        self._runner: ArcFaceONNX | None = None
        runner = self.runner
        self.input_mean, self.input_std = runner.input_mean, runner.input_std
        width, height = runner.input_size
        if not isinstance(width, int) or width != height:
            raise ValueError(f"{self.model_file}: input is not a fixed square ({runner.input_shape})")
        self.input_size = width

    @classmethod
    def from_pack(cls, pack: str = "buffalo_l", root: str | os.PathLike = "~/.insightface",
                  providers: list[str] | None = None) -> ArcFaceEmbedder:
        """The recognition model of an insightface model pack in ``root``/models/``pack``; never downloads."""
        folder = Path(root).expanduser() / "models" / pack
        if not folder.is_dir():
            raise FileNotFoundError(
                f"insightface model pack {pack!r} not found at {folder}; nothing is downloaded: unpack "
                f"{pack}.zip from insightface's model zoo there, or pass the .onnx file's path")
        return cls.from_folder(folder, providers)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, providers: list[str] | None = None) -> ArcFaceEmbedder:
        """The one ArcFace recognition model among a folder's .onnx files (a pack holds detectors too)."""
        found = sorted(p for p in Path(folder).glob("*.onnx") if _is_recognition_model(p))
        if len(found) != 1:
            raise ValueError(f"{folder}: expected exactly one ArcFace recognition model, found "
                             f"{[p.name for p in found] or 'none'}")
        return cls(found[0], providers)

    @property
    def runner(self) -> ArcFaceONNX:
        """insightface's ArcFaceONNX for the model file, on our onnxruntime session."""
        if self._runner is None:
            session = ort.InferenceSession(str(self.model_file), providers=self.providers)
            self._runner = ArcFaceONNX(model_file=str(self.model_file), session=session)
        return self._runner

    @property
    def session(self) -> ort.InferenceSession:
        return self.runner.session

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runner": None}

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """[N, 3, S, S] RGB pixel values in 0..255 -> [N, D] float32 embeddings."""
        return self.runner.forward(np.ascontiguousarray(pixels, dtype=np.float32))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """[N, S, S, 3] (or one [S, S, 3]) aligned RGB uint8 chips -> [N, D] float32 embeddings."""
        chips = np.asarray(chips)
        chips = chips[None] if chips.ndim == 3 else chips
        s = self.input_size
        if chips.dtype != np.uint8 or chips.shape[1:] != (s, s, 3):
            raise ValueError(f"expected [N, {s}, {s}, 3] uint8 aligned chips (see norm_crop), "
                             f"got {chips.dtype} {chips.shape}")
        return self._run(chips.transpose(0, 3, 1, 2))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] aligned RGB chips in [-1, 1] -> [N, D] float32 on their device. Not differentiable."""
        s = self.input_size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, s, s):
            raise ValueError(f"expected [N, 3, {s}, {s}] aligned chips, got {tuple(chips.shape)}")
        pixels = (chips.detach().float().cpu().numpy() + 1) * 127.5
        return torch.from_numpy(self._run(pixels)).to(chips.device)

    __call__ = forward


def load_arcface(spec: str | os.PathLike = "buffalo_l", providers: list[str] | None = None) -> ArcFaceEmbedder:
    """An ArcFace embedder from an .onnx path, a model-pack folder, or an insightface pack name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return ArcFaceEmbedder(path, providers)
    if path.is_dir():
        return ArcFaceEmbedder.from_folder(path, providers)
    return ArcFaceEmbedder.from_pack(str(spec), providers=providers)
