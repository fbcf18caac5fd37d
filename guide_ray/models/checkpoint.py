"""An unlearned generator on disk: the trained tensors as safetensors, applied to the base generator.

Only the tensors LTU trained are stored (the synthesis network by default); the metadata names
the base generator, so ``load_generator(NAME, checkpoint=PATH)`` rebuilds G_u anywhere a
generator is accepted.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "guide_ray.trainable/1"


def save_trainable(path: str | Path, tensors: dict[str, torch.Tensor], generator_name: str,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (parameter name -> tensor) atomically, with the base generator's name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "generator": generator_name, **(metadata or {})}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".safetensors", delete=False) as tmp:
        pass
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp.name, metadata=meta)
    os.replace(tmp.name, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def apply_checkpoint(generator, path: str | Path) -> dict[str, str]:
    """Load a checkpoint's tensors into ``generator`` (in place); returns the checkpoint's metadata.

    Refuses a file of another format, of another base generator, or with tensors the generator
    does not have or whose shapes differ.
    """
    path = Path(path)
    try:
        meta = read_metadata(path)
    except Exception as e:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path} is not a safetensors checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a guide_ray checkpoint (format {meta.get('format')!r})")
    if meta.get("generator") != generator.name:
        raise ValueError(f"{path} was trained from generator {meta.get('generator')!r}, not {generator.name!r}")
    params = dict(generator.named_parameters())
    with safe_open(str(path), framework="pt") as f, torch.no_grad():
        for name in f.keys():
            if name not in params:
                raise ValueError(f"{path}: tensor {name!r} is not a parameter of {generator.name}")
            tensor = f.get_tensor(name)
            if tensor.shape != params[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the generator's is "
                                 f"{tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return meta


def metadata_json(values: dict) -> dict[str, str]:
    """safetensors metadata holds strings: JSON-encode everything else."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
