"""The terms of Latent Target Unlearning (Sec. 3.3), per pair, and their composition.

Everything is computed per pair ([P] tensors) so one batched forward can serve every term:
- L2 (Eq. 4): mean squared difference of the generator features (tri-planes for EG3D, the image
  for 2D generators), as ``F.mse_loss`` in the official code;
- perceptual (Eq. 4, 8): the perceptual distance of the images, downsampled to ``perceptual_size``;
- identity (Eq. 4): 1 - cos of the identity LOSS network's embeddings of the fixed face crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import GuideConfig
from .ufo import whole_norm


def adjacent_deltas(w_u: torch.Tensor, w_r: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 5: Δ^i = α^i (w_r^i - w_u) / ||w_r^i - w_u||, whole-tensor norm; w_u [1, ...], w_r [N, ...]."""
    direction = w_r - w_u
    return alpha.view(-1, *([1] * (w_r.ndim - 1))) * direction / whole_norm(direction)


def local_loss(l2: torch.Tensor, per: torch.Tensor, ident: torch.Tensor, cfg: GuideConfig) -> torch.Tensor:
    """Eq. 4, per pair: λ_L2 L2 + λ_per L_per + λ_id L_id."""
    return cfg.lambda_l2 * l2 + cfg.lambda_per * per + cfg.lambda_id * ident


def total_loss(local: torch.Tensor | None, adj: torch.Tensor | None, glob: torch.Tensor | None,
               cfg: GuideConfig) -> torch.Tensor:
    """Eq. 9: L_local + λ_adj L_adj + λ_global L_global, each term present when switched on.

    ``adj`` holds the Eq. 4 losses of the N_a neighbour pairs (Eq. 7 averages them) and ``glob``
    the perceptual distances of the N_g global pairs (Eq. 8 averages them).
    """
    total = 0.0
    if local is not None:
        total = total + local.sum()
    if adj is not None:
        total = total + cfg.lambda_adj * adj.mean()
    if glob is not None:
        total = total + cfg.lambda_global * glob.mean()
    return total


@dataclass
class Targets:
    """What the losses need from frozen-generator outputs, for a batch of latents."""

    features: torch.Tensor  # for the L2 term
    perceptual: list[torch.Tensor]  # perceptual features (or the downsampled image, see Terms)
    identity: torch.Tensor | None  # identity embeddings (unlearning pairs only)

    def select(self, index: torch.Tensor) -> "Targets":
        return Targets(self.features[index], [f[index] for f in self.perceptual],
                       None if self.identity is None else self.identity[index])

    @staticmethod
    def cat(parts: list["Targets"]) -> "Targets":
        ident = [p.identity for p in parts]
        return Targets(torch.cat([p.features for p in parts]),
                       [torch.cat(fs) for fs in zip(*(p.perceptual for p in parts))],
                       None if any(i is None for i in ident) else torch.cat(ident))


class Terms:
    """The networks behind the loss terms, and the per-pair distances they give."""

    def __init__(self, cfg: GuideConfig, perceptual, id_net, frame):
        self.cfg, self.perceptual, self.id_net, self.frame = cfg, perceptual, id_net, frame
        # ST-LPIPS exposes its features, so a frozen image's features can be computed once;
        # other perceptual nets (official LPIPS) are called on image pairs.
        self.splits_features = hasattr(perceptual, "features") and hasattr(perceptual, "distance")

    def perceptual_image(self, img: torch.Tensor) -> torch.Tensor:
        size = self.cfg.perceptual_size
        if img.shape[-1] > size:
            img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return img

    def _autocast(self, img: torch.Tensor):
        return torch.autocast(img.device.type, dtype=torch.bfloat16, enabled=self.cfg.perceptual_precision == "bf16")

    def perceptual_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        img = self.perceptual_image(img)
        if not self.splits_features:
            return [img]
        with self._autocast(img):
            features = self.perceptual.features(img.contiguous(memory_format=torch.channels_last))
        return [f.float() for f in features]

    def perceptual_distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        if self.splits_features:
            return self.perceptual.distance(fa, fb)
        with self._autocast(fa[0]):
            return self.perceptual(fa[0], fb[0]).float()

    def identity(self, img: torch.Tensor) -> torch.Tensor:
        return self.id_net.embed_generated(img, self.frame)

    def targets(self, images: torch.Tensor, features: torch.Tensor, with_identity: bool) -> Targets:
        return Targets(features, self.perceptual_features(images), self.identity(images) if with_identity else None)

    def unlearning_pairs(self, img_u, feat_u, per_u: list[torch.Tensor], target: Targets) -> dict[str, torch.Tensor]:
        """Eq. 4's terms for pairs (G_u(w), G_s(w')) whose targets are given; per_u: features of img_u."""
        l2 = (feat_u - target.features).square().flatten(1).mean(1)
        per = self.perceptual_distance(per_u, target.perceptual)
        ident = 1 - F.cosine_similarity(self.identity(img_u), target.identity, dim=-1)
        return {"l2": l2, "per": per, "id": ident, "local": local_loss(l2, per, ident, self.cfg)}
