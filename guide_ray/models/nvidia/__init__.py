"""NVIDIA's face GANs (StyleGAN2, EG3D) in our own PyTorch, and a safe reader/writer of their
network pickles: official checkpoints load without executing any code stored in them."""

from __future__ import annotations

from pathlib import Path

from . import eg3d  # registers EG3D with the pickle reader
from . import pickle_io
from .stylegan2 import Generator, StyleGAN2


def load_nvidia_generator(path: str | Path, key: str = "G_ema"):
    """Our Generator adapter over the network ``key`` of an NVIDIA pickle (read safely), or over a
    network saved by ``pickle_io.save_safetensors``: ``StyleGAN2`` or ``EG3D`` by the network's class."""
    path = Path(path)
    if path.suffix == ".safetensors":
        net = pickle_io.load_safetensors_network(path)
    else:
        net = pickle_io.load_network_pickle(path, key=key)
    name = path.stem
    if isinstance(net, eg3d.TriPlaneGenerator):
        return eg3d.EG3D(net, name=name)
    if isinstance(net, Generator):
        return StyleGAN2(net, name=name)
    raise pickle_io.UnsupportedNetworkError(
        f"{path}: network {key!r} is a {type(net).__name__}; a generator (StyleGAN2 Generator or EG3D "
        f"TriPlaneGenerator) is needed")


def export_generator(generator, out: str | Path, original: str | Path | None = None, key: str = "G_ema") -> Path:
    """Write ``generator``'s NVIDIA network (e.g. G_u after unlearning) as NVIDIA's format: ``.pkl``
    = the ``original`` pickle with the new tensors substituted (loadable by NVIDIA's own code), or
    ``.safetensors`` = every tensor under NVIDIA's names plus the constructor arguments."""
    out = Path(out)
    if not hasattr(generator, "G"):
        raise ValueError(f"{generator.name} is not an NVIDIA generator: only StyleGAN2/EG3D export to NVIDIA formats")
    if out.suffix == ".safetensors":
        return pickle_io.save_safetensors(generator.G, out, {"generator": generator.name})
    if out.suffix == ".pkl":
        if original is None:
            raise ValueError(f"{out}: exporting a .pkl rewrites the original pickle; give the original file")
        return pickle_io.export_network_pickle(original, generator.G, out, key=key)
    raise ValueError(f"{out}: the export format is chosen by the suffix: .pkl or .safetensors")


__all__ = ["load_nvidia_generator", "export_generator", "pickle_io", "StyleGAN2"]
