"""The sweep file: searched keys and their ranges, the fixed configuration, objectives, the searcher,
ASHA, resources and the Optuna storage, read with the project's config mechanism (config.from_dict
on the dataclasses below; the searched values typed by GuideConfig's own fields) and checked whole
(every corner of the space a valid configuration, ASHA's rungs within the trials' reports) before
anything runs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from ..config import ConfigError, GuideConfig, apply_override, from_dict, load_config, to_dict, validate

_HINTS = typing.get_type_hints(GuideConfig)
# The ID metric is the ruler of the objectives: trials measured with different ones are not comparable.
UNSEARCHED = ("id_metric_net",)
# Every top-level setting of GuideConfig (not its sections); ranges for the numbers, choices for any.
SEARCHABLE = tuple(n for n, hint in _HINTS.items() if not dataclasses.is_dataclass(hint) and n not in UNSEARCHED)
OBJECTIVES = ("unlearning", "preservation", "score")
SEARCHERS = ("auto", "tpe", "nsga2")


@dataclass
class AshaSettings:
    grace_period: int = 1  # reports before ASHA may stop a trial
    reduction_factor: float = 2.0


@dataclass
class ResourceSettings:
    """Per trial; without ``resources`` a trial gets 1 GPU on a GPU cluster, else 1 CPU."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class SweepSettings:
    """The sweep file's settings besides ``space``, ``set``, ``objectives``, ``asha`` and ``resources``
    (which config.from_dict cannot type: a free mapping, a list, a section or false), with defaults."""

    generator: str | None = None  # required: a generator name or path
    ids: str | None = None  # required: the identities CSV, relative to the sweep file
    name: str | None = None  # default: the file's name
    base_config: str | None = None
    out: str | None = None
    # An Optuna RDB storage URL (sqlite:///optuna.db: relative to the sweep file) that keeps the study.
    optuna_storage: str | None = None
    searcher: Literal["auto", "tpe", "nsga2"] = "auto"
    fid_weight: float = 0.01  # score = unlearning + fid_weight x FID_pre
    drift_weight: float = 1.0  # progress_score = id_now + drift_weight x perceptual drift
    num_samples: int = 16
    max_concurrent: int = 2
    report_every: int = 50
    include_defaults: bool = True  # the base configuration itself is the first trial
    proxy_samples: int = 8
    seed: int = 0


_SECTIONS = ("space", "set", "objectives", "asha", "resources")
_SWEEP_KEYS = (*(f.name for f in dataclasses.fields(SweepSettings)), *_SECTIONS)
# What a resumed sweep must share with the one it resumes (besides generator, ids, base and space).
_FINGERPRINTED = ("objectives", "searcher", "fid_weight", "drift_weight", "num_samples", "report_every", "asha",
                  "include_defaults", "proxy_samples", "seed")


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
        return _HINTS[self.name] is int

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

    def corners(self) -> list[tuple[str, object]]:
        """(where, value): the values whose configurations stand for the whole range."""
        if self.choices is not None:
            return [("choices", v) for v in self.choices]
        return [("low", self.low), ("high", self.high)]


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
    optuna_storage: str | None = None  # an RDB URL, sqlite paths absolute

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

    def reports(self, iterations: int) -> int:
        """How many times a trial of ``iterations`` LTU iterations reports (the last one in full)."""
        return math.ceil(iterations / self.report_every)

    def fingerprint(self) -> dict:
        """What a resumed sweep must share with the one it resumes."""
        return {"generator": self.generator, "ids": str(self.ids), "base": self.base,
                "space": {k: vars(p) for k, p in self.space.items()},
                **{k: getattr(self, k) for k in _FINGERPRINTED},
                **({"optuna_storage": self.optuna_storage} if self.optuna_storage else {})}


