"""One typed configuration for a GUIDE run, with the paper's defaults (Sec. 4.1), and the
mechanism every YAML file of the project (run configs, sweep files) is read with.

Loaded from YAML and overridden with ``key=value`` strings (dotted keys reach nested sections,
values parse as YAML scalars); unknown keys and wrong types are errors that name the key. Every
run records the resolved config and its hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


@dataclass
class ProjectorConfig:
    space: Literal["w+", "w"] = "w+"  # "w": one latent shared by all num_ws layers
    steps: int = 500
    lr: float = 0.1  # Adam's peak learning rate
    lambda_perceptual: float = 1.0
    lambda_pixel: float = 1.0  # MSE between images in [-1, 1]
    # 1 - cos of the run's ID LOSS network (id_loss_net, never the metric) between the image and the
    # photo: holds the person where perceptual + pixel fit the look but drift the identity.
    lambda_id: float = 0.0
    # The latent's squared Mahalanobis distance under a Gaussian fitted to init_samples mapped latents,
    # per coordinate (~1 for the generator's own latents): keeps the fit where the generator's latents
    # live. Unregularised W fits at 1024² land far outside (P001's photos at 11.6 and 20.3), where two
    # photos of one person lie farther apart than two random people.
    lambda_prior: float = 0.0
    perceptual_size: int = 256  # larger images are area-downsampled to this before the perceptual net
    init: Literal["w_avg", "mean_of_samples"] = "w_avg"
    init_samples: int = 10_000  # mapping samples for "mean_of_samples" and for the latent noise's scale
    # Latent noise: Gaussian noise of noise_strength x (per-coordinate std of mapped latents), fading
    # quadratically to 0 over the first noise_ramp fraction of the steps, added to the latent before
    # synthesis; it helps the optimisation leave the start's basin.
    noise_strength: float = 0.5
    noise_ramp: float = 0.75
    lr_rampup: float = 0.05  # fraction of the steps over which lr rises linearly from 0
    lr_rampdown: float = 0.25  # fraction of the steps over which lr falls to 0 along a half cosine
    # Stop when the best total loss improved by no more than early_stop_tol (relative) over the
    # last early_stop_patience steps; patience 0 disables early stopping.
    early_stop_tol: float = 1e-3
    early_stop_patience: int = 50
    seed: int = 0
    # A pSp / e4e checkpoint (models/psp.py) whose latent for the photo starts the optimisation; None: ``init``.
    encoder: str | None = None
    # Fit through the generator's view at this resolution (MobileStyleGAN: 64-512, see the run's
    # train_resolution); None: the run's train_resolution. Latents are the full generator's either way.
    resolution: int | None = None


@dataclass
class EvalConfig:
    fid_samples: int | None = None  # None: 5000 on a GPU (the paper), 500 on CPU
    fid_seed: int = 123  # the same latents before and after unlearning
    fid_batch: int = 16
    real_stats: str | None = None  # real images for ΔFID_real: .npz statistics or .npy Inception features
    reinversion: bool = True  # invert the source photo into G_u again (beyond the paper)
    id_views: int = 11  # camera views averaged for 3D generators (yaw in ±π/12)
    # The verdict (core/verdict.py). ID below id_threshold = another person; None: the ID metric's
    # different-person level from run/calibration.py, the audit's too (FaceNet: 0.203).
    id_threshold: float | None = None
    # Is an image a face (models/face_check.py): "dlib-mmod" (score = its detection confidence,
    # default threshold 0.8) or "mtcnn" (its probability, default 0.9); None: the detector's default.
    face_detector: Literal["dlib-mmod", "mtcnn"] = "dlib-mmod"
    face_threshold: float | None = None
    # face_kept = the share of after-images (G_u(w_u), each G_u(w_o), the re-inversion, and
    # G_u(z) of those of face_samples random latents (drawn with fid_seed) whose G_s(z) is a face)
    # that are faces; an identity is only "erased" when G_u(w_u) is a face and face_kept >=
    # face_kept_min. The random latents catch a generator that keeps w_u's face and wrecks the rest.
    # Not 1: the detector's confidence flips around its threshold on images that barely changed
    # (a DCGAN sample scored 0.88 before and 0.75 after an erasure that left it as it was).
    face_kept_min: float = 0.75
    face_samples: int = 8


@dataclass
class GuideConfig:
    # Un-identifying Face On latent space (UFO, Eq. 3)
    target: Literal["extrapolated", "average"] = "extrapolated"
    d: float = 30.0
    # Eq. 3's geometry (core/ufo.py): "w+" as written; "w" extrapolates only the W part of w_u - w_avg
    # (a W+ inversion's target stays a face); "sphere" keeps a Gaussian latent on its shell;
    # "auto": "sphere" for a generator without a mapping network (the DCGAN), else "w".
    ufo_geometry: Literal["auto", "w+", "w", "sphere"] = "auto"
    # Check that G_s(w_t) is a face (evaluation.face_detector) and shrink d until it is; the d used is
    # recorded in result.json.
    target_face_check: bool = True
    # Latent Target Unlearning (LTU, Eqs. 4-9)
    alpha_max: float = 15.0
    # "eg3d": d and alpha_max are in EG3D's W-space units (where the paper tuned them) and are
    # scaled by this generator's typical ||w - w_avg|| relative to EG3D's; "absolute": as given.
    distance_units: Literal["eg3d", "absolute"] = "eg3d"
    lambda_l2: float = 1e-2
    lambda_per: float = 1.0
    lambda_id: float = 1e-1
    n_adj: int = 2
    n_global: int = 2
    lambda_adj: float = 1.0
    lambda_global: float = 1.0
    use_local: bool = True
    use_adjacency: bool = True
    use_global: bool = True
    lr: float = 1e-4
    iterations: int = 1000
    # "synthesis": the generator's synthesis network (the official code); or a regular expression
    # matched against the generator's parameter names.
    trainable: str = "synthesis"
    # Neighbour and global latents are drawn from pools of this many (N_a resp. N_g of them each
    # step) whose frozen-generator outputs are computed once; 0 draws fresh latents every step
    # (the official code) at a higher cost. Memory: 2 x pool x (perceptual features of one image).
    latent_pool: int = 64
    # Joint unlearning (the fleet's --mode joint, core/joint.py): the identities each step trains on,
    # round robin over all; 0: all of them (rounded down to a multiple of the workers).
    identities_per_step: int = 0
    # Sequential fleets (beyond the paper): each step also holds rehearse_per_step of the identities
    # erased before to their erased faces (their Eq. 4 loss between G_u(w_u) and G_s(w_u)), with this
    # weight; 0: no rehearsal, as the paper.
    rehearsal: float = 0.0
    rehearse_per_step: int = 2
    id_loss_net: str = "dlib-resnet34"
    id_metric_net: str = "facenet-vggface2"
    perceptual_net: str = "stlpips-vgg"
    perceptual_size: int = 256  # larger images are area-downsampled before the perceptual net
    # "bf16": LTU's perceptual network runs under bfloat16 autocast (AMX / AVX-512 BF16 CPUs, GPU
    # tensor cores), its features returned as float32; the generator, the ID nets and the losses stay
    # float32. docs/mobilestylegan-cpu.md compares it with "fp32" (ID, FID_pre, s / iteration).
    perceptual_precision: Literal["fp32", "bf16"] = "fp32"
    # Train (and invert) at this output resolution: the generator's layers up to the block that
    # gives it, read out by a fitted RGB head (MobileStyleGAN only: 64, 128, 256 or 512; see
    # models/mobilestylegan.py); the layers above stay as they are. None: the generator's own.
    # Evaluation always renders at the full resolution.
    train_resolution: int | None = None
    checkpoint_every: int = 100
    seed: int = 0
    inversion: ProjectorConfig = field(default_factory=ProjectorConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class AuditConfig:
    """The erasure audit's attacks (core/audit.py; ``guide-ray audit``). Not part of a run's config:
    an audit changes nothing a run computed, and its hash stays the run's."""

    random_starts: int = 4  # re-inversion starts from mapped random latents, beside w_avg and the sample mean
    projector_steps: int | None = None  # per restart; None: the run's inversion.steps
    probe_samples: int = 64  # latents around w_u and around the best re-inverted latent
    probe_radius: float | None = None  # in the run's distance units; None: the run's alpha_max
    relearn_steps: list[int] = field(default_factory=lambda: [10, 50, 200])  # measured after each
    relearn_lr: float = 3e-4  # Adam, as pivotal tuning (PTI)
    elsewhere_samples: int = 16  # a seed's neighbours of w_u looked at after relearning (no other photos)
    seed: int = 0


