"""One verdict per identity, from its metrics, with the thresholds it used.

ID alone cannot tell an erasure from a wreck: a smear is as unlike the person as another face
is, and a person the generator never drew cannot be erased from it. So, in this order:

- ``not_represented``: a photo whose inversion is not the person (inversion ID to the photo below
  the metric's different-person level): erasing it would erase someone else. Seeds are
  represented by construction.
- ``face_destroyed``: G_u(w_u) is not a face, or fewer than ``face_kept_min`` of the after-images
  are (G_u(w_u), each G_u(w_o), the re-inversion, G_u(z) of random latents whose G_s(z) is a face).
- ``erased``: ID (G_s(w_u) vs G_u(w_u)) below the different-person level.
- ``not_erased``: otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..results import Metrics

VERDICTS = ("erased", "not_erased", "face_destroyed", "not_represented")


@dataclass(frozen=True)
class Thresholds:
    id_level: float  # ID below it: a different person (the metric's different-person level)
    face: float  # face detector score at or above it: a face
    face_kept_min: float  # share of after-images that must be faces
    face_detector: str


@dataclass(frozen=True)
class Verdict:
    verdict: str
    represented: bool
    reason: str
    thresholds: Thresholds

    def to_dict(self) -> dict:
        return {**asdict(self), "thresholds": asdict(self.thresholds)}


def judge(metrics: Metrics, photo: bool, thresholds: Thresholds) -> Verdict:
    """The verdict on one identity's metrics (it reads id, inversion_id, face_after, face_kept)."""
    t = thresholds
    represented = not photo or metrics.inversion_id >= t.id_level
    if not represented:
        return Verdict("not_represented", False, f"the inversion is not the person: its ID to the photo is "
                       f"{metrics.inversion_id:.3f} < {t.id_level:.3f}", t)
    after, kept = metrics.face_after, metrics.face_kept
    failed = f"; the face detector failed: {metrics.face_check_error}" if metrics.face_check_error else ""
    if after < t.face:
        return Verdict("face_destroyed", True, f"G_u(w_u) is not a face ({t.face_detector} score "
                       f"{after:.3f} < {t.face:.3f}){failed}", t)
    if kept < t.face_kept_min:
        return Verdict("face_destroyed", True, f"only {kept:.0%} of the after-images are faces "
                       f"(at least {t.face_kept_min:.0%} needed){failed}", t)
    if metrics.id < t.id_level:
        return Verdict("erased", True, f"ID {metrics.id:.3f} < {t.id_level:.3f} and the after-images are faces", t)
    return Verdict("not_erased", True, f"ID {metrics.id:.3f} >= {t.id_level:.3f}: G_u(w_u) is still the person", t)