def _read(cls, data, prefix: str):
    """``data`` as dataclass ``cls`` through config.from_dict; its ConfigError as a SweepError."""
    try:
        return from_dict(cls, data, prefix)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def _param(name: str, spec) -> Param:
    key = f"space.{name}"
    if name not in SEARCHABLE:
        why = " (the ID metric measures the objectives)" if name in UNSEARCHED else ""
        raise SweepError(f"unknown key {key!r}{why}; searchable keys (GuideConfig's top-level settings): "
                         f"{', '.join(SEARCHABLE)}")
    if not isinstance(spec, dict):
        raise SweepError(f"{key}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "choices"})
    if unknown:
        raise SweepError(f"unknown key {key + '.' + unknown[0]!r}; a parameter has low, high, log or choices")
    hint = _HINTS[name]
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise SweepError(f"{key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{key}.choices: expected a non-empty list, got {choices!r}")
        # each choice typed as GuideConfig types the key (from_dict reads no lists: one at a time)
        one = dataclasses.make_dataclass("Choice", [("choices", hint)])
        return Param(name, choices=[_read(one, {"choices": v}, f"{key}.").choices for v in choices])
    if hint not in (int, float):
        raise SweepError(f"{key}: {name} is not a number; search it with choices: [...]")
    # typed as GuideConfig types the key; None only stands for a bound left out
    bounds = _read(dataclasses.make_dataclass("Range", [("low", hint, None), ("high", hint, None),
                                                        ("log", bool, False)]), spec, f"{key}.")
    if bounds.low is None or bounds.high is None:
        raise SweepError(f"{key}: a range needs both low and high")
    for where in ("low", "high"):
        if not math.isfinite(getattr(bounds, where)):
            raise SweepError(f"{key}.{where}: a range's bounds are finite numbers, got {getattr(bounds, where)}")
    if bounds.low > bounds.high:
        raise SweepError(f"{key}: low ({bounds.low:g}) is greater than high ({bounds.high:g})")
    if bounds.log and bounds.low <= 0:
        raise SweepError(f"{key}: a log range must lie above 0, got low = {bounds.low}")
    return Param(name, bounds.low, bounds.high, bounds.log)


def _objectives(value) -> list[str]:
    objectives = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not objectives or len(objectives) > 2 or any(o not in OBJECTIVES for o in objectives) \
            or len(set(objectives)) != len(objectives) or (len(objectives) == 2 and "score" in objectives):
        raise SweepError(f"objectives: one of {', '.join(OBJECTIVES)}, or [unlearning, preservation]; "
                         f"got {value!r}")
    return list(objectives)


def _storage_url(value: str | None, base: Path) -> str | None:
    """The Optuna storage as an RDB URL; a relative SQLite path made absolute (against ``base``)."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise SweepError(f"optuna_storage: {value!r} is not a database URL (e.g. sqlite:///optuna.db): {e}") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SweepError(f"optuna_storage: {value!r} is an in-memory database, which keeps nothing; name a "
                             "file (sqlite:///optuna.db) or leave the key out")
        url = url.set(database=str((base / url.database).resolve()))
    return url.render_as_string(hide_password=False)


def _check_generator(generator: str) -> None:
    from ..models import GENERATORS

    if generator not in GENERATORS and not Path(generator).expanduser().exists():
        raise SweepError(f"generator: {generator!r} is neither a known name ({', '.join(GENERATORS)}) "
                         "nor an existing path")


def _check_space(sweep: Sweep) -> None:
    """Every corner of the space (each key's bounds or choices, alone and combined) must make a
    configuration GuideConfig.validate accepts; its rules are the only range rules."""
    def invalid(values: dict) -> str | None:
        try:
            sweep.config(values)
        except ConfigError as e:
            return str(e)
        return None

    for p in sweep.space.values():
        for where, value in p.corners():
            problem = invalid({p.name: value})
            if problem:
                raise SweepError(f"space.{p.name}.{where}: {p.name} = {value!r} makes an invalid configuration: "
                                 f"{problem}")
    if len(sweep.space) > 1:
        for corner in itertools.product(*([(p.name, v) for _, v in p.corners()] for p in sweep.space.values())):
            problem = invalid(dict(corner))
            if problem:
                shown = ", ".join(f"{k} = {v!r}" for k, v in corner)
                raise SweepError(f"space: the corner {shown} makes an invalid configuration: {problem}")


def _check_schedule(sweep: Sweep) -> None:
    """ASHA's rungs must lie within the reports of the longest trial (Ray asserts grace_period <= max_t)."""
    if sweep.asha is None:
        return
    longest = sweep.max_iterations
    reports = sweep.reports(longest)
    if sweep.asha["grace_period"] > reports:
        raise SweepError(
            f"asha.grace_period ({sweep.asha['grace_period']}) is more than the {reports} report(s) of the longest "
            f"trial (iterations {longest} / report_every {sweep.report_every}): ASHA could never rank a trial; "
            f"lower asha.grace_period or report_every, or raise iterations")


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
    unknown = sorted(set(tree) - set(_SWEEP_KEYS))
    if unknown:
        raise SweepError(f"unknown key {unknown[0]!r} in {path}; valid keys: {', '.join(sorted(_SWEEP_KEYS))}")
    for key in ("generator", "ids", "space"):
        if tree.get(key) is None:
            raise SweepError(f"{path}: missing key {key!r}")
    settings: SweepSettings = _read(SweepSettings, {k: v for k, v in tree.items() if k not in _SECTIONS}, "")
    base = path.parent

    def rel(value):
        return None if value is None else (base / value).resolve()

    space = tree["space"]
    if not isinstance(space, dict) or not space:
        raise SweepError("space: expected a mapping of config keys to ranges, e.g. d: {low: 5, high: 40}")
    fixed = tree.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"set: expected a mapping of config keys to values, got {fixed!r}")
    objectives = _objectives(tree.get("objectives", ["unlearning", "preservation"]))
    base_config = rel(settings.base_config)
    if base_config is not None and not base_config.is_file():
        raise SweepError(f"base_config: {base_config} is not a file")
    try:  # resolved here, so trials never read files (they may run on other machines)
        resolved = to_dict(load_config(base_config, [f"{k}={json.dumps(v)}" for k, v in fixed.items()]))
    except ConfigError as e:
        raise SweepError(f"the configuration is invalid: {e}") from None
    asha = tree.get("asha", True)
    asha = None if asha is False or asha is None else \
        dataclasses.asdict(AshaSettings() if asha is True else _read(AshaSettings, asha, "asha."))
    resources = tree.get("resources")
    if resources is not None:
        resources = dataclasses.asdict(_read(ResourceSettings, resources, "resources."))
        if any(not math.isfinite(v) or v < 0 for v in resources.values()):
            raise SweepError(f"resources: amounts are finite and not negative, got {resources}")
    for key in ("num_samples", "max_concurrent", "report_every", "proxy_samples"):
        if getattr(settings, key) < 1:
            raise SweepError(f"{key}: must be at least 1, got {getattr(settings, key)}")
    for key in ("fid_weight", "drift_weight"):
        if not math.isfinite(getattr(settings, key)) or getattr(settings, key) < 0:
            raise SweepError(f"{key}: must be a number >= 0, got {getattr(settings, key)}")
    if asha is not None:
        if asha["grace_period"] < 1:
            raise SweepError(f"asha.grace_period: must be at least 1, got {asha['grace_period']}")
        if not asha["reduction_factor"] > 1 or not math.isfinite(asha["reduction_factor"]):
            raise SweepError(f"asha.reduction_factor: must be > 1, got {asha['reduction_factor']}")
    sweep = Sweep(
        name=settings.name or path.stem, generator=settings.generator, ids=rel(settings.ids),
        space={name: _param(name, spec) for name, spec in space.items()}, base=resolved, base_config=base_config,
        objectives=objectives, searcher=settings.searcher, fid_weight=settings.fid_weight,
        drift_weight=settings.drift_weight, num_samples=settings.num_samples, max_concurrent=settings.max_concurrent,
        report_every=settings.report_every, asha=asha, resources=resources,
        include_defaults=settings.include_defaults, proxy_samples=settings.proxy_samples, seed=settings.seed,
        out=rel(settings.out), optuna_storage=_storage_url(settings.optuna_storage, base))
    _check_space(sweep)
    _check_schedule(sweep)
    if not sweep.ids.is_file():
        raise SweepError(f"ids: {sweep.ids} is not a file")
    from ..run.ids import IdsError, read_ids

    try:  # photos and rows checked now, not after Ray has started and the trials are scheduled
        _, problems = read_ids(sweep.ids, skip_invalid=True)
    except IdsError as e:
        raise SweepError(f"ids: {e}") from None
    if problems:  # every identity is part of every trial: a sweep has no --skip-invalid
        raise SweepError(f"ids: {sweep.ids}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    _check_generator(sweep.generator)
    return sweep
