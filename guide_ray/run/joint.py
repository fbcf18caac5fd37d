"""Many identities erased jointly into one generator (core/joint.py), one rank's part, with files.

Layout (OUT = the fleet's runs folder): OUT/ID/ as an identity's run (latents.pt, grid.png,
losses.json, result.json; the checkpoint is the joint one), OUT/_joint/checkpoint.safetensors (the
one generator) and OUT/_joint/joint.json (the targets, the pairwise ID among the erased faces and
among the targets, the loss history). Inversions are each rank's share of the identities, written
once: a rerun or a restarted rank finds them on disk.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import GuideConfig, config_hash
from ..core.evaluate import generated_identity
from ..core.joint import JointUnlearning
from ..models.checkpoint import metadata_json, save_trainable
from ..results import RunResult
from .files import atomic_write, write_json
from .folder import CHECKPOINT, JOINT
from .identity import IdentitySpec, SourceLatents, invert_identity, record_identity, training_view
from .networks import Networks



def sources_of(generator, specs: list[IdentitySpec], cfg: GuideConfig, nets: Networks, runs: Path, rank: int,
               world: int, barrier: Callable[[], None]) -> list[SourceLatents]:
    """Every identity's latents: this rank inverts its share (specs[rank::world]) unless already on
    disk (RUNS/ID/sources.pt), then, after ``barrier``, all are read back."""
    for spec in specs[rank::world]:
        path = runs / spec.id / "sources.pt"
        if not path.exists():
            found = invert_identity(generator, spec, cfg, nets, show_progress=False).to("cpu")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f, found=found: torch.save(vars(found), f))
    barrier()
    return [SourceLatents(**torch.load(runs / s.id / "sources.pt", map_location="cpu", weights_only=True)).to(
        generator.device) for s in specs]


@torch.no_grad()
def pairwise_id(metric_net, generator, ws: torch.Tensor) -> torch.Tensor:
    """[N, N] ID (cosine of the metric's embeddings) between the images of ``ws``."""
    emb = F.normalize(generated_identity(metric_net, generator, ws), dim=-1)
    return emb @ emb.T


def off_diagonal(m: torch.Tensor) -> dict[str, float]:
    values = m[~torch.eye(len(m), dtype=torch.bool)]
    return {"max": float(values.max()), "mean": float(values.mean())} if len(values) else {"max": None, "mean": None}


def run_joint(generator, specs: list[IdentitySpec], cfg: GuideConfig, nets: Networks, runs: str | Path, *,
              identities_per_step: int, rank: int = 0, world: int = 1, wrap=lambda m: m,
              barrier: Callable[[], None] = lambda: None, resume: dict | None = None,
              on_checkpoint: Callable[[dict], None] | None = None,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[RunResult]:
    """Erase ``specs`` jointly from ``generator`` (in place); this rank's part of a run of ``world``.

    ``on_checkpoint(state)`` every ``cfg.checkpoint_every`` steps and at the end (``state`` is what
    ``resume`` continues from); ``on_step`` after every step. After training each rank evaluates its
    share of the identities on the final generator; rank 0 writes the checkpoint and joint.json.
    Returns this rank's identities' results.
    """
    runs, t_start = Path(runs), time.perf_counter()
    joint_dir = runs / JOINT
    sources = sources_of(generator, specs, cfg, nets, runs, rank, world, barrier)
    g_train = training_view(generator, cfg)
    # targets are one person at the metric's calibrated same-person level: the different-person level
    # (0.203; 0.232 when this was seen) sits below what two DCGAN faces already share (0.257), and re-aiming every target there
    # sent some of them back towards their own person (ID to it up to 0.31)
    same_person = nets.calibration.same_person_level
    distinct = (lambda img: nets.id_metric.embed_generated(img, generator.ffhq_box), same_person)
    run = JointUnlearning(g_train, [s.w_u for s in sources], cfg, nets.id_loss, nets.perceptual,
                          identities_per_step=identities_per_step, rank=rank, world=world, face_check=nets.faces,
                          distinct=distinct, wrap=wrap, progress=on_step, on_checkpoint=on_checkpoint, resume=resume)
    run.advance(cfg.iterations)
    joint = run.finish()
    result = joint.identities[0]  # what every identity shares: status, steps, history, G_s
    g_s = result.g_s.full
    checkpoint = joint_dir / CHECKPOINT
    if rank == 0:
        save_trainable(checkpoint, {n: p for n, p in generator.named_parameters() if n in set(result.trainable)},
                       generator.name, metadata_json({"identities": ";".join(s.id for s in specs),
                                                      "config_hash": config_hash(cfg), "mode": "joint"}))
        w_us = torch.cat([s.w_u for s in sources])
        write_json(joint_dir / "joint.json", {
            "identities": [s.id for s in specs], "identities_per_step": identities_per_step, "workers": world,
            "steps": result.steps, "seconds": result.seconds,  # the whole run, every attempt
            "started_at_step": result.resumed_from,  # > 0: this attempt resumed from a checkpoint
            "status": result.status, "message": result.message,
            "target_clashes": {specs[j].id: [specs[i].id for i in c] for j, c in enumerate(joint.clashes) if c},
            # distinct identities must not end as one face: ID between the erased faces G_u(w_u^i), and
            # between the targets G_s(w_t^i) they were sent to
            "pairwise_id_erased": off_diagonal(pairwise_id(nets.id_metric, generator, w_us)),
            "pairwise_id_targets": off_diagonal(pairwise_id(nets.id_metric, g_s,
                                                            torch.cat([r.w_t for r in joint.identities]))),
            "losses": result.history})
    barrier()  # the checkpoint is on disk before any identity's result names it
    results = []
    for i in range(rank, len(specs), world):  # the losses are the run's, in joint.json
        ltu = dataclasses.replace(joint.identities[i], history=[])
        results.append(record_identity(generator, specs[i], cfg, nets, runs / specs[i].id, ltu, sources[i], {},
                                       t_start, g_train=g_train, loop="joint", checkpoint=checkpoint))
    return results
