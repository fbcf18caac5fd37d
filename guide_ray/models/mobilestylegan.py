"""MobileStyleGAN FFHQ 1024 (random-face wheel, OpenVINO IR) as a fine-tunable PyTorch generator.

The export feeds one w [B, 512] to all 23 modulation layers of the synthesis network; the IR
interpreter splits that input so W+ ([B, 23, 512]) reaches each layer separately. The IR stores
no w_avg: we estimate it as the mean of ``W_AVG_SAMPLES`` mapping outputs and cache it beside the
weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import os

import platformdirs

from .generator import GeneratorBase, cached_latent, file_digest
from .openvino_ir import IRGraph

log = logging.getLogger(__name__)

W_AVG_SAMPLES = 100_000
W_AVG_SEED = 0
MAPPING_XML, SYNTHESIS_XML = "MappingNetwork.xml", "SynthesisNetwork.xml"


class MobileStyleGAN(GeneratorBase):
    z_dim = w_dim = 512
    resolution = 1024

    def __init__(self, folder: str | Path, name: str = "mobilestylegan-ffhq1024"):
        super().__init__()
        folder = Path(folder)
        for f in (MAPPING_XML, SYNTHESIS_XML):
            if not (folder / f).exists() or not (folder / f).with_suffix(".bin").exists():
                raise FileNotFoundError(f"{folder} lacks {f} and its .bin: a MobileStyleGAN IR folder "
                                        f"holds {MAPPING_XML}/.bin and {SYNTHESIS_XML}/.bin")
        self.name = name
        self.mapping_net = IRGraph(folder / MAPPING_XML).requires_grad_(False)
        # The inverse-DWT upsamplers (transposed convs) use fixed Haar filters: not learned.
        self.synthesis_net = IRGraph(folder / SYNTHESIS_XML, per_layer_input=0,
                                     fixed_consumers=("GroupConvolutionBackpropData",))
        self.num_ws = len(self.synthesis_net.input_consumers)
        cache = folder if os.access(folder, os.W_OK) else Path(platformdirs.user_cache_dir("guide_ray")) / "w_avg"
        name = f"w_avg-n{W_AVG_SAMPLES}-seed{W_AVG_SEED}-{file_digest(folder / 'MappingNetwork.bin')}.npy"
        self.register_buffer("w_avg", cached_latent(cache / name, lambda: estimate_w_avg(self.mapping_net),
                                                    f"w_avg from {W_AVG_SAMPLES} mapping samples"))

    def _map(self, z):
        return self.mapping_net(z)

    def _synthesize(self, ws):
        return self.synthesis_net(ws)


@torch.no_grad()
def estimate_w_avg(mapping: torch.nn.Module, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED,
                   batch: int = 5000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(512, dtype=torch.float64)
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), 512, generator=gen)
        total += mapping(z).double().sum(0)
    return (total / samples).float()
