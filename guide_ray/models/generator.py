"""The Generator protocol every face GAN adapter implements, and the shared 2D-GAN plumbing.

Conventions (as NVIDIA's StyleGAN code): ``mapping(z) -> ws`` of shape [B, num_ws, w_dim];
``synthesis(ws) -> image`` NCHW float in [-1, 1]; ``features(ws)`` is what GUIDE's L2 term compares
(tri-planes for EG3D, the image itself for 2D generators); ``trainable_parameters()`` is what LTU
fine-tunes (the synthesis network by default, as the official GUIDE code). ``ffhq_box`` says where
the generator's frame lies in the FFHQ-aligned frame, so photos can be aligned like its images and
identity networks can crop its faces. A 3D generator (EG3D) takes cameras ``c`` [B, 25], draws random
ones with ``sample_camera`` and may offer ``evaluation_cameras()`` [V, 25], the views ID is averaged over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@runtime_checkable
class Generator(Protocol):
    name: str
    z_dim: int
    w_dim: int
    num_ws: int
    resolution: int
    w_avg: torch.Tensor  # [w_dim]
    ffhq_box: tuple[float, float, float, float]  # the image's extent in the FFHQ-aligned frame
    gaussian_latent: bool  # the latent is z ~ N(0, I) with no mapping network (the DCGAN)

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None,
                truncation_psi: float = 1.0) -> torch.Tensor: ...

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor: ...

    def features(self, ws: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor: ...

    def render(self, ws: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...

    def sample_camera(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None: ...


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def cached_latent(path: Path, compute: Callable[[], torch.Tensor], what: str) -> torch.Tensor:
    """A latent derived from a generator's weights (e.g. w_avg): loaded from the .npy at ``path``,
    else computed once and saved there atomically."""
    if path.exists():
        return torch.from_numpy(np.load(path))
    log.info("computing %s (once; cached at %s)", what, path)
    latent = compute().detach().cpu().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, latent.numpy())
    os.replace(tmp.name, path)
    return latent


def straight_through_clamp(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] in the forward pass, identity in the backward pass.

    Generators overshoot [-1, 1] slightly (as StyleGAN2 does); clamping keeps the protocol's range
    without zeroing the gradient of the overshooting pixels.
    """
    return img + (img.clamp(-1, 1) - img).detach()


class GeneratorBase(nn.Module):
    """Shared behaviour of the generators; subclasses define ``_synthesize``. Camera-free by default
    (``sample_camera`` gives None); a 3D generator (EG3D) overrides the camera methods."""

    name: str
    z_dim: int
    w_dim: int
    num_ws: int
    resolution: int
    synthesis_net: nn.Module
    ffhq_box = (0.0, 0.0, 1.0, 1.0)  # FFHQ-aligned, unless a subclass measured otherwise
    gaussian_latent = False  # True: no mapping network, the latent is z ~ N(0, I) itself (UFO's geometry)

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    def z_from_seed(self, seed: int) -> torch.Tensor:
        """The latent of a seed, as NVIDIA's generate scripts draw it (NumPy RandomState)."""
        z = np.random.RandomState(seed).randn(1, self.z_dim).astype(np.float32)
        return torch.from_numpy(z).to(self.device)

    def _map(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim]."""
        raise NotImplementedError

    def mapping(self, z, c=None, truncation_psi: float = 1.0):
        w = self._map(z)
        if truncation_psi != 1.0:
            w = self.w_avg + truncation_psi * (w - self.w_avg)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)

    def broadcast_ws(self, ws: torch.Tensor) -> torch.Tensor:
        """Accept W ([B, w_dim]) or W+ ([B, num_ws, w_dim]); return W+."""
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).repeat(1, self.num_ws, 1)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"{self.name}: ws must be [B, {self.w_dim}] or "
                             f"[B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        return ws

    def synthesis(self, ws, c=None):
        return straight_through_clamp(self._synthesize(self.broadcast_ws(ws)))

    def features(self, ws, c=None):
        return self.synthesis(ws, c)

    def render(self, ws, c=None):
        """(image, features) from one forward pass: for a 2D generator the features are the image."""
        image = self.synthesis(ws, c)
        return image, image

    def trainable_parameters(self):
        return self.synthesis_net.parameters()

    def at_resolution(self, resolution: int) -> "GeneratorBase":
        """This generator producing ``resolution``² images by running only its layers up to that
        resolution (a view sharing the parameters, so training it trains this generator); only
        generators that can say so (MobileStyleGAN) offer resolutions below their own."""
        if resolution != self.resolution:
            raise ValueError(f"{self.name} renders only at {self.resolution}x{self.resolution}; it cannot be "
                             f"trained at {resolution} (a reduced training resolution needs MobileStyleGAN)")
        return self

    def lr_scale(self, parameter: nn.Parameter) -> float:
        """LTU's step size for ``parameter``, as a multiple of cfg.lr: 1 for parameters stored as
        their training code trained them (equalized-lr scales applied at run time)."""
        return 1.0

    @property
    def full(self) -> "GeneratorBase":
        """The full-resolution generator this one is a view of (itself, unless a reduced view)."""
        return self

    def sample_camera(self, batch, generator=None):
        return None

    def forward(self, z, c=None, truncation_psi: float = 1.0):
        return self.synthesis(self.mapping(z, c, truncation_psi), c)


@torch.no_grad()
def render_seeds(generator, seeds: list[int], truncation: float = 1.0, batch: int = 4) -> np.ndarray:
    """uint8 images [N, H, W, 3] of ``seeds`` (z_from_seed, ``batch`` seeds per forward pass): what
    ``guide-ray sample`` writes and an unlearned generator's MLflow Model returns."""
    from ..images import to_uint8

    pictures = [to_uint8(generator(torch.cat([generator.z_from_seed(s) for s in seeds[i:i + batch]]),
                                   truncation_psi=truncation)) for i in range(0, len(seeds), batch)]
    if not pictures:
        return np.zeros((0, generator.resolution, generator.resolution, 3), np.uint8)
    return np.concatenate(pictures)
