"""The DCGAN of gan-face-generate (PyTorch DCGAN-tutorial architecture, DigiFace-1M, 64x64).

A DCGAN has no mapping network: its latent z plays the role of w (num_ws = 1, w_avg = 0), so
GUIDE's UFO target and truncation act on z directly. Batch-norm layers always use their running
statistics, also while the synthesis network is fine-tuned, so the generator's function of z does
not depend on the batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .generator import GeneratorBase


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
    # DigiFace crops are tighter than FFHQ's: the FFHQ square of 135/200 samples (dlib landmarks on
    # 4x upscaled images) puts this frame at the mean box below, std 0.03 (tests/test_identity.py).
    ffhq_box = (0.112, 0.098, 0.890, 0.898)

    def __init__(self, state_dict: dict[str, torch.Tensor], name: str = "dcgan-digiface64"):
        super().__init__()
        self.name = name
        nz, ngf8 = state_dict["main.0.weight"].shape[:2]
        nc = [v for v in state_dict.values() if v.ndim == 4][-1].shape[1]  # the last conv's outputs
        self.z_dim = self.w_dim = int(nz)
        self.synthesis_net = _FrozenStatsDCGAN(int(nz), int(ngf8) // 8, int(nc))
        self.synthesis_net.load_state_dict(state_dict)
        self.resolution = 64
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    @classmethod
    def from_file(cls, path: str | Path, name: str = "dcgan-digiface64") -> "DCGAN":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        sd = ckpt.get("netG_state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict) or "main.0.weight" not in sd:
            raise ValueError(f"{path} is not a DCGAN generator checkpoint (expected a state dict "
                             f"with 'main.0.weight', optionally under 'netG_state_dict')")
        return cls({k: v for k, v in sd.items()}, name=name)

    def _map(self, z):
        return z

    def _synthesize(self, ws):
        return self.synthesis_net(ws[:, 0])
