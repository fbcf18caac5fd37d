"""Inversion on the real generators and ST-LPIPS: recovery of generated faces, early stopping,
determinism, the encoder slot, and real openpeople photos."""

import re
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from guide_ray import weights
from guide_ray.core.inversion import (LatentEncoder, ProjectorConfig, encode, invert_photo, project,
                                      random_source)
from guide_ray.models.face_align import FaceError, photo_to_generator_crop
from tests.helpers import require_weights

QUIET = ProjectorConfig(noise_strength=0.0)  # no latent noise: the first step starts exactly at the init


@pytest.fixture(scope="module")
def perceptual():
    from guide_ray.models import load_perceptual

    require_weights("stlpips-vgg")
    return load_perceptual("stlpips-vgg", "cpu")


@pytest.fixture(scope="module")
def photo():
    require_weights("openpeople", "dlib-landmarks68", "dlib-mmod")
    return weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"


def pixel_distance(a, b):
    """A stand-in perceptual distance where the test is about the optimiser, not the metric."""
    return (a - b).square().mean(dim=(1, 2, 3))


def losses_at(generator, ws, target, perceptual, config):
    with torch.no_grad():
        image = generator.synthesis(ws)
        perc = perceptual(image, target).mean()
        pixel = F.mse_loss(image, target)
    return perc.item(), pixel.item(), (config.lambda_perceptual * perc + config.lambda_pixel * pixel).item()


@pytest.mark.slow
def test_projection_recovers_a_generated_face(dcgan, perceptual):
    target = dcgan.synthesis(random_source(dcgan, 7)).detach()
    config = ProjectorConfig(steps=100)
    start = time.perf_counter()
    result = project(dcgan, target, perceptual, config)
    per_step = (time.perf_counter() - start) / result.steps_run
    perc0, pixel0, _ = losses_at(dcgan, dcgan.w_avg[None], target, perceptual, config)
    perc, pixel = result.losses["perceptual"], result.losses["pixel"]
    print(f"DCGAN seed 7 from w_avg, {result.steps_run} steps ({per_step * 1000:.0f} ms/step): "
          f"perceptual {perc0:.3f} -> {perc:.3f}, pixel MSE {pixel0:.4f} -> {pixel:.4f}")
    assert result.ws.shape == (1, 1, dcgan.w_dim) and not result.ws.requires_grad
    assert perc < 0.3 * perc0 and pixel < 0.3 * pixel0
    assert (result.image - target).abs().mean() < 0.105  # close on a [-1, 1] scale (0.1008 with torch 2.14.1)
    torch.testing.assert_close(result.image, dcgan.synthesis(result.ws).detach())
    assert len(result.history) == result.steps_run and result.history[-1] < result.history[0]


def test_w_and_w_plus_coincide_for_a_single_layer_generator(dcgan):
    target = dcgan.synthesis(random_source(dcgan, 3)).detach()
    w = project(dcgan, target, pixel_distance, replace(ProjectorConfig(), space="w", steps=10))
    w_plus = project(dcgan, target, pixel_distance, replace(ProjectorConfig(), space="w+", steps=10))
    assert torch.equal(w.ws, w_plus.ws) and w.history == w_plus.history


