"""The DCGAN of gan-face-generate (PyTorch DCGAN-tutorial architecture, DigiFace-1M, 64x64).

A DCGAN has no mapping network: its latent z plays the role of w (num_ws = 1), so GUIDE's UFO
target and truncation act on z directly; UFO moves along the sphere on which z's samples lie
(``gaussian_latent``, core/ufo.py). Batch-norm layers always use their running statistics,
also while the synthesis network is fine-tuned, so the generator's function of z does not depend on
the batch.

``w_avg`` is the latent of the average face, not the prior's mean z = 0. In a StyleGAN, w_avg is
both the mean latent and a latent whose image is the average face, and GUIDE uses it as the latter
(the baseline's target, the origin of Eq. 3). Here the two differ: G(0) is a face-less texture
(the first ReLU layer is dead at z = 0, so G's gradient there is zero too) while faces live near
||z|| = sqrt(z_dim). So w_avg is found by fitting G(z) to the pixel mean of ``AVERAGE_FACE_SAMPLES``
images, starting from the sample closest to that mean; it is computed once and cached.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .. import weights
from .generator import GeneratorBase, cached_latent

AVERAGE_FACE_SAMPLES = 10_000
AVERAGE_FACE_SEED = 0
AVERAGE_FACE_STEPS = 300


def _dcgan_net(nz: int, ngf: int, nc: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        stride, pad = (1, 0) if i == 0 else (2, 1)  # 1 -> 4 -> 8 -> 16 -> 32
        layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]  # 32 -> 64
    return nn.Sequential(*layers)


class _FrozenStatsDCGAN(nn.Module):
    def __init__(self, nz: int, ngf: int, nc: int):
        super().__init__()
        self.main = _dcgan_net(nz, ngf, nc)
        self.train()  # puts the batch-norm layers in eval mode from the start

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, z):
        return self.main(z[:, :, None, None])


class DCGAN(GeneratorBase):
    num_ws = 1
    gaussian_latent = True
    # DigiFace crops are tighter than FFHQ's: the FFHQ square of 135/200 samples (dlib landmarks on
    # 4x upscaled images) puts this frame at the mean box below, std 0.03 (tests/test_identity.py).
    ffhq_box = (0.112, 0.098, 0.890, 0.898)

    def __init__(self, state_dict: dict[str, torch.Tensor], name: str = "dcgan-digiface64",
                 w_avg: torch.Tensor | None = None):
        """``w_avg`` defaults to the average-face latent, computed here (``from_file`` caches it)."""
        super().__init__()
        self.name = name
        nz, ngf8 = state_dict["main.0.weight"].shape[:2]
        nc = [v for v in state_dict.values() if v.ndim == 4][-1].shape[1]  # the last conv's outputs
        self.z_dim = self.w_dim = int(nz)
        self.synthesis_net = _FrozenStatsDCGAN(int(nz), int(ngf8) // 8, int(nc))
        self.synthesis_net.load_state_dict(state_dict)
        self.resolution = 64
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        self.w_avg.copy_(w_avg if w_avg is not None else self.average_face_latent())

    @classmethod
    def from_file(cls, path: str | Path, name: str = "dcgan-digiface64") -> "DCGAN":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        sd = ckpt.get("netG_state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict) or "main.0.weight" not in sd:
            raise ValueError(f"{path} is not a DCGAN generator checkpoint (expected a state dict "
                             f"with 'main.0.weight', optionally under 'netG_state_dict')")
        gen = cls(dict(sd), name=name, w_avg=torch.zeros(int(sd["main.0.weight"].shape[0])))
        digest = hashlib.sha256()
        for key in sorted(sd):
            digest.update(key.encode() + sd[key].cpu().contiguous().numpy().tobytes())
        name = (f"dcgan-average-face-n{AVERAGE_FACE_SAMPLES}-seed{AVERAGE_FACE_SEED}-steps{AVERAGE_FACE_STEPS}"
                f"-{digest.hexdigest()[:16]}.npy")
        gen.w_avg.copy_(cached_latent(weights.cache_dir() / "latents" / name, gen.average_face_latent,
                                      "the average-face latent"))
        return gen

    def average_face_latent(self) -> torch.Tensor:
        """[w_dim]: argmin_z ||G(z) - mean_i G(z_i)||^2, z_i ~ N(0, I) (Adam from the nearest z_i)."""
        gen = torch.Generator().manual_seed(AVERAGE_FACE_SEED)
        z = torch.randn(AVERAGE_FACE_SAMPLES, self.z_dim, generator=gen)
        with torch.no_grad():
            images = torch.cat([self.synthesis_net(chunk) for chunk in z.split(500)])
            mean_face = images.mean(0, keepdim=True)
            nearest = ((images - mean_face) ** 2).flatten(1).mean(1).argmin()
        latent = z[nearest][None].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=0.05)
        for _ in range(AVERAGE_FACE_STEPS):
            loss = ((self.synthesis_net(latent) - mean_face) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.synthesis_net.zero_grad(set_to_none=True)
        return latent.detach()[0]

    def _map(self, z):
        return z

    def _synthesize(self, ws):
        return self.synthesis_net(ws[:, 0])
