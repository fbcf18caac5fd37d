"""GUIDE's evaluation (Sec. 4.1), plus re-inversion.

- ID: cosine similarity of the identity METRIC network between G_s(w_u) and G_u(w_u) (lower is
  better: the unlearned generator no longer draws the person at w_u);
- ID_others: the same for the latents of the person's other photos, inverted with G_s;
- re-inversion ID (beyond the paper): invert the source image again, into G_u, with a fresh
  projector, and compare the result with the source: can the person still be drawn at all?
- FID_pre: FID between G_s and G_u images of the same latents; ΔFID_real: FID(G_u, real) -
  FID(G_s, real) against statistics of real images;
- FID floor (beyond the paper): FID between two disjoint sets of G_s samples of the same N, what
  FID_pre would be for a generator that draws the same distribution from other latents. At small N
  it is far from 0 (the estimate's own bias), so FID_pre is read as a multiple of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..config import GuideConfig
from ..models.fid import FeatureStats, InceptionFeatures
from ..models.identity import cosine
from ..results import Metrics
from .inversion import ProgressFn, encode, project


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


FLOOR_SEED_OFFSET = 1_000_000  # the floor's second set: fid_seed + this, latents disjoint from FID_pre's


def floor_seed(fid_seed: int) -> int:
    return fid_seed + FLOOR_SEED_OFFSET


def default_fid_samples(device: torch.device) -> int:
    """5000 as the paper on a GPU; 500 on CPU, where Inception runs at ~10 images/s."""
    return 5000 if device.type == "cuda" else 500


@torch.no_grad()
def generator_features(generator, inception: InceptionFeatures, samples: int, seed: int, batch: int) -> np.ndarray:
    """[samples, D] Inception features of images from z ~ N(0, I) drawn with ``seed`` (ψ = 1), and for
    a 3D generator random cameras drawn from the same seed, so G_s and G_u are measured on the same
    latents and views (as the official evaluate_fid.py)."""
    rng = torch.Generator().manual_seed(seed)
    feats = []
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), generator.z_dim, generator=rng).to(generator.device)
        camera = generator.sample_camera(len(z), rng)  # None for camera-free generators
        feats.append(inception(generator(z, camera)).double().cpu().numpy())
    return np.concatenate(feats)


def generator_stats(generator, inception: InceptionFeatures, samples: int, seed: int, batch: int) -> FeatureStats:
    """The statistics of ``generator_features``."""
    return FeatureStats.from_features(generator_features(generator, inception, samples, seed, batch))


@dataclass
class FidResult:
    fid_pre: float
    delta_fid_real: float | None
    samples: int


def fid_scores(g_s, g_u, inception: InceptionFeatures, samples: int, seed: int, batch: int,
               real: FeatureStats | None = None, g_s_stats: FeatureStats | None = None,
               g_u_stats: FeatureStats | None = None) -> FidResult:
    """FID_pre and (when real statistics are given) ΔFID_real. ``g_s_stats``, ``g_u_stats`` reuse G_s's, G_u's."""
    before = g_s_stats or generator_stats(g_s, inception, samples, seed, batch)
    after = g_u_stats or generator_stats(g_u, inception, samples, seed, batch)
    delta = after.fid(real) - before.fid(real) if real is not None else None
    return FidResult(fid_pre=before.fid(after), delta_fid_real=delta, samples=samples)


def latest(nets, slot: str, key: tuple, compute):
    """``compute()``, or its value kept in ``nets.fid_cache[slot]`` when computed last for ``key``: one
    slot, so that identities evaluated on one G_u (a joint fleet's) measure it once, and a worker
    that evaluates one G_u after another keeps no more than the latest."""
    kept = nets.fid_cache.get(slot)
    if kept is None or kept[0] != key:
        kept = nets.fid_cache[slot] = (key, compute())
    return kept[1]


def face_scores(nets, generator, ws: torch.Tensor) -> tuple[list[float], str | None]:
    """The face detector's score of each G(w); a detector that fails scores every image as no face
    and the error is returned (it becomes part of the verdict, never a crash)."""
    with torch.no_grad():
        images = torch.cat([generator.synthesis(w[None]) for w in ws])
    try:
        return [float(v) for v in nets.faces(images)], None
    except Exception as e:  # whatever the detector raises, the images count as no face
        return [nets.faces.no_face] * len(ws), f"{type(e).__name__}: {e}"


def evaluate_run(g_s, g_u, w_u, w_t, w_others, source_image, cfg: GuideConfig, nets, photo: bool,
                 g_u_fit=None, progress: ProgressFn | None = None) -> Metrics:
    """ID, ID_others, inversion ID, re-inversion ID, face scores and face_kept, FID_pre (and
    ΔFID_real with real statistics), all on full-resolution renders. ``nets``: the frozen networks
    (run.networks.Networks: the ID metric, the face check, Inception and the caches of G_s's
    statistics); ``photo``: the source is a photo (not a seed); ``g_u_fit``: the view of G_u the
    re-inversion fits through (default G_u); ``progress``: the re-inversion's per-step callback."""
    ev = cfg.evaluation
    metrics: dict[str, object] = {"id": float(identity_similarity(nets.id_metric, g_s, g_u, w_u, ev.id_views)[0])}
    source_and_target = generated_identity(nets.id_metric, g_s, torch.cat([w_u, w_t]))
    metrics["id_target"] = float(cosine(source_and_target[0], source_and_target[1]))  # how far UFO moved
    with torch.no_grad():  # is the person in the generator at all? (1 for a seed: its image is G_s(w_u))
        source_id = nets.id_metric.embed_generated(source_image, g_u.ffhq_box)
        metrics["inversion_id"] = float(cosine(source_id, generated_identity(nets.id_metric, g_s, w_u))[0])
    if w_others is not None:
        each = identity_similarity(nets.id_metric, g_s, g_u, w_others, ev.id_views)
        metrics["id_others"] = float(each.mean())
        metrics["id_others_each"] = [float(v) for v in each]
    errors = []
    (metrics["face_source"], metrics["face_target"]), error = face_scores(nets, g_s, torch.cat([w_u, w_t]))
    errors.append(error)
    after, error = face_scores(nets, g_u, w_u if w_others is None else torch.cat([w_u, w_others]))
    errors.append(error)
    metrics["face_after"] = after[0]
    if w_others is not None:
        metrics["face_others_each"] = after[1:]
    if ev.reinversion:
        # The source image projected into G_u with a fresh projector: is the person still drawable?
        # (from the encoder's latent when there is one, as the first inversion)
        g_fit = g_u if g_u_fit is None else g_u_fit
        encoder = nets.encoder_for(g_fit)
        fit = project(g_fit, source_image, nets.perceptual, cfg.inversion, progress=progress,
                      init_ws=None if encoder is None else encode(g_fit, encoder, source_image), id_net=nets.id_loss)
        with torch.no_grad():
            metrics["reinversion_id"] = float(cosine(source_id, generated_identity(nets.id_metric, g_u, fit.ws))[0])
        (metrics["face_reinversion"],), error = face_scores(nets, g_u, fit.ws)
        errors.append(error)
        after.append(metrics["face_reinversion"])
    fingerprint, g_u_fingerprint = generator_fingerprint(g_s), generator_fingerprint(g_u)
    if ev.face_samples:  # random faces of G_s must stay faces in G_u
        with torch.no_grad():
            z = torch.randn(ev.face_samples, g_s.z_dim, generator=torch.Generator().manual_seed(ev.fid_seed))
            ws = g_s.mapping(z.to(g_s.device))
        face_key = ("faces", fingerprint, ev.face_samples, ev.fid_seed)
        # G_s is the same for every identity of a fleet: scored once (a detector failure is not kept)
        before, error_before = nets.fid_cache.get(face_key) or face_scores(nets, g_s, ws)
        if error_before is None:
            nets.fid_cache[face_key] = before, None
        samples_after, error_after = latest(nets, "faces_g_u", (g_u_fingerprint, *face_key[1:]),
                                            lambda: face_scores(nets, g_u, ws))
        errors += [error_before, error_after]
        faces = [i for i, v in enumerate(before) if nets.faces.is_face(v)]
        metrics["face_samples_before"], metrics["face_samples_after"] = before, samples_after
        after.extend(samples_after[i] for i in faces)
    metrics["face_kept"] = sum(nets.faces.is_face(v) for v in after) / len(after)
    if any(errors):
        metrics["face_check_error"] = "; ".join(e for e in errors if e)
    samples = ev.fid_samples or default_fid_samples(nets.device)
    before = nets.pretrained_stats(g_s, fingerprint, samples, ev.fid_seed, ev.fid_batch)
    floor = before.fid(nets.pretrained_stats(g_s, fingerprint, samples, floor_seed(ev.fid_seed), ev.fid_batch))
    real = None
    if ev.real_stats:  # loaded once per Networks (its covariance factor is cached on it)
        if ("real", ev.real_stats) not in nets.fid_cache:
            nets.fid_cache[("real", ev.real_stats)] = FeatureStats.load(ev.real_stats)
        real = nets.fid_cache[("real", ev.real_stats)]
    g_u_stats = latest(nets, "stats_g_u", (g_u_fingerprint, samples, ev.fid_seed),
                       lambda: generator_stats(g_u, nets.inception, samples, ev.fid_seed, ev.fid_batch))
    fid = fid_scores(g_s, g_u, nets.inception, samples, ev.fid_seed, ev.fid_batch, real, before, g_u_stats)
    metrics.update(fid_pre=fid.fid_pre, delta_fid_real=fid.delta_fid_real, fid_samples=fid.samples,
                   fid_floor=floor, fid_pre_ratio=fid.fid_pre / floor)
    return Metrics(**metrics)
