"""What an identity run produces, typed: ``Metrics`` (core.evaluate.evaluate_run) inside a ``RunResult``
(run.identity.run_identity, written as result.json). The ledger, MLflow, the review tables, the CLI
and the sweep read these, and each metric has its one name (the field's) in all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """One identity's evaluation (Sec. 4.1 and beyond; core/evaluate.py says how each is measured).
    ID metrics are cosine similarities of the ID metric network (lower = more forgotten); face
    scores are the face detector's (a face at or above its threshold)."""

    id: float  # G_s(w_u) vs G_u(w_u)
    id_target: float  # G_s(w_u) vs G_s(w_t): how far UFO's target moved from the person
    inversion_id: float  # the source image vs G_s(w_u): is the person in the generator at all
    face_source: float  # G_s(w_u)
    face_target: float  # G_s(w_t)
    face_after: float  # G_u(w_u)
    face_kept: float  # share of the after-images that are faces
    fid_pre: float  # FID between G_s and G_u images of the same latents
    fid_samples: int
    fid_floor: float | None = None  # FID between two disjoint sets of G_s samples of fid_samples each
    fid_pre_ratio: float | None = None  # fid_pre / fid_floor: how many floors G_u's change is
    id_others: float | None = None  # mean ID over the person's other photos
    reinversion_id: float | None = None  # the source image vs its re-inversion into G_u
    face_reinversion: float | None = None
    delta_fid_real: float | None = None  # FID(G_u, real) - FID(G_s, real)
    id_train_resolution: float | None = None  # ID at the training resolution (train_resolution runs)
    id_others_each: list[float] = field(default_factory=list)
    face_others_each: list[float] = field(default_factory=list)
    face_samples_before: list[float] = field(default_factory=list)  # G_s(z) of the random latents
    face_samples_after: list[float] = field(default_factory=list)  # G_u(z)
    face_check_error: str | None = None  # the face detector failed (its images counted as no face)

    def scalars(self) -> dict[str, float]:
        """The metrics that are one number, by name, without the missing ones."""
        return {name: float(getattr(self, name)) for name in SCALARS if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Metrics:
        return cls(**{k: v for k, v in data.items() if k in _FIELDS[cls]})


@dataclass
class RunResult:
    """One identity's run, as result.json holds it; a run that failed before evaluating has only
    ``identity``, ``status`` "failed" and ``error``."""

    identity: str
    status: str  # finished | diverged | failed
    generator: str | None = None
    message: str = ""
    error: str | None = None
    verdict: str | None = None  # core.verdict.VERDICTS
    verdict_detail: dict = field(default_factory=dict)  # represented, reason, thresholds
    source: dict = field(default_factory=dict)  # image, seed, others
    config: dict = field(default_factory=dict)
    config_hash: str | None = None
    loop: str | None = None
    train_resolution: int | None = None
    resolution: int | None = None
    metrics: Metrics | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    steps: int = 0
    final_losses: dict[str, float] | None = None
    inversion_losses: dict[str, float] | None = None
    latents: dict = field(default_factory=dict)  # distances of w_u, w_t and w_avg; the target's d
    trainable_parameters: int = 0
    checkpoint: str | None = None
    erosion: dict | None = None  # sequential fleets: ID of every identity erased so far, FID_pre vs the original

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["metrics"] = None if self.metrics is None else self.metrics.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        values = {k: v for k, v in data.items() if k in _FIELDS[cls]}
        if values.get("metrics") is not None:
            values["metrics"] = Metrics.from_dict(values["metrics"])
        return cls(**values)


_FIELDS = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (Metrics, RunResult)}
# The one-number metrics, in the order tables show them.
SCALARS = tuple(f.name for f in dataclasses.fields(Metrics) if f.type in ("float", "float | None", "int"))
