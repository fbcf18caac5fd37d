"""MobileStyleGAN FFHQ 1024 (random-face wheel, OpenVINO IR) as a fine-tunable PyTorch generator.

The export feeds one w [B, 512] to all 23 modulation layers of the synthesis network; the IR
interpreter splits that input so W+ ([B, 23, 512]) reaches each layer separately. The IR stores
no w_avg: we estimate it as the mean of ``W_AVG_SAMPLES`` mapping outputs and cache it beside the
weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import platformdirs
import torch

from .generator import GeneratorBase
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
        self.register_buffer("w_avg", load_or_estimate_w_avg(self.mapping_net, folder / "MappingNetwork.bin"))

    def _map(self, z):
        return self.mapping_net(z)

    def _synthesize(self, ws):
        return self.synthesis_net(ws)


def _w_avg_cache_path(mapping_bin: Path) -> Path:
    digest = hashlib.sha256(mapping_bin.read_bytes()).hexdigest()[:16]
    name = f"w_avg-{digest}-n{W_AVG_SAMPLES}-seed{W_AVG_SEED}.npy"
    if os.access(mapping_bin.parent, os.W_OK):
        return mapping_bin.parent / name
    return Path(platformdirs.user_cache_dir("guide_ray")) / "w_avg" / name


@torch.no_grad()
def estimate_w_avg(mapping: torch.nn.Module, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED,
                   batch: int = 5000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(512, dtype=torch.float64)
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), 512, generator=gen)
        total += mapping(z).double().sum(0)
    return (total / samples).float()


def load_or_estimate_w_avg(mapping: torch.nn.Module, mapping_bin: Path) -> torch.Tensor:
    """w_avg from the cache beside the weights, estimated (and cached atomically) on first use."""
    path = _w_avg_cache_path(mapping_bin)
    if path.exists():
        return torch.from_numpy(np.load(path))
    log.info("estimating w_avg from %d mapping samples (once; cached at %s)", W_AVG_SAMPLES, path)
    w_avg = estimate_w_avg(mapping)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, w_avg.numpy())
    os.replace(tmp.name, path)
    return w_avg
