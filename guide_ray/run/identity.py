"""One identity, end to end: source latent -> UFO target -> LTU -> evaluation -> files.

The fleet, the sweep and the CLI call ``run_identity``; it knows nothing of Ray or MLflow. An
output folder holds ``result.json`` (config and hash, metrics, timings, latent distances),
``latents.pt`` (w_u, w_t, the other photos' latents), ``checkpoint.safetensors`` (the trained
tensors) and ``grid.png``; while LTU runs, ``state.pt`` (written atomically every
``checkpoint_every`` steps) lets a rerun resume where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..config import GuideConfig, config_hash, to_dict
from ..core.evaluate import evaluate_run, identity_similarity
from ..core.inversion import ProjectionResult, invert_photo, random_source
from ..core.ltu import unlearn
from ..core.ufo import whole_norm
from ..core.verdict import Verdict, judge
from ..images import save_png, to_uint8
from ..models.checkpoint import metadata_json, save_trainable
from ..results import Metrics, RunResult
from .files import atomic_write, write_json
from .folder import CHECKPOINT
from .networks import Networks


class RunExists(ValueError):
    """The output folder already holds a finished run (or an unfinished one with another config)."""


@dataclass
class IdentitySpec:
    """Who to erase: a photo (``image``) or a seed (the Random scenario); ``others`` are photos
    of the same person used only for ID_others. Paths given as strings become Paths."""

    id: str
    image: Path | None = None
    seed: int | None = None
    others: list[Path] = field(default_factory=list)

    def __post_init__(self):
        if (self.image is None) == (self.seed is None):
            raise ValueError(f"identity {self.id!r}: give exactly one of image and seed")
        self.image = None if self.image is None else Path(self.image)
        self.others = [Path(p) for p in self.others]

    def to_dict(self) -> dict:
        """JSON-ready (paths as strings); ``IdentitySpec(**d)`` gives the spec back."""
        return {"id": self.id, "image": None if self.image is None else str(self.image), "seed": self.seed,
                "others": [str(p) for p in self.others]}


def progress_bar(desc: str, total: int, enabled: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


def bar_callback(bar):
    """A projection's per-step callback that advances ``bar``."""
    def progress(step, losses):
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total']:.4f}")
    return progress


def check_output_folder(out: Path, cfg_hash: str, overwrite: bool) -> dict | None:
    """Refuse a finished run unless ``overwrite``; return an unfinished run's state to resume."""
    result, state = out / "result.json", out / "state.pt"
    if overwrite:
        for f in (result, state):
            f.unlink(missing_ok=True)
        return None
    if result.exists():
        status = json.loads(result.read_text()).get("status")
        raise RunExists(f"{out} already holds a {status} run ({result}); pass --overwrite to replace it")
    if state.exists():
        saved = torch.load(state, map_location="cpu", weights_only=True)
        if saved["config_hash"] != cfg_hash:
            raise RunExists(f"{out} holds an unfinished run with another config (hash {saved['config_hash']}, "
                            f"this one {cfg_hash}); pass --overwrite to start again")
        return saved
    return None


@dataclass
class SourceLatents:
    """w_u, the image it stands for (the aligned photo, or G_s(w_u) for a seed), the other photos'
    latents ([K, num_ws, w_dim] or None), the inversion's final losses and the other photos as
    aligned ([K, 3, R, R], for the review grid)."""

    w_u: torch.Tensor
    source_image: torch.Tensor
    w_others: torch.Tensor | None
    inversion_losses: dict | None = None
    others_images: torch.Tensor | None = None

    def to(self, device) -> "SourceLatents":
        def move(t):
            return None if t is None else t.to(device)

        return SourceLatents(self.w_u.to(device), self.source_image.to(device), move(self.w_others),
                             self.inversion_losses, move(self.others_images))


def training_view(generator, cfg: GuideConfig):
    """The generator LTU trains: ``generator`` itself, or its view at ``cfg.train_resolution``
    (sharing its parameters)."""
    return generator if cfg.train_resolution is None else generator.at_resolution(cfg.train_resolution)


def inversion_view(generator, cfg: GuideConfig):
    """The generator photos are inverted through (and re-inverted, in the evaluation):
    ``cfg.inversion.resolution``, else the training resolution."""
    resolution = cfg.inversion.resolution or cfg.train_resolution
    return generator if resolution is None else generator.at_resolution(resolution)


