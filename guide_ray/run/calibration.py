"""The ID metric's levels, calibrated on openpeople (10 people, 4 single-face photos each).

An attack "brings the person back" when its image is as close to the photo as another photo of the
same person is, and a stranger rarely is: the same-person level is the lowest similarity that at
most FALSE_ACCEPT of the different-person pairs reach. The different-person level (their mean) is
where a stranger sits on average: a run's `erased` (core/verdict.py, through Networks.thresholds) and
an audit's `resisted` are judged by it; both read this one calibration. Each level comes with the share of
different-person pairs at or above it (the false-accept rate) and of same-person pairs (true accepts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from .. import weights
from ..images import load_image
from ..models.face_align import FaceError, default_aligner
from ..models.identity import cosine
from .files import write_json

PHOTOS = ("studio_portrait", "studio_posture", "amateur_selfie", "amateur_posture")
FALSE_ACCEPT = 0.01
VERSION = 2  # of the cached file's fields and key


@dataclass(frozen=True)
class Calibration:
    metric: str
    persons: int
    photos: int
    same_pairs: int
    different_pairs: int
    different_person_level: float  # mean similarity of two different people
    different_person_far: float  # share of different-person pairs at or above it
    different_person_tar: float
    same_person_level: float  # the lowest level reached by at most FALSE_ACCEPT of the different-person pairs
    same_person_far: float
    same_person_tar: float  # share of same-person pairs at or above it
    same_person_mean: float
    skipped: tuple[str, ...] = ()  # photos without one usable face
    different_similarities: tuple[float, ...] = ()  # every different-person pair's, ascending

    def false_accept(self, value: float) -> float:
        """The share of different-person pairs at least as similar as ``value``: how often a stranger
        would score what an attack scored."""
        ordered = np.asarray(self.different_similarities)
        return float(len(ordered) - np.searchsorted(ordered, value, side="left")) / len(ordered)

    def to_dict(self) -> dict:
        return asdict(self)

    def levels(self) -> dict:
        """The levels with their false-accept and true-accept rates (what a result records beside
        the thresholds it was judged by), without the pairs' similarities."""
        return {k: v for k, v in asdict(self).items() if k != "different_similarities"}


def rates(level: float, same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(false-accept rate, true-accept rate) of the line ``level``."""
    return float((different >= level).mean()), float((same >= level).mean())


def levels_from(metric: str, same: np.ndarray, different: np.ndarray, photos: int, persons: int,
                skipped: tuple[str, ...] = ()) -> Calibration:
    """The two levels from the similarities of same-person and different-person pairs."""
    different_level = float(different.mean())
    ordered = np.sort(different)
    allowed = int(np.floor(FALSE_ACCEPT * len(ordered)))  # pairs that may reach the same-person level
    same_level = float(np.nextafter(ordered[len(ordered) - allowed - 1], np.inf))
    d_far, d_tar = rates(different_level, same, different)
    s_far, s_tar = rates(same_level, same, different)
    return Calibration(metric, persons, photos, len(same), len(different), different_level, d_far, d_tar,
                       same_level, s_far, s_tar, float(same.mean()), skipped, tuple(float(v) for v in ordered))


def calibrate(metric_net, metric: str) -> Calibration:
    """Embed every openpeople photo of PHOTOS with ``metric_net`` and calibrate its levels."""
    root, aligner = weights.directory("openpeople"), default_aligner()
    embeddings, owners, skipped = [], [], []
    with torch.no_grad():
        for person in sorted(p.name for p in root.iterdir() if p.is_dir()):
            for photo in PHOTOS:
                path = root / person / "assets" / f"{photo}.jpg"
                image = load_image(path)
                try:
                    face = aligner.face(image, str(path), multiple="largest")
                except FaceError:
                    skipped.append(f"{person}/{photo}")
                    continue
                embeddings.append(metric_net.embed_photo(image, face))
                owners.append(person)
    sim = cosine(torch.cat(embeddings)[:, None], torch.cat(embeddings)[None]).numpy()
    same = np.array([sim[i, j] for i, j in combinations(range(len(owners)), 2) if owners[i] == owners[j]])
    different = np.array([sim[i, j] for i, j in combinations(range(len(owners)), 2) if owners[i] != owners[j]])
    return levels_from(metric, same, different, len(owners), len(set(owners)), tuple(skipped))


def calibration_key(metric: str) -> str:
    """What the levels depend on: the metric and its weights, the photos (their list and files) and
    the false-accept rate. A change to any of them is a new cache entry, never a stale one."""
    manifest = weights.manifest()
    digests = {name: [f.sha256 for f in manifest[name].files] for name in (metric, "openpeople") if name in manifest}
    key = json.dumps({"metric": metric, "weights": digests, "photos": PHOTOS, "false_accept": FALSE_ACCEPT,
                      "version": VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cached_calibration(metric_net, metric: str) -> Calibration:
    """``calibrate``, kept in the weights cache under ``calibration_key`` (seconds to redo; the same
    photos and network give the same numbers)."""
    path = weights.cache_dir() / "calibration" / f"{metric}-{calibration_key(metric)}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return Calibration(**{**data, "skipped": tuple(data["skipped"]),
                              "different_similarities": tuple(data["different_similarities"])})
    found = calibrate(metric_net, metric)
    write_json(Path(path), found.to_dict())
    return found
