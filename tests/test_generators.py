"""The two open generators on their real weights: parity, gradients, latents, sampling."""

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image

import torch.nn.functional as F

from guide_ray import cli, weights
from guide_ray.images import to_uint8
from guide_ray.models import Generator, load_generator
from guide_ray.models.face_align import FaceError, default_aligner

SEEDS = (0, 1, 2, 3)


def openvino_models():
    folder = weights.directory("mobilestylegan-ffhq1024")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    return [core.compile_model(core.read_model(folder / f), "CPU", config)
            for f in ("MappingNetwork.xml", "SynthesisNetwork.xml")]


@pytest.mark.slow
def test_mobilestylegan_matches_openvino(mobilestylegan):
    ov_mapping, ov_synthesis = openvino_models()
    worst_w = worst_img = 0.0
    with torch.no_grad():
        for seed in SEEDS:
            z = mobilestylegan.z_from_seed(seed)
            w_ov = ov_mapping(z.numpy())[0]
            img_ov = ov_synthesis(w_ov)[0]
            w = mobilestylegan.mapping_net(z)
            img = mobilestylegan.synthesis_net(torch.from_numpy(w_ov))  # same input for both runtimes
            worst_w = max(worst_w, float(np.abs(w.numpy() - w_ov).max()))
            worst_img = max(worst_img, float(np.abs(img.numpy() - img_ov).max()))
            assert img.shape == (1, 3, 1024, 1024)
    print(f"max |diff| over seeds {SEEDS}: mapping {worst_w:.2e}, synthesis {worst_img:.2e}")
    assert worst_w <= 1e-3 and worst_img <= 1e-3