def invert_identity(generator, spec: IdentitySpec, cfg: GuideConfig, nets: Networks,
                    show_progress: bool = True) -> SourceLatents:
    """The identity's latents in ``generator``: its photo and other photos inverted (through
    ``inversion_view``), or its seed mapped; latents and images are the full generator's."""
    g_fit = inversion_view(generator, cfg)

    def invert(path) -> ProjectionResult:
        with progress_bar(f"{spec.id}: inverting {Path(path).name}", cfg.inversion.steps, show_progress) as bar:
            fit = invert_photo(g_fit, path, nets.perceptual, cfg.inversion, encoder=nets.encoder_for(g_fit),
                               progress=bar_callback(bar), id_net=nets.id_loss)
        if g_fit is not generator:  # the photo as the full generator's evaluation sees it
            from ..models.face_align import generator_crop

            fit.target = generator_crop(path, generator)
        return fit

    if spec.seed is not None:
        w_u = random_source(generator, spec.seed)
        with torch.no_grad():
            source_image, losses = generator.synthesis(w_u), None
    else:
        fit = invert(spec.image)
        w_u, source_image, losses = fit.ws, fit.target, fit.losses
    others = [invert(p) for p in spec.others]
    return SourceLatents(w_u, source_image, torch.cat([o.ws for o in others]) if others else None, losses,
                         torch.cat([o.target for o in others]) if others else None)


def run_identity(generator, spec: IdentitySpec, cfg: GuideConfig, nets: Networks, out: str | Path, *,
                 loop: str = "optimised", overwrite: bool = False, show_progress: bool = True,
                 sources: SourceLatents | None = None, rehearse: torch.Tensor | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> RunResult:
    """Unlearn ``spec`` from ``generator`` (in place: it becomes G_u) and write the run's files.

    ``sources``: the identity's latents when already inverted (else they are computed here);
    ``on_step(step, losses)``: called after every LTU step (the fleet logs the losses live);
    ``rehearse``: latents of identities erased before, rehearsed with cfg.rehearsal (ltu.Problem).
    Returns the result, also written to ``result.json``. A run whose loss diverges ends with
    status "diverged" and the last good weights; a rerun of an unfinished run resumes it.
    """
    out = Path(out)
    cfg_hash = config_hash(cfg)
    resume = check_output_folder(out, cfg_hash, overwrite)
    t_start = time.perf_counter()
    times: dict[str, float] = {}

    if resume is not None:
        sources = SourceLatents(**resume["sources"])
    elif sources is None:
        t = time.perf_counter()
        sources = invert_identity(generator, spec, cfg, nets, show_progress)
        times["inversion_s"] = time.perf_counter() - t
    sources = sources.to(generator.device)
    w_u = sources.w_u

    def save_state(state: dict) -> None:
        state.update(config_hash=cfg_hash, sources=vars(sources.to("cpu")))
        atomic_write(out / "state.pt", lambda f: torch.save(state, f))

    with progress_bar(f"{spec.id}: unlearning", cfg.iterations, show_progress) as bar:
        bar.update(resume["step"] if resume else 0)

        def progress(step, losses):
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("total", "local", "adj", "global")})
            if on_step is not None:
                on_step(step, losses)

        g_train = training_view(generator, cfg)  # training it trains ``generator``
        ltu = unlearn(g_train, w_u, cfg, nets.id_loss, nets.perceptual, face_check=nets.faces, loop=loop,
                      progress=progress, on_checkpoint=save_state, resume=resume, rehearse=rehearse)
    return record_identity(generator, spec, cfg, nets, out, ltu, sources, times, t_start, g_train=g_train, loop=loop,
                           show_progress=show_progress)


