"""One identity, end to end: source latent -> UFO target -> LTU -> evaluation -> files.

The fleet and the CLI call ``run_identity``; it knows nothing of Ray or MLflow. An output folder
holds ``result.json`` (config and hash, metrics, timings, latent distances), ``latents.pt``
(w_u, w_t, the other photos' latents), ``checkpoint.safetensors`` (the trained tensors) and
``grid.png``; while LTU runs, ``state.pt`` (written atomically every ``checkpoint_every`` steps)
lets a rerun resume where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..images import save_png, to_uint8
from ..models import load_encoder, load_identity_net, load_perceptual
from ..models.face_check import FaceCheck
from ..models.identity import cosine
from .checkpoint import metadata_json, save_trainable
from .config import GuideConfig, config_hash, to_dict
from .evaluate import (default_fid_samples, different_person_level, fid_scores, generated_identity,
                       generator_fingerprint, generator_stats, identity_similarity)
from .inversion import ProjectionResult, encode, invert_photo, project, random_source
from .ltu import unlearn
from .ufo import whole_norm
from .verdict import Thresholds, Verdict, judge


class RunExists(ValueError):
    """The output folder already holds a finished run (or an unfinished one with another config)."""


@dataclass
class IdentitySpec:
    """Who to erase: a photo (``image``) or a seed (the Random scenario); ``others`` are photos
    of the same person used only for ID_others."""

    id: str
    image: Path | None = None
    seed: int | None = None
    others: list[Path] = field(default_factory=list)

    def __post_init__(self):
        if (self.image is None) == (self.seed is None):
            raise ValueError(f"identity {self.id!r}: give exactly one of image and seed")


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

    @property
    def inception(self):
        if self._inception is None:
            from ..models.fid import InceptionFeatures

            self._inception = InceptionFeatures(device=self.device)
        return self._inception


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        write(tmp)
    os.replace(tmp.name, path)


def write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=str).encode()))


def _bar(desc: str, total: int, enabled: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


def _project_with_bar(fn, desc: str, steps: int, show: bool, *args, **kwargs) -> ProjectionResult:
    with _bar(desc, steps, show) as bar:
        def progress(step, losses):
            bar.update(1)
            bar.set_postfix(loss=f"{losses['total']:.4f}")
        return fn(*args, progress=progress, **kwargs)


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
        fit = _project_with_bar(invert_photo, f"{spec.id}: inverting {Path(path).name}", cfg.inversion.steps,
                                show_progress, g_fit, path, nets.perceptual, cfg.inversion,
                                encoder=nets.encoder_for(g_fit))
        if g_fit is not generator:  # the photo as the full generator's evaluation sees it
            from ..models.face_align import photo_to_generator_crop

            fit.target = photo_to_generator_crop(path, generator.resolution, box=generator.ffhq_box).to(generator.device)
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
                 sources: SourceLatents | None = None) -> dict:
    """Unlearn ``spec`` from ``generator`` (in place: it becomes G_u) and write the run's files.

    ``sources``: the identity's latents when already inverted (else they are computed here).
    Returns the result dict also written to ``result.json``. A run whose loss diverges ends with
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
    w_u, w_others = sources.w_u, sources.w_others

    def save_state(state: dict) -> None:
        state.update(config_hash=cfg_hash, sources=vars(sources.to("cpu")))
        _atomic_write(out / "state.pt", lambda f: torch.save(state, f))

    with _bar(f"{spec.id}: unlearning", cfg.iterations, show_progress) as bar:
        bar.update(resume["step"] if resume else 0)

        def progress(step, losses):
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("total", "local", "adj", "global")})

        g_train = training_view(generator, cfg)  # training it trains ``generator``
        ltu = unlearn(g_train, w_u, cfg, nets.id_loss, nets.perceptual, face_check=nets.faces, loop=loop,
                      progress=progress, on_checkpoint=save_state, resume=resume)
    g_s = ltu.g_s.full
    times["unlearn_s"] = ltu.seconds
    times["s_per_iteration"] = ltu.seconds / ltu.steps_run if ltu.steps_run else None

    t = time.perf_counter()
    photo = spec.image is not None
    metrics = evaluate_run(g_s, generator, w_u, ltu.w_t, w_others, sources.source_image, cfg, nets, photo,
                           show_progress, g_u_fit=inversion_view(generator, cfg))
    if g_train is not generator:  # the erasure as training saw it, beside the full-resolution ID above
        metrics["id_train_resolution"] = float(identity_similarity(nets.id_metric, ltu.g_s, g_train, w_u,
                                                                   cfg.evaluation.id_views)[0])
    verdict = judge(metrics, photo, nets.thresholds)
    times["evaluation_s"] = time.perf_counter() - t

    checkpoint = save_trainable(out / "checkpoint.safetensors",
                                {n: p for n, p in generator.named_parameters() if n in set(ltu.trainable)},
                                generator.name, metadata_json({"identity": spec.id, "config_hash": cfg_hash}))
    torch.save({"w_u": w_u.cpu(), "w_t": ltu.w_t.cpu(), "w_others": None if w_others is None else w_others.cpu()},
               out / "latents.pt")
    title = grid_title(spec.id, generator.name, verdict, metrics) + ("" if ltu.status == "finished" else f" | {ltu.status}")
    save_png(run_grid(g_s, generator, w_u, ltu.w_t, w_others, sources.source_image if spec.image else None,
                      sources.others_images, title), out / "grid.png")
    first_step = resume["step"] if resume else 0  # a resumed run's history starts where it resumed
    write_json(out / "losses.json", [{"step": first_step + i, **h} for i, h in enumerate(ltu.history)])
    times["total_s"] = time.perf_counter() - t_start
    scale = ltu.distance_scale
    result = {
        "id": spec.id, "generator": generator.name, "status": ltu.status, "message": ltu.message,
        "verdict": verdict.verdict, "verdict_detail": {k: v for k, v in verdict.to_dict().items() if k != "verdict"},
        "source": {"image": str(spec.image) if spec.image else None, "seed": spec.seed,
                   "others": [str(p) for p in spec.others]},
        "config": to_dict(cfg), "config_hash": cfg_hash, "loop": loop,
        "train_resolution": g_train.resolution, "resolution": generator.resolution,
        "metrics": metrics, "timings": times, "steps": ltu.steps_run + (resume["step"] if resume else 0),
        "final_losses": ltu.history[-1] if ltu.history else None, "inversion_losses": sources.inversion_losses,
        "latents": {
            "distance_scale": scale, "geometry": ltu.target.geometry,
            # d_used: the config distance the target was made with (less than d when G_s(w_t) at d was no face)
            "d_used": ltu.target.d / scale, "d_effective": ltu.target.d, "alpha_max_effective": cfg.alpha_max * scale,
            "target_face_score": ltu.target.face_score, "target_tries": ltu.target.tries,
            "target_face_check_error": ltu.target.error,
            "w_u_to_avg": float(whole_norm(w_u - generator.w_avg)),
            "w_t_to_avg": float(whole_norm(ltu.w_t - generator.w_avg)),
            "w_t_to_w_u": float(whole_norm(ltu.w_t - w_u)),
        },
        "trainable_parameters": sum(p.numel() for n, p in generator.named_parameters() if n in set(ltu.trainable)),
        "checkpoint": str(checkpoint),
    }
    write_json(out / "result.json", result)
    (out / "state.pt").unlink(missing_ok=True)
    return result


