"""ArcFace embeddings from insightface's ONNX recognition models (e.g. buffalo_l's w600k_r50.onnx).

Conventions follow insightface's ``model_zoo.arcface_onnx.ArcFaceONNX``: the network takes
[N, 3, S, S] float32 RGB (``get_feat`` swaps its BGR inputs with ``swapRB=True``) normalised as
(pixel - 127.5) / 127.5, except for models converted from MXNet, whose graph starts with its own
Sub/Mul normalisation and takes raw pixels (mean 0, std 1). Chips are aligned with the standard
ArcFace five-point template (``face_align.norm_crop``). Everything here is RGB, as in the rest of
the package; embeddings are the raw network outputs (not L2-normalised), as ``get_feat`` returns.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

# ArcFace's destination for (left eye, right eye, nose tip, left mouth corner, right mouth corner)
# in a 112x112 chip, (x, y) pixels: insightface.utils.face_align.arcface_dst.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst`` in
    the least-squares sense: Umeyama, "Least-squares estimation of transformation parameters
    between two point patterns", TPAMI 1991 (what skimage's SimilarityTransform.estimate does)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two [K, 2] point sets (K >= 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # no reflections
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sv) @ sign) / s.var(axis=0).sum()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ArcFace chip: warp an HxWx3 uint8 image so its 5 landmarks land on the template
    (scaled by size / 112), bilinear, black outside; same result as insightface's norm_crop."""
    if size % 112:
        raise ValueError(f"ArcFace chips are a multiple of 112 px, not {size}")
    m = similarity_transform(np.asarray(landmarks).reshape(5, 2), ARCFACE_TEMPLATE * (size / 112))
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)


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
    """An insightface ArcFace ONNX model run by onnxruntime (CUDA when available, else CPU).

    ``embed`` takes aligned RGB uint8 chips; ``forward`` (also ``__call__``) takes NCHW tensors in
    [-1, 1] and returns a torch tensor. Neither is differentiable: the network runs in
    onnxruntime, outside autograd, so this backend serves metrics (identity similarity), never
    training losses. Pickles by path (for Ray): the session is rebuilt on first use.
    """

    def __init__(self, model_file: str | os.PathLike, providers: list[str] | None = None):
        self.model_file = Path(model_file).expanduser()
        if not self.model_file.is_file():
            raise FileNotFoundError(f"ArcFace ONNX model not found: {self.model_file}")
        self.providers = providers or _default_providers()
        graph = onnx.load(str(self.model_file), load_external_data=False).graph
        # ArcFaceONNX's test: MXNet conversions normalise inside the graph (Sub and Mul in the first 8 nodes).
        names = [node.name for node in graph.node[:8]]
        in_graph = (any(n.startswith(("Sub", "_minus")) for n in names)
                    and any(n.startswith(("Mul", "_mul")) for n in names))
        self.input_mean, self.input_std = (0.0, 1.0) if in_graph else (127.5, 127.5)
        self._session: ort.InferenceSession | None = None
        self.input_size = self.session.get_inputs()[0].shape[2]
        if not isinstance(self.input_size, int):
            raise ValueError(f"{self.model_file}: input size is not fixed ({self.session.get_inputs()[0].shape})")

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
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = ort.InferenceSession(str(self.model_file), providers=self.providers)
        return self._session

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}

    def _run(self, blob: np.ndarray) -> np.ndarray:
        inp = self.session.get_inputs()[0].name
        return self.session.run(None, {inp: np.ascontiguousarray(blob, dtype=np.float32)})[0]

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """[N, S, S, 3] (or one [S, S, 3]) aligned RGB uint8 chips -> [N, D] float32 embeddings."""
        chips = np.asarray(chips)
        chips = chips[None] if chips.ndim == 3 else chips
        s = self.input_size
        if chips.dtype != np.uint8 or chips.shape[1:] != (s, s, 3):
            raise ValueError(f"expected [N, {s}, {s}, 3] uint8 aligned chips (see norm_crop), "
                             f"got {chips.dtype} {chips.shape}")
        blob = (chips.transpose(0, 3, 1, 2).astype(np.float32) - self.input_mean) / self.input_std
        return self._run(blob)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] aligned RGB chips in [-1, 1] -> [N, D] float32 on their device. Not differentiable."""
        s = self.input_size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, s, s):
            raise ValueError(f"expected [N, 3, {s}, {s}] aligned chips, got {tuple(chips.shape)}")
        pixels = (chips.detach().float().cpu().numpy() + 1) * 127.5
        return torch.from_numpy(self._run((pixels - self.input_mean) / self.input_std)).to(chips.device)

    __call__ = forward


def load_arcface(spec: str | os.PathLike = "buffalo_l", providers: list[str] | None = None) -> ArcFaceEmbedder:
    """An ArcFace embedder from an .onnx path, a model-pack folder, or an insightface pack name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return ArcFaceEmbedder(path, providers)
    if path.is_dir():
        return ArcFaceEmbedder.from_folder(path, providers)
    return ArcFaceEmbedder.from_pack(str(spec), providers=providers)
