"""A finished run's folder, read and checked: what `guide-ray evaluate` and `guide-ray audit` start from.

A run folder (the --out of `guide-ray unlearn`, or a fleet's runs/KEY/ID) holds result.json,
latents.pt (w_u, w_t, w_others) and the checkpoint result.json names (its own, or a joint fleet's
_joint/checkpoint.safetensors). Every check names the file that fails it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import GuideConfig, from_dict
from ..models import GENERATORS
from ..models.checkpoint import read_metadata


# A fleet's runs/KEY/ holds one folder per identity and these, named so that no identity's folder
# can be (ids start with a letter or digit: run/ids.py)
JOINT = "_joint"  # a joint run's one generator (checkpoint.safetensors, joint.json)
REVIEW = "_review"  # the fleet's summary table and plots
AUDIT = "_audit"  # `guide-ray audit`'s folders, one per identity
RAY_TRAIN = "_ray_train"  # Ray Train's storage for a joint run
CHECKPOINT = "checkpoint.safetensors"  # G_u's trained tensors, in an identity's folder or in JOINT


class RunFolderError(ValueError):
    """The folder is not a finished run; the message names what is missing or wrong."""


class RunFolder:
    """A finished run's folder, checked: its result, config, latents, checkpoint and source.

    ``generator``: what to load G_s from when not the run's generator by name (its file or folder);
    a registered name other than the run's is refused."""

    def __init__(self, path: str | Path, generator: str | None = None):
        self.path = path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder")
        missing = [name for name in ("result.json", "latents.pt") if not (path / name).is_file()]
        if missing:
            raise RunFolderError(f"{path} is missing {', '.join(missing)}: name a finished run's folder "
                                 "(the --out of guide-ray unlearn, or a fleet's runs/KEY/ID)")
        self.result = json.loads((path / "result.json").read_text())
        if self.result.get("status") not in ("finished", "diverged") or not self.result.get("checkpoint"):
            raise RunFolderError(f"{path}/result.json is a {self.result.get('status')} run without a checkpoint "
                                 f"({self.result.get('error') or 'no error recorded'}): there is no G_u")
        named = Path(self.result["checkpoint"])
        # a relative path is relative to where the run ran: look for it beside the run folder as well
        # (its own checkpoint, or a joint fleet's _joint/checkpoint.safetensors)
        found = [c for c in (named, path / named.name, path.parent / named.parent.name / named.name) if c.is_file()]
        if not found:
            raise RunFolderError(f"{path}: the checkpoint result.json names, {named}, is missing")
        self.checkpoint = found[0]
        self.generator = self.result["generator"]
        trained_from = read_metadata(self.checkpoint).get("generator")
        if trained_from != self.generator:
            raise RunFolderError(f"{self.checkpoint} was trained from generator {trained_from!r}, but "
                                 f"{path}/result.json names {self.generator!r}")
        if generator in GENERATORS and generator != self.generator:
            raise RunFolderError(f"{path} is a run of generator {self.generator!r}, not {generator!r}")
        self.spec = generator or self.generator
        latents = torch.load(path / "latents.pt", map_location="cpu", weights_only=True)
        absent = [k for k in ("w_u", "w_t") if latents.get(k) is None]
        if absent:
            raise RunFolderError(f"{path}/latents.pt holds no {', '.join(absent)}")
        self.latents = latents
        self.cfg = from_dict(GuideConfig, self.result["config"])
        source = self.result["source"]
        self.photo = source.get("image")
        self.others = list(source.get("others") or [])
        for p in ([self.photo] if self.photo else []) + self.others:
            if not Path(p).is_file():
                raise RunFolderError(f"{path}: the run's photo {p} is missing (the run is judged against it)")
        self.identity = self.result["identity"]

    def source_images(self, g_s) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The photo as the run saw it (in the generator's frame; G_s(w_u) for a seed) and the others."""
        if self.photo is None:
            with torch.no_grad():
                return g_s.synthesis(self.latents["w_u"].to(g_s.device)), []
        from ..models.face_align import generator_crop  # needs dlib, which a seed's run does not

        return generator_crop(self.photo, g_s), [generator_crop(p, g_s) for p in self.others]