def face_scores(nets: Networks, generator, ws: torch.Tensor) -> tuple[list[float], str | None]:
    """The face detector's score of each G(w); a detector that fails scores every image as no face
    and the error is returned (it becomes part of the verdict, never a crash)."""
    with torch.no_grad():
        images = torch.cat([generator.synthesis(w[None]) for w in ws])
    try:
        return [float(v) for v in nets.faces(images)], None
    except Exception as e:  # whatever the detector raises, the images count as no face
        return [nets.faces.no_face] * len(ws), f"{type(e).__name__}: {e}"


def evaluate_run(g_s, g_u, w_u, w_t, w_others, source_image, cfg: GuideConfig, nets: Networks, photo: bool,
                 show_progress: bool = False, g_u_fit=None) -> dict:
    """ID, ID_others, inversion ID, re-inversion ID, face scores and face_kept, FID_pre (and
    ΔFID_real with real statistics), all on full-resolution renders. ``photo``: the source is a
    photo (not a seed); ``g_u_fit``: the view of G_u the re-inversion fits through (``inversion_view``;
    default G_u)."""
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
        fit = _project_with_bar(project, "re-inverting the source into G_u", cfg.inversion.steps, show_progress,
                                g_fit, source_image, nets.perceptual, cfg.inversion,
                                init_ws=None if encoder is None else encode(g_fit, encoder, source_image))
        with torch.no_grad():
            metrics["reinversion_id"] = float(cosine(source_id, generated_identity(nets.id_metric, g_u, fit.ws))[0])
        (metrics["face_reinversion"],), error = face_scores(nets, g_u, fit.ws)
        errors.append(error)
        after.append(metrics["face_reinversion"])
    fingerprint = generator_fingerprint(g_s)
    if ev.face_samples:  # random faces of G_s must stay faces in G_u
        with torch.no_grad():
            z = torch.randn(ev.face_samples, g_s.z_dim, generator=torch.Generator().manual_seed(ev.fid_seed))
            ws = g_s.mapping(z.to(g_s.device))
        face_key = ("faces", fingerprint, ev.face_samples, ev.fid_seed)
        # G_s is the same for every identity of a fleet: scored once (a detector failure is not kept)
        before, error_before = nets.fid_cache.get(face_key) or face_scores(nets, g_s, ws)
        if error_before is None:
            nets.fid_cache[face_key] = before, None
        samples_after, error_after = face_scores(nets, g_u, ws)
        errors += [error_before, error_after]
        faces = [i for i, v in enumerate(before) if nets.faces.is_face(v)]
        metrics["face_samples_before"], metrics["face_samples_after"] = before, samples_after
        after.extend(samples_after[i] for i in faces)
    metrics["face_kept"] = sum(nets.faces.is_face(v) for v in after) / len(after)
    if any(errors):
        metrics["face_check_error"] = "; ".join(e for e in errors if e)
    samples = ev.fid_samples or default_fid_samples(nets.device)
    key = (fingerprint, samples, ev.fid_seed)
    if key not in nets.fid_cache:
        nets.fid_cache[key] = generator_stats(g_s, nets.inception, samples, ev.fid_seed, ev.fid_batch)
    real = None
    if ev.real_stats:  # loaded once per Networks (its covariance factor is cached on it)
        from ..models.fid import FeatureStats

        if ("real", ev.real_stats) not in nets.fid_cache:
            nets.fid_cache[("real", ev.real_stats)] = FeatureStats.load(ev.real_stats)
        real = nets.fid_cache[("real", ev.real_stats)]
    fid = fid_scores(g_s, g_u, nets.inception, samples, ev.fid_seed, ev.fid_batch, real, nets.fid_cache[key])
    metrics.update(fid_pre=fid.fid_pre, delta_fid_real=fid.delta_fid_real, fid_samples=fid.samples)
    return metrics


def grid_title(identity: str, generator: str, verdict: Verdict, metrics: dict) -> str:
    return (f"{identity} | {generator} | {verdict.verdict} | ID {metrics['id']:.3f} | face kept "
            f"{metrics['face_kept']:.0%} | FID_pre {metrics['fid_pre']:.2f}")


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