class TinyGenerator(nn.Module):
    """A stand-in 4-layer generator: each W+ row paints one quadrant of a 16 px image."""

    name, z_dim, w_dim, num_ws, resolution, ffhq_box = "tiny", 8, 8, 4, 16, (0.0, 0.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.to_rgb = nn.Linear(8, 3 * 8 * 8)
        self.register_buffer("w_avg", torch.zeros(8))
        self.device = torch.device("cpu")

    def mapping(self, z, c=None, truncation_psi=1.0):
        return z[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, c=None):
        quads = torch.tanh(self.to_rgb(ws)).view(-1, 4, 3, 8, 8)
        top, bottom = torch.cat([quads[:, 0], quads[:, 1]], -1), torch.cat([quads[:, 2], quads[:, 3]], -1)
        return torch.cat([top, bottom], -2)


def test_w_space_shares_one_latent_across_layers():
    torch.manual_seed(0)
    g = TinyGenerator()
    target = g.synthesis(torch.randn(1, 4, 8)).detach()  # a different latent per layer
    config = replace(QUIET, steps=150, lr=0.1, early_stop_patience=0)
    w = project(g, target, pixel_distance, replace(config, space="w"))
    w_plus = project(g, target, pixel_distance, replace(config, space="w+"))
    assert w.ws.shape == w_plus.ws.shape == (1, 4, 8)
    assert (w.ws == w.ws[:, :1]).all() and not (w_plus.ws == w_plus.ws[:, :1]).all()
    assert w_plus.losses["total"] < 0.5 * w.losses["total"]  # W+ can fit what one W cannot


@pytest.mark.slow
def test_mobilestylegan_projection_runs_and_leaves_the_generator_alone(mobilestylegan, perceptual):
    g = mobilestylegan
    flags = {name: p.requires_grad for name, p in g.named_parameters()}
    assert any(flags.values())  # the synthesis network is trainable: LTU fine-tunes it
    target = g.synthesis(random_source(g, 11)).detach()
    start = time.perf_counter()
    result = project(g, target, perceptual, replace(ProjectorConfig(), steps=2))
    print(f"MobileStyleGAN: {(time.perf_counter() - start) / 2:.1f} s/step (incl. the final evaluation); "
          f"losses {result.losses}")
    assert result.ws.shape == (1, 23, 512) and result.image.shape == (1, 3, 1024, 1024)
    assert all(np.isfinite(v) for v in result.losses.values()) and np.isfinite(result.history).all()
    assert {name: p.requires_grad for name, p in g.named_parameters()} == flags
    assert all(p.grad is None for p in g.parameters()) and all(p.grad is None for p in perceptual.parameters())


def test_early_stopping_on_a_flat_objective(dcgan):
    target = dcgan.synthesis(dcgan.w_avg[None]).detach()  # already reached at the start
    result = project(dcgan, target, pixel_distance, replace(QUIET, steps=500, early_stop_patience=10))
    assert result.stopped_early and result.steps_run == 11
    assert max(result.history) == 0.0
    assert not project(dcgan, target, pixel_distance, replace(QUIET, steps=12, early_stop_patience=0)).stopped_early


def test_same_seed_same_latent(dcgan):
    target = dcgan.synthesis(random_source(dcgan, 5)).detach()
    config = replace(ProjectorConfig(), steps=8, noise_strength=0.1)  # the seed drives the latent noise
    runs = [project(dcgan, target, pixel_distance, replace(config, seed=s)).ws for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


class TinyEncoder(nn.Module):
    """A stand-in encoder: a small conv net mapping images to W+ offsets from w_avg."""

    def __init__(self, num_ws: int, w_dim: int):
        super().__init__()
        self.num_ws, self.w_dim = num_ws, w_dim
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                 nn.Flatten(), nn.Linear(8 * 16, num_ws * w_dim))

    def forward(self, images):
        return self.net(images).view(-1, self.num_ws, self.w_dim)


@pytest.mark.slow
def test_encoder_guess_starts_the_projection(dcgan, perceptual, photo):
    torch.manual_seed(0)
    encoder = TinyEncoder(dcgan.num_ws, dcgan.w_dim)
    assert isinstance(encoder, LatentEncoder)
    target = photo_to_generator_crop(photo, dcgan.resolution, box=dcgan.ffhq_box)
    guess = encode(dcgan, encoder, target)
    torch.testing.assert_close(guess, dcgan.w_avg + encoder(target))
    assert guess.shape == (1, 1, dcgan.w_dim) and not guess.requires_grad

    config = replace(QUIET, steps=3)
    result = invert_photo(dcgan, photo, perceptual, config, encoder=encoder)
    torch.testing.assert_close(result.target, target)
    _, _, total_at_guess = losses_at(dcgan, guess, target, perceptual, config)
    assert result.history[0] == pytest.approx(total_at_guess, rel=1e-5)
    assert result.history[0] != pytest.approx(losses_at(dcgan, dcgan.w_avg[None], target, perceptual, config)[2])

    # 0 steps: the encoder's latent as is (the official GUIDE inverts with GOAE alone)
    as_is = invert_photo(dcgan, photo, perceptual, replace(QUIET, steps=0), encoder=encoder)
    assert torch.equal(as_is.ws, guess) and as_is.steps_run == 0
    with pytest.raises(ValueError, match="0 only with an encoder"):
        invert_photo(dcgan, photo, perceptual, replace(QUIET, steps=0))

    with pytest.raises(ValueError, match=r"offsets of shape \(1, 5\)"):
        encode(dcgan, lambda images: torch.zeros(1, 5), target)


@pytest.mark.slow
def test_photo_inversion_finds_the_persons_face(dcgan, perceptual, photo):
    from guide_ray.models import load_identity_net

    require_weights("facenet-vggface2")
    net = load_identity_net("facenet-vggface2", "cpu")
    result = invert_photo(dcgan, photo, perceptual, replace(ProjectorConfig(), steps=150))
    with torch.no_grad():
        def embed(img):
            return net.embed_generated(img, frame=dcgan.ffhq_box)

        person = embed(result.target)
        projected = F.cosine_similarity(person, embed(result.image)).item()
        average = F.cosine_similarity(person, embed(dcgan.synthesis(dcgan.w_avg[None]))).item()
        randoms = [F.cosine_similarity(person, embed(dcgan.synthesis(random_source(dcgan, s)))).item()
                   for s in range(8)]
    print(f"identity cosine to the photo: projection {projected:.3f}, average face {average:.3f}, "
          f"random samples {np.round(randoms, 3).tolist()} ({result.steps_run} steps, losses {result.losses})")
    # DCGAN (64 px, trained on synthetic DigiFace) cannot draw these people closely: the projection
    # must beat the average face and a typical random face, not every random face.
    assert projected > average and projected > np.mean(randoms)


def test_photo_without_a_face_names_the_file(dcgan, perceptual, photo, tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(path)
    with pytest.raises(FaceError, match=re.escape(f"no face found in {path}")):
        invert_photo(dcgan, path, perceptual)


def test_the_identity_term_pulls_the_latent_towards_the_photos_identity():
    """lambda_id adds 1 - cos(id(G(w)), id(photo)) of the ID LOSS net: with it the fit ends closer to
    the target's identity than without, on the same start and steps; without a net it is refused."""
    from tests.tiny import TinyGenerator, TinyIdentity

    g, id_net = TinyGenerator(), TinyIdentity()
    target = g.synthesis(random_source(g, 3)).detach()
    config = replace(QUIET, steps=30, early_stop_patience=0, lambda_perceptual=0.0, lambda_pixel=0.0, lr=0.05)
    with pytest.raises(ValueError, match="lambda_id=1.0 needs an identity network"):
        project(g, target, pixel_distance, replace(config, lambda_id=1.0))
    target_id = id_net.embed_generated(target)

    def identity_gap(fit):
        return 1 - F.cosine_similarity(id_net.embed_generated(fit.image), target_id).item()

    without = project(g, target, pixel_distance, replace(config, lambda_pixel=1e-9), id_net=id_net)
    with_id = project(g, target, pixel_distance, replace(config, lambda_id=1.0), id_net=id_net)
    assert "id" in with_id.losses and "id" not in without.losses
    assert identity_gap(with_id) < 0.5 * identity_gap(without)
    assert with_id.losses["id"] == pytest.approx(identity_gap(with_id), abs=1e-5)


def test_the_prior_keeps_the_fit_where_the_generators_latents_live():
    """lambda_prior adds the latent's per-coordinate squared Mahalanobis distance under the mapped
    latents' Gaussian: ~1 for held-out mapped latents, large far outside them; a fit of an image
    drawn from a latent far outside ends nearer the generator's latents with it than without."""
    from guide_ray.core.inversion import LatentPrior, _mapped_latents
    from tests.tiny import TinyGenerator

    g = TinyGenerator()
    samples = _mapped_latents(g, QUIET.init_samples, QUIET.seed)  # what project() fits its prior to
    prior = LatentPrior(samples)
    assert float(prior(_mapped_latents(g, 4000, 1))) == pytest.approx(1.0, abs=0.1)
    _, _, directions = torch.linalg.svd(samples - samples.mean(0), full_matrices=False)
    spread = (samples - samples.mean(0)) @ directions[-1]  # the samples' least-varied direction
    far = (samples.mean(0) + 6 * spread.std() * directions[-1]).expand(1, g.num_ws, g.w_dim)
    assert float(prior(far)) > 5
    target = g.synthesis(far).detach()
    config = replace(QUIET, space="w", steps=150, lr=0.05, early_stop_patience=0)
    free = project(g, target, pixel_distance, config)
    held = project(g, target, pixel_distance, replace(config, lambda_prior=0.05))
    assert "prior" in held.losses and "prior" not in free.losses
    assert held.losses["prior"] == pytest.approx(float(prior(held.ws)), rel=1e-4)
    assert float(prior(held.ws)) < 0.5 * float(prior(free.ws))
