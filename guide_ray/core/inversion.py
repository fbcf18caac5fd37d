"""GAN inversion: find the latent whose image is a given face, the starting point of GUIDE's
erasure (the paper's In-domain and Out-of-domain scenarios); ``random_source`` is its Random one.

``project`` optimises a latent in W or W+ with Adam so that the generator's image matches the
target under a perceptual distance plus a pixel MSE. An encoder (``LatentEncoder``: offsets from
``w_avg``, as GOAE and pSp/e4e predict them) can give the optimisation its starting point.
Gradients flow into the latent only: the generator's and the perceptual net's parameters keep
their ``requires_grad`` flags and never receive a ``.grad``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ProjectorConfig
from ..models.generator import Generator


@dataclass
class ProjectionResult:
    ws: torch.Tensor  # [1, num_ws, w_dim], detached, on the generator's device
    image: torch.Tensor  # [1, 3, R, R] = synthesis(ws), detached
    target: torch.Tensor  # [1, 3, R, R]: what was fitted, at the generator's resolution
    losses: dict[str, float]  # perceptual, pixel, total at ws
    steps_run: int
    stopped_early: bool
    history: list[float] = field(default_factory=list)  # total loss at each step, before its update


@runtime_checkable
class LatentEncoder(Protocol):
    """Images [B, 3, H, W] in [-1, 1] -> latent offsets from w_avg, [B, num_ws, w_dim]."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


ProgressFn = Callable[[int, dict[str, float]], None]


def random_source(generator: Generator, seed: int) -> torch.Tensor:
    """The paper's Random scenario: w_u = mapping(z of ``seed``), untruncated; [1, num_ws, w_dim]."""
    with torch.no_grad():
        return generator.mapping(generator.z_from_seed(seed), truncation_psi=1.0)


@torch.no_grad()
def encode(generator: Generator, encoder: LatentEncoder, target: torch.Tensor) -> torch.Tensor:
    """An encoder's latent for ``target``: w_avg + its offsets, [B, num_ws, w_dim]."""
    offsets = encoder(target.to(generator.device))
    expected = (target.shape[0], generator.num_ws, generator.w_dim)
    if tuple(offsets.shape) != expected:
        raise ValueError(f"the encoder returned offsets of shape {tuple(offsets.shape)}; expected {expected}")
    return generator.w_avg + offsets