@pytest.mark.slow
def test_gradients_reach_every_synthesis_parameter(mobilestylegan):
    params = list(mobilestylegan.trainable_parameters())
    assert sum(p.numel() for p in params) > 7_000_000
    assert not any(p.requires_grad for p in mobilestylegan.mapping_net.parameters())
    ws = mobilestylegan.mapping(mobilestylegan.z_from_seed(5))
    img = mobilestylegan.synthesis(ws)
    img.square().mean().backward()
    missing = [n for n, p in mobilestylegan.synthesis_net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    mobilestylegan.zero_grad(set_to_none=True)
    assert not missing


@pytest.mark.slow
def test_w_plus_reaches_each_layer(mobilestylegan):
    g = mobilestylegan
    assert g.num_ws == 23 and g.w_avg.shape == (512,)
    with torch.no_grad():
        ws = g.mapping(g.z_from_seed(1))
        assert ws.shape == (1, 23, 512) and torch.equal(ws[:, 0], ws[:, 22])
        base = g.synthesis(ws)
        torch.testing.assert_close(base, g.synthesis(ws[:, 0]))  # W and broadcast W+ agree
        fine = ws.clone()
        fine[:, -1] = g.mapping(g.z_from_seed(2))[:, 0]  # only the last (to-RGB) layer changes
        changed = g.synthesis(fine)
    diff = (changed - base).abs()
    assert diff.max() > 0.05
    assert diff.mean() < (g.synthesis(g.mapping(g.z_from_seed(2))).detach() - base).abs().mean()


def test_w_avg_is_the_mapping_mean(mobilestylegan):
    g = mobilestylegan
    cached = list(weights.weight_dir("mobilestylegan-ffhq1024").glob("w_avg-n100000-seed0-*.npy"))
    assert len(cached) == 1
    with torch.no_grad():
        w = g.mapping_net(torch.randn(10_000, 512, generator=torch.Generator().manual_seed(123)))
    spread = (w - g.w_avg).norm(dim=1).mean()
    assert (w.mean(0) - g.w_avg).norm() < 0.05 * spread  # an independent estimate agrees
    with torch.no_grad():
        at_avg = g.synthesis(g.w_avg[None])
        psi0 = g(g.z_from_seed(9), truncation_psi=0.0)
    torch.testing.assert_close(at_avg, psi0)  # truncation psi=0 is the average face


@pytest.mark.parametrize("fixture,resolution", [("dcgan", 64), ("mobilestylegan", 1024)])
def test_images_shape_range_determinism(request, fixture, resolution):
    g = request.getfixturevalue(fixture)
    assert isinstance(g, Generator)
    with torch.no_grad():
        z = torch.cat([g.z_from_seed(0), g.z_from_seed(1)])
        a = g(z)
        b = g(z)
    assert a.shape == (2, 3, resolution, resolution) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.1
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same image
    assert (a[0] - a[1]).abs().mean() > 0.05  # different seeds, different faces


def test_dcgan_is_batch_independent_and_trainable(dcgan):
    z = torch.cat([dcgan.z_from_seed(s) for s in range(4)])
    dcgan.train()  # batch-norm keeps its running statistics even in training mode
    try:
        alone = dcgan(z[:1])
        together = dcgan(z)[:1]
        torch.testing.assert_close(alone, together)
        together.mean().backward()
        assert all(p.grad is not None for p in dcgan.trainable_parameters())
    finally:
        dcgan.eval().zero_grad(set_to_none=True)
    assert dcgan.num_ws == 1


def test_dcgan_w_avg_is_the_average_face(dcgan):
    # Loading (and computing w_avg) leaves the checkpoint's tensors, batch-norm statistics included, as they were.
    saved = torch.load(weights.path("dcgan-digiface64"), map_location="cpu", weights_only=True)["netG_state_dict"]
    for key, value in dcgan.synthesis_net.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    z = torch.randn(2000, dcgan.z_dim, generator=torch.Generator().manual_seed(7))  # not w_avg's samples
    with torch.no_grad():
        images = dcgan(z)
        mean_face = images.mean(0, keepdim=True)
        at_avg, at_zero = dcgan.synthesis(dcgan.w_avg[None]), dcgan.synthesis(torch.zeros(1, dcgan.w_dim))
    sample_error = ((images - mean_face) ** 2).flatten(1).mean(1)
    assert ((at_avg - mean_face) ** 2).mean() < sample_error.min()  # closer to the mean face than any sample
    assert 0.8 < dcgan.w_avg.norm() / dcgan.z_dim ** 0.5 < 1.2  # on the shell where faces live, not z = 0
    aligner = default_aligner()
    upscale = lambda img: to_uint8(F.interpolate(img, scale_factor=4, mode="bicubic"))[0]  # noqa: E731
    aligner.face(upscale(at_avg), "G(w_avg)")  # a face...
    with pytest.raises(FaceError):
        aligner.face(upscale(at_zero), "G(0)")  # ...where z = 0 gives a face-less texture


@pytest.mark.slow
def test_generators_load_from_user_paths(tmp_path, dcgan, mobilestylegan):
    ckpt = tmp_path / "my_dcgan.pt"
    torch.save({"netG_state_dict": dcgan.synthesis_net.state_dict()}, ckpt)
    mine = load_generator(ckpt, "cpu")
    z = dcgan.z_from_seed(3)
    with torch.no_grad():
        torch.testing.assert_close(mine(z), dcgan(z))
    folder = load_generator(weights.directory("mobilestylegan-ffhq1024"), "cpu")
    torch.testing.assert_close(folder.w_avg, mobilestylegan.w_avg)
    with pytest.raises(ValueError, match="not a DCGAN generator checkpoint"):
        torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pt")
        load_generator(tmp_path / "bad.pt", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name,seeds,size", [("dcgan-digiface64", "0-5", 64), ("mobilestylegan-ffhq1024", "7,8", 1024)])
def test_sample_cli_writes_pngs_and_grid(tmp_path, capsys, name, seeds, size):
    out = tmp_path / "out"
    assert cli.main(["sample", "--generator", name, "--seeds", seeds, "--out", str(out), "--device", "cpu"]) == 0
    wanted = cli.parse_seeds(seeds)
    files = sorted(out.glob("seed*.png"))
    assert [f.name for f in files] == [f"seed{s:04d}.png" for s in wanted]
    first = np.asarray(Image.open(files[0]))
    assert first.shape == (size, size, 3) and first.std() > 10
    assert not np.array_equal(first, np.asarray(Image.open(files[1])))
    assert Image.open(out / "grid.png").size[0] >= 2 * size
    assert str(out.resolve()) in capsys.readouterr().out


def test_seed_lists_parse():
    assert cli.parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    with pytest.raises(Exception, match="bad seed list"):
        cli.parse_seeds("a-b")
