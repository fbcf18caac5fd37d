"""The frozen networks a run needs (loss nets, ID metric, face check, encoder, Inception), loaded
once per worker and shared by its identities, with the caches of G_s's evaluation statistics."""

from __future__ import annotations

import numpy as np
import torch

from .. import weights
from ..config import GuideConfig
from ..core.verdict import Thresholds
from ..images import load_image
from ..models import load_encoder, load_identity_net, load_perceptual
from ..models.face_align import default_aligner
from ..models.face_check import FaceCheck
from ..models.identity import cosine
from .files import atomic_write


class Networks:
    """The frozen networks a run needs, loaded once and shared by many identities.

    The loss networks are stored channels-last (the same math; ~12% faster convolutions on CPU)
    unless ``channels_last`` is False.
    """

    def __init__(self, cfg: GuideConfig, device: torch.device | str, channels_last: bool = True):
        self.device = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.perceptual = load_perceptual(cfg.perceptual_net, self.device).to(memory_format=fmt)
        self.id_loss = load_identity_net(cfg.id_loss_net, self.device).to(memory_format=fmt)
        self.id_metric = load_identity_net(cfg.id_metric_net, self.device)
        # the inversion's encoder (cfg.inversion.encoder: GOAE, pSp or e4e), bound to a generator by encoder_for
        self.encoder = load_encoder(cfg.inversion.encoder, self.device) if cfg.inversion.encoder else None
        self.faces = FaceCheck(cfg.evaluation.face_detector, cfg.evaluation.face_threshold, self.device)
        self._id_threshold = cfg.evaluation.id_threshold
        self._face_kept_min = cfg.evaluation.face_kept_min
        self._inception = None
        self.fid_cache: dict[tuple, object] = {}  # G_s statistics (FID, face scores), reused across identities

    def encoder_for(self, generator):
        """The LatentEncoder for ``generator`` (offsets from its w_avg), or None without an encoder."""
        return None if self.encoder is None else self.encoder.for_generator(generator)

    @property
    def thresholds(self) -> Thresholds:
        """The verdict's thresholds; the ID level is the metric's different-person level unless the
        config sets evaluation.id_threshold (measured once, on openpeople's portraits: seconds)."""
        if self._id_threshold is None:
            self._id_threshold = different_person_level(self.id_metric)
        return Thresholds(self._id_threshold, self.faces.threshold, self._face_kept_min, self.faces.name)

    def pretrained_stats(self, generator, fingerprint: str, samples: int, seed: int, batch: int):
        """Inception statistics of a pre-trained generator's samples (core.evaluate.generator_stats),
        kept in memory and in the weights cache, keyed by its weights' fingerprint, N, seed and batch:
        a generator's FID_pre reference and floor sets are computed once per machine."""
        key = (fingerprint, samples, seed, batch)
        if key not in self.fid_cache:
            from ..core.evaluate import generator_features
            from ..models.fid import FeatureStats

            # the features, not mu and sigma: for N <= D their centred rows factor sigma exactly (no eigh)
            path = weights.cache_dir() / "fid-features" / f"{fingerprint}-n{samples}-seed{seed}-b{batch}.npy"
            if not path.is_file():
                features = generator_features(generator, self.inception, samples, seed, batch)
                atomic_write(path, lambda f: np.save(f, features))
            self.fid_cache[key] = FeatureStats.from_features(np.load(path))
        return self.fid_cache[key]

    @property
    def inception(self):
        if self._inception is None:
            from ..models.fid import InceptionFeatures

            self._inception = InceptionFeatures(device=self.device)
        return self._inception


def different_person_level(metric_net) -> float:
    """The metric's mean similarity between different people: openpeople's studio portraits,
    every pair of identities. An erased identity's ID should fall below it."""
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
