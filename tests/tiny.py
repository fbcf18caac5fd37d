"""Tiny random models with the interfaces of the real ones, for testing the method's mechanics."""

import torch
from torch import nn

from guide_ray.models.generator import GeneratorBase


class TinyGenerator(GeneratorBase):
    """z (8) -> w (6) by a linear map; W+ (2 x 6) -> a 3x8x8 image by per-layer linear maps + tanh."""

    z_dim, w_dim, num_ws, resolution = 8, 6, 2, 8

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.name = "tiny"
        self.mapping_net = nn.Linear(self.z_dim, self.w_dim).requires_grad_(False)
        self.synthesis_net = nn.ModuleList(nn.Linear(self.w_dim, 3 * 8 * 8) for _ in range(self.num_ws))
        self.register_buffer("w_avg", self.mapping_net(torch.randn(1000, self.z_dim)).mean(0).detach())

    def _map(self, z):
        return self.mapping_net(z)

    def _synthesize(self, ws):
        x = sum(layer(ws[:, i]) for i, layer in enumerate(self.synthesis_net))
        return torch.tanh(x).view(-1, 3, 8, 8)


class TinyPerceptual(nn.Module):
    """A 'perceptual' distance with the ST-LPIPS interface: mean squared difference of a fixed conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3).requires_grad_(False)

    def features(self, x):
        return [self.conv(x)]

    def distance(self, fa, fb):
        return (fa[0] - fb[0]).square().mean(dim=(1, 2, 3))

    def forward(self, a, b):
        return self.distance(self.features(a), self.features(b))


class TinyIdentity(nn.Module):
    """An identity net with IdentityNet's generated-image interface: a fixed linear embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.proj = nn.Linear(3 * 8 * 8, 5).requires_grad_(False)

    def embed_generated(self, img, frame=None):
        return self.proj(img.flatten(1))
