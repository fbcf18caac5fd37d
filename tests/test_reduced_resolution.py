"""MobileStyleGAN trained at a reduced resolution (train_resolution): the truncated IR graph, the
fitted RGB head, the view that shares the full generator's weights, and a run end to end whose
erasure lands in the 1024² generator. Real weights throughout."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from guide_ray.config import ConfigError, load_config
from guide_ray.run.identity import IdentitySpec, run_identity
from guide_ray.run.networks import Networks
from guide_ray.models import load_generator
from guide_ray.models.mobilestylegan import cut_layer
from tests.helpers import require_weights

pytestmark = pytest.mark.slow  # real generators end to end: minutes on 2 cores


def test_the_truncated_graph_runs_only_what_its_layer_needs(mobilestylegan):
    graph = mobilestylegan.synthesis_net
    ws = mobilestylegan.mapping(mobilestylegan.z_from_seed(2))
    last = graph.layers[graph.output_ids[0]].inputs[0][0]  # the layer the Result reads
    with torch.no_grad():
        torch.testing.assert_close(graph(ws, until=last), graph(ws), rtol=0, atol=0)
    cut = cut_layer(graph, 128)
    features = graph(ws, until=cut)
    assert features.shape == (1, 512, 64, 64)
    features.square().mean().backward()
    below = {id(p) for p in graph.parameters_until(cut)}
    for name, p in graph.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum())
        assert has_grad == (id(p) in below), name
    mobilestylegan.zero_grad(set_to_none=True)
    assert 0 < len(below) < len(list(graph.parameters()))


def test_the_reduced_view_trains_the_full_generator(mobilestylegan):
    full = copy.deepcopy(mobilestylegan)
    view = full.at_resolution(256)
    assert view.resolution == 256 and view.full is full
    assert {n for n, _ in view.named_parameters()} == {n for n, _ in full.named_parameters()}  # one naming
    trainable = list(view.trainable_parameters())
    top = full.synthesis_net.parameters_until(full.synthesis_net.layers[full.synthesis_net.output_ids[0]].id)
    assert len(trainable) < len(top)
    ws = full.mapping(full.z_from_seed(4))
    with torch.no_grad():
        before_full, before_view = full.synthesis(ws), view.synthesis(ws)
        assert before_view.shape == (1, 3, 256, 256)
        # the W+ entries above the cut change the full image, never the view's
        moved = ws.clone()
        moved[:, view.used_ws:] += 0.5
        torch.testing.assert_close(view.synthesis(moved), before_view, rtol=0, atol=0)
        assert not torch.allclose(full.synthesis(moved), before_full)
        trainable[0].mul_(1.1)  # as an optimiser step on the view would
        assert not torch.allclose(full.synthesis(ws), before_full)
    # G_s as LTU makes it: a deep copy whose full generator shares the copy's weights
    frozen = copy.deepcopy(view)
    assert frozen.full.synthesis_net is frozen.synthesis_net and frozen.synthesis_net is not view.synthesis_net


def test_an_inversion_through_the_view_is_a_latent_of_the_full_generator(mobilestylegan):
    require_weights("stlpips-vgg")
    from guide_ray.core.inversion import ProjectorConfig, project
    from guide_ray.models import load_perceptual

    view = mobilestylegan.at_resolution(128)
    with torch.no_grad():
        target = mobilestylegan.synthesis(mobilestylegan.mapping(mobilestylegan.z_from_seed(6)))
    fit = project(view, target, load_perceptual("stlpips-vgg", "cpu"), ProjectorConfig(steps=4, early_stop_patience=0))
    assert fit.ws.shape == (1, mobilestylegan.num_ws, 512) and fit.target.shape[-1] == 128
    # the entries the view never reads keep the projector's start, w_avg: a latent the 1024² network renders as such
    assert torch.equal(fit.ws[0, view.used_ws:], mobilestylegan.w_avg.expand(view.num_ws - view.used_ws, -1))
    assert not torch.equal(fit.ws[0, :view.used_ws], mobilestylegan.w_avg.expand(view.used_ws, -1))


def test_the_head_draws_the_full_image_downsampled(mobilestylegan):
    view = mobilestylegan.at_resolution(256)
    psnr = []
    with torch.no_grad():
        for seed in (0, 1, 2, 3):
            ws = mobilestylegan.mapping(mobilestylegan.z_from_seed(seed))
            reference = F.avg_pool2d(mobilestylegan.synthesis(ws), 4)
            mse = F.mse_loss(view.synthesis(ws), reference)
            psnr.append(float(10 * torch.log10(4 / mse)))
            # a head that ignored the features would be far off: the mean face colour scores ~10 dB
            flat = reference.mean((2, 3), keepdim=True).expand_as(reference)
            assert psnr[-1] > float(10 * torch.log10(4 / F.mse_loss(flat, reference))) + 6
    assert sum(psnr) / len(psnr) > 20, psnr  # measured on 100 seeds: benchmarks/reduced_resolution.py


def test_ltu_steps_the_folded_weights_as_the_official_code_steps_the_unscaled_ones(mobilestylegan, dcgan):
    from guide_ray.core.ltu import optimizer_for

    view = mobilestylegan.at_resolution(128)
    params = [(n, p) for n, p in view.named_parameters() if any(p is q for q in view.trainable_parameters())]
    optimizer = optimizer_for(view, params, 1e-4)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == len(params)
    for _, p in params:
        expected = 1e-4 / (p[0].numel() ** 0.5) if p.ndim >= 2 else 1e-4
        assert lr_of[id(p)] == pytest.approx(expected)
    pointwise = next(p for _, p in params if p.shape == (512, 128, 1, 1))
    assert lr_of[id(pointwise)] == pytest.approx(1e-4 / 128 ** 0.5)
    # generators stored with their run-time scales (the DCGAN) train at lr as given
    assert {g["lr"] for g in optimizer_for(dcgan, list(dcgan.named_parameters()), 1e-4).param_groups} == {1e-4}


def test_train_resolutions_a_generator_cannot_offer_are_refused(mobilestylegan, dcgan):
    with pytest.raises(ValueError, match="dcgan-digiface64 renders only at 64x64"):
        dcgan.at_resolution(32)
    with pytest.raises(ValueError, match="cannot be trained at 300x300: its blocks give 8, 16, .*512"):
        mobilestylegan.at_resolution(300)
    assert mobilestylegan.at_resolution(1024) is mobilestylegan
    with pytest.raises(ConfigError, match="train_resolution must be at least 16"):
        load_config(overrides=["train_resolution=8"])
    with pytest.raises(ConfigError, match="inversion.resolution must be at least 16"):
        load_config(overrides=["inversion.resolution=4"])


def test_a_run_at_128_erases_into_the_1024_generator(mobilestylegan, tmp_path):
    require_weights("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "dlib-mmod")
    cfg = load_config(overrides=["train_resolution=128", "iterations=3", "lr=1e-3", "checkpoint_every=3",
                                 "latent_pool=2", "evaluation.fid_samples=4", "evaluation.fid_batch=4",
                                 "evaluation.face_samples=0", "evaluation.reinversion=false"])
    g = copy.deepcopy(mobilestylegan)
    result = run_identity(g, IdentitySpec("s5", seed=5), cfg, Networks(cfg, "cpu"), tmp_path / "run",
                          show_progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["train_resolution"] == 128 and saved["resolution"] == 1024 and saved["config"]["train_resolution"] == 128
    assert result.status == "finished"
    # only the layers below the 128² cut were trained; the checkpoint rebuilds the 1024² G_u
    below = {id(p) for p in g.synthesis_net.parameters_until(cut_layer(g.synthesis_net, 128))}
    names = {n for n, p in g.named_parameters() if id(p) in below}
    assert set(saved["config"]) and result.trainable_parameters == sum(p.numel() for p in g.parameters() if id(p) in below)
    reloaded = load_generator("mobilestylegan-ffhq1024", "cpu", checkpoint=tmp_path / "run" / "checkpoint.safetensors")
    for (name, p), (_, q), (_, s) in zip(g.named_parameters(), reloaded.named_parameters(),
                                         mobilestylegan.named_parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(p, s) == (name not in names), name
    ws = g.mapping(g.z_from_seed(5))
    with torch.no_grad():
        assert reloaded.synthesis(ws).shape == (1, 3, 1024, 1024)