def record_identity(generator, spec: IdentitySpec, cfg: GuideConfig, nets: Networks, out: Path, ltu, sources: SourceLatents,
                    times: dict[str, float], t_start: float, *, g_train, loop: str,
                    checkpoint: Path | None = None, show_progress: bool = False) -> RunResult:
    """Evaluate G_u (``generator``, trained through ``g_train``) on ``spec`` after LTU (``ltu``: an
    LTUResult) and write the run's files: checkpoint.safetensors (unless ``checkpoint`` names one
    this generator was saved to, as a joint run's), latents.pt, grid.png, losses.json, result.json."""
    cfg_hash = config_hash(cfg)
    w_u, w_others = sources.w_u, sources.w_others
    g_s = ltu.g_s.full
    times["unlearn_s"] = ltu.seconds
    times["s_per_iteration"] = ltu.seconds / ltu.steps if ltu.steps else None

    t = time.perf_counter()
    photo = spec.image is not None
    with progress_bar("re-inverting the source into G_u", cfg.inversion.steps, show_progress and cfg.evaluation.reinversion) as bar:
        metrics = evaluate_run(g_s, generator, w_u, ltu.w_t, w_others, sources.source_image, cfg, nets, photo,
                               g_u_fit=inversion_view(generator, cfg), progress=bar_callback(bar))
    if g_train is not generator:  # the erasure as training saw it, beside the full-resolution ID above
        metrics.id_train_resolution = float(identity_similarity(nets.id_metric, ltu.g_s, g_train, w_u,
                                                                   cfg.evaluation.id_views)[0])
    verdict = judge(metrics, photo, nets.thresholds)
    times["evaluation_s"] = time.perf_counter() - t

    if checkpoint is None:
        checkpoint = save_trainable(out / CHECKPOINT,
                                    {n: p for n, p in generator.named_parameters() if n in set(ltu.trainable)},
                                    generator.name, metadata_json({"identity": spec.id, "config_hash": cfg_hash}))
    torch.save({"w_u": w_u.cpu(), "w_t": ltu.w_t.cpu(), "w_others": None if w_others is None else w_others.cpu()},
               out / "latents.pt")
    title = grid_title(spec.id, generator.name, verdict, metrics) + ("" if ltu.status == "finished" else f" | {ltu.status}")
    save_png(run_grid(g_s, generator, w_u, ltu.w_t, w_others, sources.source_image if spec.image else None,
                      sources.others_images, title), out / "grid.png")
    first = ltu.steps - len(ltu.history)  # > 0 only after a resume from a checkpoint that kept no history
    write_json(out / "losses.json", [{"step": first + i, **h} for i, h in enumerate(ltu.history)])
    times["total_s"] = time.perf_counter() - t_start
    scale = ltu.distance_scale
    result = RunResult(
        identity=spec.id, generator=generator.name, status=ltu.status, message=ltu.message,
        verdict=verdict.verdict,
        verdict_detail={**{k: v for k, v in verdict.to_dict().items() if k != "verdict"},
                        "calibration": nets.levels_used()},  # the levels' rates beside the thresholds used
        source={"image": str(spec.image) if spec.image else None, "seed": spec.seed,
                "others": [str(p) for p in spec.others]},
        config=to_dict(cfg), config_hash=cfg_hash, loop=loop,
        train_resolution=g_train.resolution, resolution=generator.resolution,
        metrics=metrics, timings=times, steps=ltu.steps,
        final_losses=ltu.history[-1] if ltu.history else None, inversion_losses=sources.inversion_losses,
        latents={
            "distance_scale": scale, "geometry": ltu.target.geometry,
            # d_used: the config distance the target was made with (less than d when G_s(w_t) at d was no face)
            "d_used": ltu.target.d / scale, "d_effective": ltu.target.d, "alpha_max_effective": cfg.alpha_max * scale,
            "target_face_score": ltu.target.face_score, "target_tries": ltu.target.tries,
            "target_face_check_error": ltu.target.error,
            "w_u_to_avg": float(whole_norm(w_u - generator.w_avg)),
            "w_t_to_avg": float(whole_norm(ltu.w_t - generator.w_avg)),
            "w_t_to_w_u": float(whole_norm(ltu.w_t - w_u)),
        },
        trainable_parameters=sum(p.numel() for n, p in generator.named_parameters() if n in set(ltu.trainable)),
        checkpoint=str(checkpoint),
    )
    write_json(out / "result.json", result.to_dict())
    (out / "state.pt").unlink(missing_ok=True)
    return result


def grid_title(identity: str, generator: str, verdict: Verdict, metrics: Metrics) -> str:
    return (f"{identity} | {generator} | {verdict.verdict} | ID {metrics.id:.3f} | face kept "
            f"{metrics.face_kept:.0%} | FID_pre {metrics.fid_pre:.2f}"
            + ("" if metrics.fid_floor is None else f" (floor {metrics.fid_floor:.1f})"))


@torch.no_grad()
def run_grid(g_s, g_u, w_u, w_t, w_others, photo, others_photos, title: str):
    """The review grid (guide_ray.review.identity_grid): the source photo (None for a seed),
    G_s(w_u), G_s(w_t), G_u(w_u), then each other photo (when known) with G_s(w_o) and G_u(w_o)."""
    from ..review import identity_grid

    def pic(img):
        return to_uint8(img)[0]

    others = [(None if others_photos is None else pic(others_photos[i:i + 1]), pic(g_s.synthesis(w[None])),
               pic(g_u.synthesis(w[None]))) for i, w in enumerate(w_others if w_others is not None else [])]
    return identity_grid(title, pic(g_s.synthesis(w_u)), pic(g_s.synthesis(w_t)), pic(g_u.synthesis(w_u)),
                         None if photo is None else pic(photo), others)
