import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from guide_ray import weights
from guide_ray.images import load_image
from guide_ray.models.perceptual import STLPIPS, OfficialLPIPS, load_perceptual, lpips_linear
from tests.helpers import require_weights

# The sha256 of lpips 0.1.4's linear layers, as the manifest pinned them when they were pulled from
# the lpips wheel (weight "lpips-linear"); OfficialLPIPS now reads them from the installed package.
LPIPS_LINEAR_SHA256 = {"vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                       "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"}


def portrait(person: str, size: int = 256) -> torch.Tensor:
    """A real face photo as a [1, 3, size, size] tensor in [-1, 1]."""
    path = weights.directory("openpeople") / person / "assets" / "studio_portrait.jpg"
    im = Image.fromarray(load_image(path)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def stlpips():
    require_weights("stlpips-vgg")
    return STLPIPS.from_file("stlpips-vgg")


@pytest.fixture(scope="module")
def face():
    require_weights("openpeople")
    return portrait("P001")


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_identity_and_symmetry(stlpips, face):
    other = noisy(face, 0.1)
    with torch.no_grad():
        same = stlpips(torch.cat([face, other]), torch.cat([face, other]))
        ab, ba = stlpips(face, other), stlpips(other, face)
    assert same.shape == (2,)
    assert same.abs().max() < 1e-6
    assert ab.item() > 0.01
    assert ab.item() == pytest.approx(ba.item(), rel=1e-5)


def test_grows_monotonically_with_noise(stlpips, face):
    sigmas = [0.02, 0.05, 0.1, 0.2, 0.4]
    with torch.no_grad():
        d = stlpips(face.expand(len(sigmas), -1, -1, -1), torch.cat([noisy(face, s, i) for i, s in enumerate(sigmas)]))
    assert d[0] > 0
    assert torch.all(d[1:] > d[:-1]), d.tolist()


def test_gradients_reach_the_input(stlpips, face):
    x = torch.nn.functional.interpolate(face, size=128, mode="area")
    x[..., :64] = -1  # a black half: all-zero feature vectors must not give NaN gradients
    x.requires_grad_(True)
    stlpips(x, noisy(x.detach(), 0.1)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in stlpips.parameters())


@pytest.mark.parametrize("net, expected", [("vgg", 0.3088662624), ("alex", 0.2942728996)])
def test_matches_reference_implementation(face, net, expected):
    """Values from stlpips-pytorch 0.0.2's own LPIPS(net, variant='shift_tolerant') on the same pair."""
    require_weights(f"stlpips-{net}")
    model = load_perceptual(f"stlpips-{net}", "cpu")
    assert isinstance(model, STLPIPS) and model.net == net
    with torch.no_grad():
        d = model(face, portrait("P002")).item()
    assert d == pytest.approx(expected, rel=2e-3)


def test_load_perceptual_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown perceptual distance"):
        load_perceptual("dists")


def test_official_lpips_names_the_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(weights.WeightsError) as err:
        load_perceptual("lpips-vgg", "cpu")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "No download is attempted" in message
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("net", sorted(LPIPS_LINEAR_SHA256))
def test_installed_lpips_ships_the_pinned_linear_layers(net):
    linear = lpips_linear(net)
    assert linear.is_file()
    digest = hashlib.sha256(linear.read_bytes()).hexdigest()
    assert digest == LPIPS_LINEAR_SHA256[net]
    manifest = weights.manifest().get("lpips-linear")
    if manifest is not None:  # the same file the weight pulls from the lpips wheel
        assert digest == next(f.sha256 for f in manifest.files if f.path == f"{net}.pth")


def test_official_lpips_uses_the_cached_checkpoint_without_downloading(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    trunk = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(trunk, tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")

    model = OfficialLPIPS("alex")
    assert torch.equal(getattr(model.model.net.slice1, "0").weight, trunk["features.0.weight"])
    assert torch.equal(getattr(model.model.net.slice5, "10").bias, trunk["features.10.bias"])
    with lpips_linear("alex").open("rb") as f:  # the package's layers, not lpips.LPIPS's random init
        linear = torch.load(f, map_location="cpu", weights_only=True)
    assert all(torch.equal(getattr(model.model, f"lin{k}").model[1].weight, linear[f"lin{k}.model.1.weight"])
               for k in range(5))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        d = model(x, x.flip(0))
    assert d.shape == (2,)
    assert d[0] > 0 and d[0].item() == pytest.approx(d[1].item(), rel=1e-5)
