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
        from .checkpoint import apply_checkpoint

        apply_checkpoint(gen, checkpoint)
    return gen.eval().to(device or default_device())


def load_encoder(path: str | Path, device: str | torch.device | None = None):
    """An inversion encoder checkpoint, recognised by its contents: GOAE's ``encoder_FFHQ.pt`` (for
    EG3D) or a pSp / e4e checkpoint (for StyleGAN2). ``.for_generator(g)`` gives the LatentEncoder
    (offsets from g's w_avg) for a generator."""
    from .goae import load_goae
    from .irse import load_torch_file
    from .psp import load_psp_encoder

    path = Path(path).expanduser()
    contents = load_torch_file(path)
    if isinstance(contents, dict) and any(str(k).startswith("swin_model.") for k in contents):
        return load_goae(path, device or "cpu", state=contents)
    if isinstance(contents, dict) and "opts" in contents:
        return load_psp_encoder(path, device, ckpt=contents)
    keys = sorted(map(str, contents))[:6] if isinstance(contents, dict) else type(contents).__name__
    raise weights.WeightsError(f"{path} is neither a GOAE encoder (swin_model.* tensors) nor a pSp/e4e checkpoint "
                               f"(a dict with 'state_dict' and 'opts'); it holds {keys}")


__all__ = ["Generator", "GENERATORS", "load_generator", "default_device", "DCGAN", "MobileStyleGAN",
           "IdentityNet", "load_identity_net", "load_encoder", "load_perceptual"]
