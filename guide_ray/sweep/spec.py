"""The sweep file: searched keys and their ranges, the fixed configuration, objectives, the searcher,
ASHA and resources, checked whole (every corner of the space a valid configuration) before anything runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError, GuideConfig, apply_override, from_dict, load_config, to_dict, validate

SEARCHABLE = ("d", "alpha_max", "lambda_l2", "lambda_per", "lambda_id", "lambda_adj", "lambda_global", "lr",
              "iterations")
OBJECTIVES = ("unlearning", "preservation", "score")
SEARCHERS = ("auto", "tpe", "nsga2")
# The sweep file's settings and their defaults (documented in the README).
DEFAULTS = {"objectives": ["unlearning", "preservation"], "searcher": "auto",
            "fid_weight": 0.01,  # score = unlearning + fid_weight x FID_pre
            "drift_weight": 1.0,  # progress_score = id_now + drift_weight x perceptual drift
            "num_samples": 16, "max_concurrent": 2, "report_every": 50,
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "include_defaults": True,  # the base configuration itself is the first trial
            "proxy_samples": 8, "seed": 0}
_SWEEP_KEYS = {"name", "generator", "ids", "space", "base_config", "set", "resources", "out", *DEFAULTS}


class SweepError(ValueError):
    """A sweep file or option is wrong; the message names the key."""


@dataclass
class Param:
    """One searched config key: a range (``low``..``high``, optionally ``log``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    @property
    def integer(self) -> bool:
        return self.name == "iterations"

    def domain(self):
        from ray import tune

        if self.choices is not None:
            return tune.choice(self.choices)
        if self.integer:  # randint's upper bound is exclusive
            return (tune.lograndint if self.log else tune.randint)(int(self.low), int(self.high) + 1)
        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high


@dataclass
class Sweep:
    name: str
    generator: str
    ids: Path
    space: dict[str, Param]
    base: dict  # the resolved configuration every trial starts from (defaults, base_config, set)
    base_config: Path | None
    objectives: list[str]
    searcher: str
    fid_weight: float
    drift_weight: float
    num_samples: int
    max_concurrent: int
    report_every: int
    asha: dict | None
    resources: dict | None  # {"cpu": N, "gpu": F}; None: 1 GPU per trial on a GPU cluster, else 1 CPU
    include_defaults: bool
    proxy_samples: int
    seed: int
    out: Path | None

    def config(self, params: dict | None = None) -> GuideConfig:
        """The trial's configuration: the base, then the sampled params (top-level keys)."""
        cfg = from_dict(GuideConfig, {**self.base, **(params or {})})
        validate(cfg)
        return cfg

    @property
    def out_dir(self) -> Path:
        return (self.out or Path("outputs/sweeps") / self.name).resolve()

    @property
    def max_iterations(self) -> int:
        p = self.space.get("iterations")
        return int(max(p.choices or [p.high])) if p else self.config().iterations

    def fingerprint(self) -> dict:
        """What a resumed sweep must share with the one it resumes."""
        return {"generator": self.generator, "ids": str(self.ids), "base": self.base,
                "space": {k: vars(p) for k, p in self.space.items()},
                **{k: getattr(self, k) for k in DEFAULTS if k != "max_concurrent"}}


def _number(key: str, value, positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepError(f"{key}: expected a number, got {value!r}")
    if integer and value != int(value):
        raise SweepError(f"{key}: expected an integer, got {value!r}")
    if positive and value <= 0:
        raise SweepError(f"{key}: must be > 0, got {value!r}")
    return int(value) if integer else value


def _param(name: str, spec) -> Param:
    key = f"space.{name}"
    if name not in SEARCHABLE:
        raise SweepError(f"unknown key {key!r}; searchable keys: {', '.join(SEARCHABLE)}")
    if not isinstance(spec, dict):
        raise SweepError(f"{key}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "choices"})
    if unknown:
        raise SweepError(f"unknown key {key + '.' + unknown[0]!r}; a parameter has low, high, log or choices")
    must_be_positive = name in ("lr", "iterations", "alpha_max")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise SweepError(f"{key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{key}.choices: expected a non-empty list, got {choices!r}")
        values = [_number(f"{key}.choices", v, integer=name == "iterations") for v in choices]
        for v in values:
            if name != "d" and (v < 0 or (must_be_positive and v == 0)):
                raise SweepError(f"{key}.choices: {v} is {'negative' if v < 0 else 'not positive'}; "
                                 f"{name} must be {'> 0' if must_be_positive else '>= 0'}")
        return Param(name, choices=values)
    if "low" not in spec or "high" not in spec:
        raise SweepError(f"{key}: a range needs both low and high")
    low = _number(f"{key}.low", spec["low"], integer=name == "iterations")
    high = _number(f"{key}.high", spec["high"], integer=name == "iterations")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{key}.log: expected true or false, got {log!r}")
    if low > high:
        raise SweepError(f"{key}: low ({low}) is greater than high ({high})")
    if name != "d" and low < 0:
        raise SweepError(f"{key}.low: {name} is a weight or size and cannot be negative ({low})")
    if must_be_positive and low == 0:
        raise SweepError(f"{key}.low: {name} must be > 0")
    if log and low <= 0:
        raise SweepError(f"{key}: a log range must lie above 0, got low = {low}")
    return Param(name, low, high, log)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and check a sweep YAML (paths in it are relative to the file) before anything runs."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"cannot read sweep file {path}: {e}") from None
    if not isinstance(tree, dict):
        raise SweepError(f"{path}: a sweep file holds a mapping")
    try:
        for item in overrides:
            apply_override(tree, item)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    tree = {**DEFAULTS, **tree}
    unknown = sorted(set(tree) - _SWEEP_KEYS)
    if unknown:
        raise SweepError(f"unknown key {unknown[0]!r} in {path}; valid keys: {', '.join(sorted(_SWEEP_KEYS))}")
    for key in ("generator", "ids", "space"):
        if key not in tree:
            raise SweepError(f"{path}: missing key {key!r}")
    base = path.parent

    def rel(value):
        return None if value is None else (base / value).resolve()

    space = tree["space"]
    if not isinstance(space, dict) or not space:
        raise SweepError("space: expected a mapping of config keys to ranges, e.g. d: {low: 5, high: 40}")
    fixed = tree.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"set: expected a mapping of config keys to values, got {fixed!r}")
    objectives = tree["objectives"]
    objectives = [objectives] if isinstance(objectives, str) else list(objectives or [])
    if not objectives or len(objectives) > 2 or any(o not in OBJECTIVES for o in objectives) \
            or len(set(objectives)) != len(objectives) or (len(objectives) == 2 and "score" in objectives):
        raise SweepError(f"objectives: one of {', '.join(OBJECTIVES)}, or [unlearning, preservation]; "
                         f"got {objectives!r}")
    searcher = tree["searcher"]
    if searcher not in SEARCHERS:
        raise SweepError(f"searcher: {searcher!r} is not one of {', '.join(SEARCHERS)}")
    base_config = rel(tree.get("base_config"))
    if base_config is not None and not base_config.is_file():
        raise SweepError(f"base_config: {base_config} is not a file")
    try:  # resolved here, so trials never read files (they may run on other machines)
        resolved = to_dict(load_config(base_config, [f"{k}={json.dumps(v)}" for k, v in fixed.items()]))
    except ConfigError as e:
        raise SweepError(f"the configuration is invalid: {e}") from None
    asha = tree["asha"]
    if asha is not None and asha is not False:
        if not isinstance(asha, dict) or set(asha) - {"grace_period", "reduction_factor"}:
            raise SweepError(f"asha: expected {{grace_period, reduction_factor}} or false, got {asha!r}")
        asha = {"grace_period": _number("asha.grace_period", asha.get("grace_period", 1), True, True),
                "reduction_factor": _number("asha.reduction_factor", asha.get("reduction_factor", 2), True)}
        if asha["reduction_factor"] <= 1:
            raise SweepError("asha.reduction_factor: must be > 1")
    resources = tree.get("resources")
    if resources is not None:
        if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
            raise SweepError(f"resources: expected {{cpu: N, gpu: F}}, got {resources!r}")
        resources = {k: _number(f"resources.{k}", v) for k, v in resources.items()}
        if any(v < 0 for v in resources.values()):
            raise SweepError(f"resources: negative amounts in {resources}")
    include_defaults = tree["include_defaults"]
    if not isinstance(include_defaults, bool):
        raise SweepError(f"include_defaults: expected true or false, got {include_defaults!r}")
    sweep = Sweep(
        name=str(tree.get("name") or path.stem), generator=str(tree["generator"]), ids=rel(tree["ids"]),
        space={name: _param(name, spec) for name, spec in space.items()}, base=resolved, base_config=base_config,
        objectives=objectives, searcher=searcher,
        fid_weight=_number("fid_weight", tree["fid_weight"]),
        drift_weight=_number("drift_weight", tree["drift_weight"]),
        num_samples=_number("num_samples", tree["num_samples"], True, True),
        max_concurrent=_number("max_concurrent", tree["max_concurrent"], True, True),
        report_every=_number("report_every", tree["report_every"], True, True),
        asha=asha or None, resources=resources, include_defaults=include_defaults,
        proxy_samples=_number("proxy_samples", tree["proxy_samples"], True, True),
        seed=_number("seed", tree["seed"], integer=True), out=rel(tree.get("out")))
    if sweep.fid_weight < 0 or sweep.drift_weight < 0:
        raise SweepError("fid_weight and drift_weight cannot be negative")
    if not sweep.ids.is_file():
        raise SweepError(f"ids: {sweep.ids} is not a file")
    try:  # every corner of the space must make a valid configuration
        for p in sweep.space.values():
            for value in p.choices if p.choices is not None else (p.low, p.high):
                sweep.config({p.name: value})
    except ConfigError as e:
        raise SweepError(f"the configuration is invalid: {e}") from None
    return sweep