def _fit_target(target: torch.Tensor, generator: Generator) -> torch.Tensor:
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must be one RGB image [1, 3, H, W], got {tuple(target.shape)}")
    target = target.detach().to(generator.device, torch.float32)
    size = generator.resolution
    if target.shape[-2:] != (size, size):
        target = F.interpolate(target, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return target


def _for_perceptual(img: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(img, size=(size, size), mode="area") if img.shape[-1] > size else img


@torch.no_grad()
def _mapped_latents(generator: Generator, samples: int, seed: int) -> torch.Tensor:
    """[samples, w_dim]: mapping of standard normal z drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.z_dim, generator=gen).to(generator.device)
    return torch.cat([generator.mapping(chunk)[:, 0] for chunk in z.split(2500)])


class LatentPrior:
    """The squared Mahalanobis distance of a W latent under a Gaussian fitted to ``samples``
    [N, w_dim] (mapped latents), per coordinate: ~1 for the generator's own latents."""

    def __init__(self, samples: torch.Tensor):
        self.mean = samples.mean(0)
        cov = torch.cov((samples - self.mean).T)
        self.cholesky = torch.linalg.cholesky(cov + 1e-6 * cov.diagonal().mean() * torch.eye(len(cov), device=cov.device))

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        """Mean over the latent's layers of its per-coordinate squared Mahalanobis distance."""
        centred = (ws.reshape(-1, self.mean.numel()) - self.mean).T
        return torch.linalg.solve_triangular(self.cholesky, centred, upper=False).pow(2).mean()


def _initial_latent(generator: Generator, config: ProjectorConfig, init_ws: torch.Tensor | None,
                    samples: torch.Tensor | None) -> torch.Tensor:
    """The starting latent: [1, 1, w_dim] for space "w", [1, num_ws, w_dim] for "w+"."""
    if init_ws is not None:
        ws = init_ws.detach().to(generator.device, torch.float32)
        ws = ws.reshape(1, -1, generator.w_dim)
        if ws.shape[1] not in (1, generator.num_ws):
            raise ValueError(f"init_ws must be [1, {generator.w_dim}] or [1, {generator.num_ws}, "
                             f"{generator.w_dim}], got {tuple(init_ws.shape)}")
    elif config.init == "w_avg":
        ws = generator.w_avg.reshape(1, 1, -1)
    elif config.init == "mean_of_samples":
        ws = samples.mean(0).reshape(1, 1, -1)
    else:
        raise ValueError(f"init must be 'w_avg' or 'mean_of_samples', not {config.init!r}")
    if config.space == "w":
        return ws.mean(1, keepdim=True).clone()  # a W+ guess collapses to its mean layer
    return ws.expand(1, generator.num_ws, generator.w_dim).clone()


def _learning_rate(config: ProjectorConfig, step: int) -> float:
    """Linear warm-up, then flat, then a half-cosine ramp-down; positive at every step."""
    warmup = min(1.0, (step + 1) / (config.lr_rampup * config.steps)) if config.lr_rampup > 0 else 1.0
    remaining = (config.steps - step) / (config.lr_rampdown * config.steps) if config.lr_rampdown > 0 else 1.0
    return config.lr * warmup * (0.5 - 0.5 * math.cos(math.pi * min(1.0, remaining)))


def project(generator: Generator, target: torch.Tensor, perceptual: nn.Module,
            config: ProjectorConfig = ProjectorConfig(), progress: ProgressFn | None = None,
            init_ws: torch.Tensor | None = None, id_net: nn.Module | None = None) -> ProjectionResult:
    """Optimise a latent so that synthesis(latent) matches ``target`` ([1, 3, H, W] in [-1, 1],
    resized to the generator's resolution when needed); start from ``init_ws`` (e.g. ``encode``'s
    guess) when given, else from ``config.init``; 0 steps keep ``init_ws`` (the official GUIDE
    inverts with GOAE alone). ``progress(step, values)`` is called every step
    with the step's perceptual, pixel (and identity) losses, the total and its lr. ``id_net`` (an
    identity network with ``embed_generated``) is needed when ``config.lambda_id`` > 0."""
    if config.space not in ("w", "w+"):
        raise ValueError(f"space must be 'w' or 'w+', not {config.space!r}")
    if config.steps < 0 or (config.steps == 0 and init_ws is None):
        raise ValueError(f"steps must be at least 1 (0 only with an encoder: its latent as is), got {config.steps}")
    target = _fit_target(target, generator)
    target_perceptual = _for_perceptual(target, config.perceptual_size)
    if config.lambda_id and id_net is None:
        raise ValueError(f"lambda_id={config.lambda_id} needs an identity network (id_net)")
    with torch.no_grad():
        target_id = id_net.embed_generated(target, generator.ffhq_box) if config.lambda_id else None
    noisy = config.steps > 0 and config.noise_strength > 0  # 0 steps: no mapped samples needed for it
    needs_samples = noisy or config.lambda_prior > 0 or (init_ws is None and config.init == "mean_of_samples")
    samples = _mapped_latents(generator, config.init_samples, config.seed) if needs_samples else None
    prior = LatentPrior(samples) if config.lambda_prior > 0 else None
    noise_scale = config.noise_strength * float(samples.std(0).mean()) if noisy else 0.0
    noise_gen = torch.Generator(device=generator.device).manual_seed(config.seed)

    latent = _initial_latent(generator, config, init_ws, samples).requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=config.lr, betas=(0.9, 0.999))

    def losses_at(ws: torch.Tensor, fitted: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The losses of ``ws`` (the latent, noised while the noise lasts); the prior judges ``fitted``."""
        image = generator.synthesis(ws.expand(1, generator.num_ws, generator.w_dim))
        perceptual_loss = perceptual(_for_perceptual(image, config.perceptual_size), target_perceptual).mean()
        pixel_loss = F.mse_loss(image, target)
        total = config.lambda_perceptual * perceptual_loss + config.lambda_pixel * pixel_loss
        losses = {"perceptual": perceptual_loss, "pixel": pixel_loss}
        if target_id is not None:
            losses["id"] = 1 - F.cosine_similarity(id_net.embed_generated(image, generator.ffhq_box), target_id).mean()
            total = total + config.lambda_id * losses["id"]
        if prior is not None:
            losses["prior"] = prior(fitted)
            total = total + config.lambda_prior * losses["prior"]
        return image, {**losses, "total": total}

    history: list[float] = []
    best = math.inf
    best_at: list[float] = []  # the best total loss so far, per step
    stopped_early = False
    for step in range(config.steps):
        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ws = latent
        fade = max(0.0, 1 - step / (config.noise_ramp * config.steps)) if config.noise_ramp > 0 else 0.0
        if noise_scale and fade:
            noise = torch.randn(latent.shape, generator=noise_gen, device=latent.device)
            ws = latent + noise * noise_scale * fade ** 2
        _, losses = losses_at(ws, latent)
        # autograd.grad, not backward(): only the latent's gradient is computed, no parameter's .grad is touched.
        (latent.grad,) = torch.autograd.grad(losses["total"], [latent])
        optimizer.step()

        values = {name: value.item() for name, value in losses.items()}
        history.append(values["total"])
        if progress is not None:
            progress(step, {**values, "lr": lr})
        best = min(best, values["total"])
        best_at.append(best)
        patience = config.early_stop_patience
        if patience and step >= patience:
            before = best_at[step - patience]
            if before - best <= config.early_stop_tol * before:
                stopped_early = True
                break

    ws = latent.detach().expand(1, generator.num_ws, generator.w_dim).clone()
    with torch.no_grad():
        image, final = losses_at(ws, ws)
    return ProjectionResult(ws=ws, image=image.detach(), target=target,
                            losses={name: float(value) for name, value in final.items()},
                            steps_run=len(history), stopped_early=stopped_early, history=history)


def invert_photo(generator: Generator, path: str | Path, perceptual: nn.Module,
                 config: ProjectorConfig = ProjectorConfig(), encoder: LatentEncoder | None = None,
                 aligner=None, multiple: Literal["error", "largest"] = "error",
                 progress: ProgressFn | None = None, id_net: nn.Module | None = None) -> ProjectionResult:
    """A face photo -> its latent: align it as the generator's images are (FaceError / ImageError
    name the file), start from the encoder's guess when one is given, then project."""
    from ..models.face_align import generator_crop  # needs dlib, which nothing above does

    target = generator_crop(path, generator, aligner=aligner, multiple=multiple)
    init_ws = encode(generator, encoder, target) if encoder is not None else None
    return project(generator, target, perceptual, config, progress=progress, init_ws=init_ws, id_net=id_net)
