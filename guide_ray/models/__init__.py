"""Pretrained models behind small protocols; a short name or a file path resolves to a loaded module."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import weights
from .dcgan import DCGAN
from .generator import Generator
from .identity import IdentityNet, load_identity_net
from .mobilestylegan import MobileStyleGAN
from .perceptual import load_perceptual

GENERATORS = ("mobilestylegan-ffhq1024", "dcgan-digiface64")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_generator(spec: str | Path, device: str | torch.device | None = None,
                   checkpoint: str | Path | None = None) -> Generator:
    """A generator by manifest name, or from a user's path; ``checkpoint``: an unlearned
    generator's trained tensors (``checkpoint.safetensors`` of a run) applied on top.

    Paths: an NVIDIA network pickle (``.pkl``: StyleGAN2(-ADA) or EG3D, read safely; network
    ``G_ema``) or such a network exported as ``.safetensors``; a folder holding MobileStyleGAN's
    MappingNetwork/SynthesisNetwork IR files; or a DCGAN checkpoint (a torch file with
    'netG_state_dict' or a bare state dict).
    """
    spec = str(spec)
    if spec == "mobilestylegan-ffhq1024":
        gen = MobileStyleGAN(weights.directory(spec), name=spec)
    elif spec == "dcgan-digiface64":
        gen = DCGAN.from_file(weights.path(spec), name=spec)
    elif Path(spec).suffix in (".pkl", ".safetensors") and Path(spec).expanduser().is_file():
        from .nvidia import load_nvidia_generator

        gen = load_nvidia_generator(Path(spec).expanduser())
    elif Path(spec).expanduser().is_dir():
        gen = MobileStyleGAN(Path(spec).expanduser(), name=Path(spec).name)
    elif Path(spec).expanduser().is_file():
        gen = DCGAN.from_file(Path(spec).expanduser(), name=Path(spec).stem)
    else:
        raise weights.WeightsError(
            f"generator {spec!r} is neither a known name ({', '.join(GENERATORS)}) nor an existing path")
    if checkpoint is not None:
        from ..core.checkpoint import apply_checkpoint

        apply_checkpoint(gen, checkpoint)
    return gen.eval().to(device or default_device())


__all__ = ["Generator", "GENERATORS", "load_generator", "default_device", "DCGAN", "MobileStyleGAN",
           "IdentityNet", "load_identity_net", "load_perceptual"]