def load_audit_config(overrides: typing.Iterable[str] = ()) -> AuditConfig:
    """Defaults, then ``key=value`` overrides (values parsed as YAML: relearn_steps=[10,50])."""
    tree = to_dict(AuditConfig())
    for item in overrides:
        apply_override(tree, item)
    cfg = from_dict(AuditConfig, tree)
    for name in ("probe_samples", "relearn_lr"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.random_starts < 0:
        raise ConfigError(f"random_starts must be >= 0, got {cfg.random_starts}")
    if not cfg.relearn_steps or any(k < 1 for k in cfg.relearn_steps):
        raise ConfigError(f"relearn_steps must be a list of step counts >= 1, got {cfg.relearn_steps}")
    if cfg.projector_steps is not None and cfg.projector_steps < 1:
        raise ConfigError(f"projector_steps must be >= 1 (or null: the run's), got {cfg.projector_steps}")
    return cfg


# Table 1's rows: each adds one component of GUIDE to the baseline.
PRESETS: dict[str, dict[str, object]] = {
    "baseline": {"target": "average", "use_adjacency": False, "use_global": False},
    "extrapolated": {"target": "extrapolated", "use_adjacency": False, "use_global": False},
    "adjacency": {"target": "extrapolated", "use_adjacency": True, "use_global": False},
    "guide": {"target": "extrapolated", "use_adjacency": True, "use_global": True},
}


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


def _check_value(key: str, value, hint):
    """``value`` converted to the annotated type ``hint``, or a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _check_value(key, value, option)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: {value!r} is not a {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads exponents without a dot (2e-4) as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a (partial) dict; nested sections are dicts."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_value(prefix + name, value, hint)
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    tree[leaf] = value


def apply_override(tree: dict, item: str) -> None:
    """Apply one ``key=value`` (dotted key, value parsed as YAML) to a nested dict."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    _set(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = (),
                preset: str | None = None) -> GuideConfig:
    """Defaults, then a preset (Table 1 row), then the YAML file, then ``key=value`` overrides."""
    tree = to_dict(GuideConfig())
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        tree.update(PRESETS[preset])
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file holds a mapping of keys to values")
        for key, value in _flatten(loaded):
            _set(tree, key, value)
    for item in overrides:
        apply_override(tree, item)
    cfg = from_dict(GuideConfig, tree)
    validate(cfg)
    return cfg


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def validate(cfg: GuideConfig) -> None:
    """Range checks the types cannot express."""
    for name in ("lambda_l2", "lambda_per", "lambda_id", "lambda_adj", "lambda_global", "alpha_max", "rehearsal"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("iterations", "n_adj", "n_global", "perceptual_size", "checkpoint_every", "rehearse_per_step"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    ev = cfg.evaluation
    if ev.face_samples < 0:
        raise ConfigError(f"evaluation.face_samples must be >= 0, got {ev.face_samples}")
    if ev.face_kept_min < 0 or ev.face_kept_min > 1:
        raise ConfigError(f"evaluation.face_kept_min is a share in [0, 1], got {ev.face_kept_min}")
    if ev.id_threshold is not None and not -1 <= ev.id_threshold <= 1:
        raise ConfigError(f"evaluation.id_threshold is a cosine similarity in [-1, 1], got {ev.id_threshold}")
    for name, value in (("train_resolution", cfg.train_resolution), ("inversion.resolution", cfg.inversion.resolution)):
        if value is not None and value < 16:
            raise ConfigError(f"{name} must be at least 16 (or null: the generator's own), got {value}")
    for name in ("lambda_perceptual", "lambda_pixel", "lambda_id", "lambda_prior"):
        if getattr(cfg.inversion, name) < 0:
            raise ConfigError(f"inversion.{name} must be >= 0, got {getattr(cfg.inversion, name)}")
    if cfg.latent_pool < 0:
        raise ConfigError(f"latent_pool must be >= 0, got {cfg.latent_pool}")
    if cfg.identities_per_step < 0:
        raise ConfigError(f"identities_per_step must be >= 0 (0: all identities), got {cfg.identities_per_step}")
    if not (cfg.use_local or cfg.use_adjacency or cfg.use_global):
        raise ConfigError("at least one of use_local, use_adjacency, use_global must be true")


# A run's identity is the hash of the settings that differ from the defaults, less those that change
# nothing it computes (how often it checkpoints). A new field with a default thus leaves every existing
# hash, and with it every resumable fleet, as it was; a default whose value changes would silently give
# old hashes new results, so tests/test_method.py pins the defaults of this HASH_VERSION: bump it then.
HASH_VERSION = 2
NOT_HASHED = frozenset({"checkpoint_every"})


def config_hash(cfg: GuideConfig) -> str:
    """A short hash of the result-changing settings that differ from GuideConfig()'s defaults."""
    defaults = dict(_flatten(to_dict(GuideConfig())))
    changed = {key: value for key, value in _flatten(to_dict(cfg))
               if key not in NOT_HASHED and (key not in defaults or defaults[key] != value)}
    blob = json.dumps({"hash_version": HASH_VERSION, "settings": changed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
