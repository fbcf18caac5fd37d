"""GUIDE's evaluation (Sec. 4.1), plus re-inversion.

- ID: cosine similarity of the identity METRIC network between G_s(w_u) and G_u(w_u) (lower is
  better: the unlearned generator no longer draws the person at w_u);
- ID_others: the same for the latents of the person's other photos, inverted with G_s;
- re-inversion ID (beyond the paper): invert the source image again, into G_u, with a fresh
  projector, and compare the result with the source: can the person still be drawn at all?
- FID_pre: FID between G_s and G_u images of the same latents; ΔFID_real: FID(G_u, real) -
  FID(G_s, real) against statistics of real images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..models.fid import FeatureStats, InceptionFeatures
from ..models.identity import cosine


def evaluation_views(generator, n: int = 11) -> list[torch.Tensor | None]:
    """The cameras ID is averaged over: each row of a 3D generator's ``evaluation_cameras(n)`` (GUIDE:
    11 yaws over [-pi/12, pi/12]); [None] (the generator's own view) for a camera-free generator."""
    cameras = getattr(generator, "evaluation_cameras", None)
    return [None] if cameras is None else list(cameras(n).split(1))


@torch.no_grad()
def generated_identity(metric_net, generator, ws: torch.Tensor, camera: torch.Tensor | None = None) -> torch.Tensor:
    """Metric embeddings of G(ws) (seen from ``camera``, the front view when None), one row per latent."""
    return torch.cat([metric_net.embed_generated(generator.synthesis(w[None], camera), generator.ffhq_box)
                      for w in ws])


@torch.no_grad()
def identity_similarity(metric_net, g_s, g_u, ws: torch.Tensor, views: int = 11) -> torch.Tensor:
    """[B] cos(metric(G_s(w)), metric(G_u(w))) for each latent (the paper's ID / ID_others); for a
    3D generator the mean over its evaluation views, as the official evaluate_id.py."""
    per_view = [cosine(generated_identity(metric_net, g_s, ws, view), generated_identity(metric_net, g_u, ws, view))
                for view in evaluation_views(g_s, views)]
    return torch.stack(per_view).mean(0)


@torch.no_grad()
def generator_fingerprint(generator) -> str:
    """A digest of the generator's weights: caches keyed by it never mix up G_s and a fine-tuned G."""
    digest = hashlib.sha256(generator.name.encode())
    for name, tensor in generator.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_fid_samples(device: torch.device) -> int:
    """5000 as the paper on a GPU; 500 on CPU, where Inception runs at ~10 images/s."""
    return 5000 if device.type == "cuda" else 500


@torch.no_grad()
def generator_stats(generator, inception: InceptionFeatures, samples: int, seed: int, batch: int) -> FeatureStats:
    """Inception statistics of ``samples`` images from z ~ N(0, I) drawn with ``seed`` (ψ = 1), and for
    a 3D generator random cameras drawn from the same seed, so G_s and G_u are measured on the same
    latents and views (as the official evaluate_fid.py)."""
    rng = torch.Generator().manual_seed(seed)
    feats = []
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), generator.z_dim, generator=rng).to(generator.device)
        camera = generator.sample_camera(len(z), rng)  # None for camera-free generators
        feats.append(inception(generator(z, camera)).double().cpu().numpy())
    return FeatureStats.from_features(np.concatenate(feats))


@dataclass
class FidResult:
    fid_pre: float
    delta_fid_real: float | None
    samples: int


def fid_scores(g_s, g_u, inception: InceptionFeatures, samples: int, seed: int, batch: int,
               real: FeatureStats | None = None, g_s_stats: FeatureStats | None = None) -> FidResult:
    """FID_pre and (when real statistics are given) ΔFID_real. ``g_s_stats`` reuses G_s's."""
    before = g_s_stats or generator_stats(g_s, inception, samples, seed, batch)
    after = generator_stats(g_u, inception, samples, seed, batch)
    delta = after.fid(real) - before.fid(real) if real is not None else None
    return FidResult(fid_pre=before.fid(after), delta_fid_real=delta, samples=samples)


def different_person_level(metric_net) -> float:
    """The metric's mean similarity between different people: openpeople's studio portraits,
    every pair of identities. An erased identity's ID should fall below it."""
    from .. import weights
    from ..images import load_image
    from ..models.face_align import default_aligner

    root, aligner = weights.directory("openpeople"), default_aligner()
    embeddings = []
    with torch.no_grad():
        for person in sorted(p.name for p in root.iterdir() if p.is_dir()):
            path = root / person / "assets" / "studio_portrait.jpg"
            image = load_image(path)
            embeddings.append(metric_net.embed_photo(image, aligner.face(image, str(path))))
    e = torch.cat(embeddings)
    sim = cosine(e[:, None], e[None]).numpy()
    return float(sim[np.triu_indices(len(e), 1)].mean())
