"""The frozen networks a run needs (loss nets, ID metric, face check, encoder, Inception), loaded
once per worker and shared by its identities, with the caches of G_s's evaluation statistics."""

from __future__ import annotations

import numpy as np
import torch

from .. import weights
from ..config import GuideConfig
from ..core.verdict import Thresholds
from ..models import load_encoder, load_identity_net, load_perceptual
from ..models.face_check import FaceCheck
from .calibration import Calibration, cached_calibration
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
        self._id_metric_name = cfg.id_metric_net
        self._calibration: Calibration | None = None
        self._id_threshold = cfg.evaluation.id_threshold
        self._face_kept_min = cfg.evaluation.face_kept_min
        self._inception = None
        self.fid_cache: dict[tuple, object] = {}  # G_s statistics (FID, face scores), reused across identities

    def encoder_for(self, generator):
        """The LatentEncoder for ``generator`` (offsets from its w_avg), or None without an encoder."""
        return None if self.encoder is None else self.encoder.for_generator(generator)

    @property
    def calibration(self) -> Calibration:
        """The ID metric's levels (run.calibration, cached per machine): the verdict's and the audit's."""
        if self._calibration is None:
            self._calibration = cached_calibration(self.id_metric, self._id_metric_name)
        return self._calibration

    @property
    def thresholds(self) -> Thresholds:
        """The verdict's thresholds; the ID level is the calibration's different-person level unless
        the config sets evaluation.id_threshold."""
        level = self._id_threshold if self._id_threshold is not None else self.calibration.different_person_level
        return Thresholds(level, self.faces.threshold, self._face_kept_min, self.faces.name)

    def levels_used(self) -> dict | None:
        """The calibration the verdict's ID level came from, with its false-accept and true-accept
        rates (for result.json beside the thresholds); None when the config set the level."""
        return None if self._id_threshold is not None else self.calibration.levels()

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
