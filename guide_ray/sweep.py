"""Sweeps: ``python -m guide_ray.sweep --config jobs/sweep/NAME.yaml [--set key=value ...]``.

Ray Tune runs trials; Optuna picks them (TPE for one objective, NSGA-II or multi-objective TPE for
two); ASHA stops poor trials early. A trial erases every identity of the sweep's ids.csv with its
configuration, the identities advanced together in blocks of ``report_every`` LTU iterations;
after each block it reports the mean ID so far and a cheap preservation proxy (the perceptual
drift of G_u from G_s on a few fixed latents), which ASHA ranks by ``progress_score`` =
id_now + drift_weight x drift. A trial that runs to the end is evaluated in full:

    unlearning   = mean over identities of mean(ID, ID_others)   (ID alone for seeds), where an
                   identity whose verdict is not "erased" counts as 1 (a smear, a person the
                   generator cannot draw or one still there is never a success)
    preservation = mean over identities of FID_pre
    score        = unlearning + fid_weight x preservation        (single-objective runs)

The sweep writes OUT/trials.csv, the Pareto front of (unlearning, preservation) over the trials
that erased every identity as OUT/pareto.csv,
OUT/pareto.md and OUT/pareto.png, every trial across its parameters and objectives as
OUT/parallel_coordinates.png, logs a parent MLflow run (holding those files) with a nested run per
trial, and ``--export-best PATH`` writes a chosen trial's full configuration as YAML for the
fleet. An interrupted sweep resumes from OUT/tune/NAME when run again: finished trials are not
rerun.
The method is core.*; this layer only schedules it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .core.config import ConfigError, GuideConfig, apply_override, from_dict, load_config, to_dict, validate

SEARCHABLE = ("d", "alpha_max", "lambda_l2", "lambda_per", "lambda_id", "lambda_adj", "lambda_global", "lr",
              "iterations")
OBJECTIVES = ("unlearning", "preservation", "score")
SEARCHERS = ("auto", "tpe", "nsga2")
EXPERIMENT = "guide_ray-sweep"
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


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial ended (Ctrl-C); its state is saved for a rerun."""


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


# --- a trial ---------------------------------------------------------------------------------

def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_trial(params: dict, *, sweep: Sweep, identities: list, sources: dict) -> None:
    """One configuration on every identity; reports every ``report_every`` iterations, then in full."""
    import ray
    import torch
    from ray import tune

    from .core.evaluate import identity_similarity
    from .core.ltu import Unlearning
    from .core.pipeline import Networks, evaluate_run, inversion_view, training_view
    from .core.verdict import judge
    from .models import load_generator

    started_at = time.time()
    cpus = int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)) or 1
    torch.set_num_threads(max(1, cpus))
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    cfg = sweep.config(params)
    nets = Networks(cfg, device)
    runs = []
    for spec in identities:
        src = sources[spec.id].to(device)
        generator = training_view(load_generator(sweep.generator, device), cfg)  # ASHA's progress at its resolution
        runs.append((spec.id, src, Unlearning(generator, src.w_u, cfg, nets.id_loss, nets.perceptual,
                                              face_check=nets.faces)))
    g_s, terms = runs[0][2].problem.g_s, runs[0][2].problem.terms
    with torch.no_grad():  # the preservation proxy's latents and their frozen perceptual features
        rng = torch.Generator().manual_seed(cfg.evaluation.fid_seed + 1)
        proxy_ws = g_s.mapping(torch.randn(sweep.proxy_samples, g_s.z_dim, generator=rng).to(g_s.device))
        proxy_before = terms.perceptual_features(g_s.synthesis(proxy_ws))

    def progress(step: int) -> dict:
        with torch.no_grad():  # an identity whose G_u(w_u) is no longer a face counts as not forgotten (1)
            ids = [float(identity_similarity(nets.id_metric, run.problem.g_s, run.generator, src.w_u,
                                             cfg.evaluation.id_views)[0])
                   if nets.faces.is_face(float(nets.faces(run.generator.synthesis(src.w_u))[0])) else 1.0
                   for _, src, run in runs]
            drift = [float(terms.perceptual_distance(terms.perceptual_features(run.generator.synthesis(proxy_ws)),
                                                     proxy_before).mean()) for _, _, run in runs]
        id_now, drift_now = sum(ids) / len(ids), sum(drift) / len(drift)
        return {"step": step, "id_now": id_now, "drift": drift_now,
                "progress_score": id_now + sweep.drift_weight * drift_now, "started_at": started_at}

    blocks = list(range(sweep.report_every, cfg.iterations, sweep.report_every)) + [cfg.iterations]
    for until in blocks[:-1]:
        for _, _, run in runs:
            run.advance(until)
        tune.report(progress(until))
    final = {}
    diverged = erased = 0
    unlearning, fids, id_values, other_values = [], [], [], []
    for (ident, src, run), spec in zip(runs, identities):
        run.advance(cfg.iterations)
        ltu = run.finish()
        diverged += ltu.status == "diverged"
        photo = spec.image is not None
        m = evaluate_run(ltu.g_s.full, run.generator.full, src.w_u, ltu.w_t, src.w_others, src.source_image, cfg,
                         nets, photo, g_u_fit=inversion_view(run.generator.full, cfg))
        verdict = judge(m, photo, nets.thresholds).verdict
        erased += verdict == "erased"
        id_values.append(m["id"])
        if "id_others" in m:
            other_values.append(m["id_others"])
        unlearning.append(unlearning_of(m, verdict))
        fids.append(m["fid_pre"])
        final.update({f"id_{ident}": m["id"], f"fid_pre_{ident}": m["fid_pre"], f"face_kept_{ident}": m["face_kept"],
                      f"verdict_{ident}": verdict})
    objectives = {"unlearning": _mean(unlearning), "preservation": _mean(fids)}
    objectives["score"] = objectives["unlearning"] + sweep.fid_weight * objectives["preservation"]
    tune.report({**progress(cfg.iterations), **final, **objectives, "id": _mean(id_values),
                 "id_others": _mean(other_values), "fid_pre": _mean(fids), "diverged": diverged,
                 "erased": erased, "identities": len(runs), "seconds": time.time() - started_at})


def unlearning_of(metrics: dict, verdict: str) -> float:
    """One identity's share of the unlearning objective: mean(ID, ID_others) (ID for a seed) when it
    was erased, 1 (the worst a cosine similarity can be for this purpose) when it was not."""
    if verdict != "erased":
        return 1.0
    return (metrics["id"] + metrics["id_others"]) / 2 if "id_others" in metrics else metrics["id"]


def invert_all(sweep: Sweep, identities: list) -> dict:
    """Each identity's latents in G_s (photos inverted once, shared by every trial)."""
    from .core.pipeline import Networks, invert_identity
    from .models import load_generator

    cfg = sweep.config()
    generator = load_generator(sweep.generator)
    nets = Networks(cfg, generator.device)
    return {spec.id: invert_identity(generator, spec, cfg, nets, show_progress=False).to("cpu") for spec in identities}


# --- the results ------------------------------------------------------------------------------

def pareto_front(rows: list[dict], keys=("unlearning", "preservation")) -> list[dict]:
    """The rows no other row dominates (<= in every key and < in one); all keys are minimised."""
    def dominates(a, b):
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def trial_rows(grid, space: dict[str, Param]) -> list[dict]:
    rows = []
    for result in grid:
        m = result.metrics or {}
        params = {k: result.config.get(k) for k in space}
        complete = m.get("unlearning") is not None
        status = "error" if result.error else "complete" if complete else "stopped early"
        rows.append({"trial": m.get("trial_id") or Path(result.path).name, "status": status,
                     "reports": m.get("training_iteration"), **params,
                     **{k: m.get(k) for k in ("unlearning", "preservation", "score", "erased", "identities", "id",
                                              "id_others", "fid_pre", "id_now", "drift", "progress_score",
                                              "started_at")}})
    return rows


def write_results(sweep: Sweep, rows: list[dict], out: Path) -> tuple[list[dict], list[Path]]:
    """trials.csv, pareto.csv/.md/.png, parallel_coordinates.png; returns the front and the files."""
    from .review import cell, parallel_coordinates, pyplot

    plt = pyplot()

    complete = [r for r in rows if r["status"] == "complete"]
    feasible = [r for r in complete if all_erased(r)]  # a trial that left anyone un-erased is no candidate
    front = sorted(pareto_front(feasible), key=lambda r: r["unlearning"])
    columns = list(rows[0]) if rows else []
    files = []
    for name, table in (("trials.csv", rows), ("pareto.csv", front)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
        files.append(out / name)
    shown = ["trial", *sweep.space, "unlearning", "preservation", "score"]
    md = [f"Pareto front of sweep `{sweep.name}` over the {len(feasible)} trials that erased every identity "
          f"({len(complete)} complete trials of {len(rows)}; {sum(r['status'] == 'stopped early' for r in rows)} "
          f"stopped early by ASHA). Lower is better.", "",
          "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(cell(r[k]) for k in shown) + " |" for r in front]
    (out / "pareto.md").write_text("\n".join(md) + "\n")
    files.append(out / "pareto.md")

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter([r["unlearning"] for r in feasible], [r["preservation"] for r in feasible], c="0.6", s=22,
               label="every identity erased")
    others = [r for r in complete if not all_erased(r)]
    if others:
        ax.scatter([r["unlearning"] for r in others], [r["preservation"] for r in others], marker="x", c="0.75",
                   s=22, label="some identity not erased")
    ax.plot([r["unlearning"] for r in front], [r["preservation"] for r in front], "o-", c="tab:red", ms=6,
            label="Pareto front")
    base = [r for r in complete if all(r[k] == sweep.base[k] for k in sweep.space)]
    if base:
        ax.scatter([r["unlearning"] for r in base], [r["preservation"] for r in base], marker="*", s=220,
                   c="tab:blue", zorder=5, label="base configuration")
    ax.set_xlabel("unlearning: mean(ID, ID_others)  (lower = more forgotten)")
    ax.set_ylabel("preservation: FID_pre  (lower = less changed)")
    ax.set_title(f"{sweep.name}: {len(complete)} complete trials, {len(feasible)} erased every identity",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png")
    plt.close(fig)
    files.append(out / "pareto.png")
    files.append(parallel_coordinates(rows, [*sweep.space, "unlearning", "preservation"],
                                      out / "parallel_coordinates.png", color_by="score",
                                      title=f"{sweep.name}: {len(rows)} trials (dashed: stopped early or failed)",
                                      log_axes={k for k, p in sweep.space.items() if p.log}))
    return front, files


def all_erased(row: dict) -> bool:
    """Did a complete trial erase every identity?"""
    return row.get("erased") is not None and row["erased"] == row.get("identities")


def pick(rows: list[dict], front: list[dict], how: str) -> dict:
    """The trial to export: the front's lowest 'score', 'unlearning' or 'preservation', or a trial id."""
    if how in OBJECTIVES:
        if not front:
            raise SweepError("no trial erased every identity, so there is nothing to export")
        return min(front, key=lambda r: r[how])
    for r in rows:
        if r["trial"] == how:
            if r["status"] != "complete":
                raise SweepError(f"trial {how} did not complete ({r['status']})")
            if not all_erased(r):
                raise SweepError(f"trial {how} did not erase every identity ({r['erased']} of {r['identities']})")
            return r
    raise SweepError(f"--pick {how!r}: not one of {', '.join(OBJECTIVES)} nor a trial id of this sweep")


def export_config(sweep: Sweep, row: dict, path: Path) -> None:
    cfg = sweep.config({k: row[k] for k in sweep.space})
    header = (f"# From sweep {sweep.name}, trial {row['trial']}: unlearning {row['unlearning']:.4f}, "
              f"FID_pre {row['preservation']:.3f}, score {row['score']:.4f}.\n"
              f"# Use it with: python -m guide_ray.fleet IDS.csv --generator {sweep.generator} --config {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- the driver -------------------------------------------------------------------------------

def tune_callback(uri: str, artifacts: Path, sweep_key: str, parent: str, space: list[str]):
    """A Tune callback that logs each trial to MLflow as it ends (nested under the sweep's run)."""
    from ray import tune

    class TrialLogger(tune.Callback):
        def __init__(self):
            self._tracker = None

        def __getstate__(self):  # Tune saves its callbacks with the experiment; the client is rebuilt
            return {}

        def __setstate__(self, state):
            self._tracker = None

        @property
        def tracker(self):
            from .tracking import Tracker

            if self._tracker is None:
                self._tracker = Tracker(uri, artifacts, EXPERIMENT)
            return self._tracker

        def _log(self, trial, status: str):
            result = trial.last_result or {}
            if status == "complete" and result.get("unlearning") is None:
                status = "stopped early"
            self.tracker.trial_run(parent, sweep_key, trial.trial_id, {k: trial.config.get(k) for k in space},
                                   result, status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._log(trial, "complete")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._log(trial, "error")

    return TrialLogger()


def _searcher(sweep: Sweep):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class Search(OptunaSearch):
        """Intermediate reports carry no objective (only ASHA uses them), and a trial that ASHA
        stopped has none: Optuna records it as pruned, not as a failed tell."""

        def on_trial_result(self, trial_id, result):
            if not isinstance(self.metric, list) and self.metric in result:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if result and any(result.get(m) is None for m in metrics):
                result = None
            super().on_trial_complete(trial_id, result, error)

    multi = len(sweep.objectives) == 2
    kind = sweep.searcher if sweep.searcher != "auto" else ("nsga2" if multi else "tpe")
    sampler = (optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=max(2, min(8, sweep.num_samples // 2)))
               if kind == "nsga2" else optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=4))
    points = []
    if sweep.include_defaults:
        point = {k: sweep.base[k] for k in sweep.space}
        if all(sweep.space[k].contains(v) for k, v in point.items()):
            points.append(point)
        else:
            print(f"note: the base configuration ({point}) lies outside the search space; not evaluated",
                  file=sys.stderr)
    metric = sweep.objectives if multi else sweep.objectives[0]
    mode = ["min"] * len(sweep.objectives) if multi else "min"
    return Search(metric=metric, mode=mode, sampler=sampler, points_to_evaluate=points or None, seed=None)


def run_sweep(sweep: Sweep, ray_address: str | None = None, tracking_uri: str | None = None,
              verbose: int = 1) -> tuple[list[dict], list[dict], str]:
    """Run (or resume) the sweep; returns all trials, the Pareto front and the MLflow parent run id."""
    import ray
    from ray import tune

    from .fleet import ray_session, read_ids, worker_env
    from .tracking import Tracker, resolve_uri

    out = sweep.out_dir
    saved, fingerprint = out / "sweep.json", json.loads(json.dumps(sweep.fingerprint()))
    if saved.exists() and json.loads(saved.read_text()) != fingerprint:
        raise SweepError(f"{out} holds a different sweep (another space, base config or settings); "
                         "resume it with its own file, or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(fingerprint, indent=2))
    identities, _ = read_ids(sweep.ids)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    sweep_key = f"{sweep.name}-{digest}"
    uri = resolve_uri(tracking_uri, out)
    tracker = Tracker(uri, out / "mlartifacts", EXPERIMENT)
    parent = tracker.parent_run("sweep", sweep_key, f"sweep {sweep_key}",
                                {"generator": sweep.generator, "ids": str(sweep.ids), "objectives": sweep.objectives,
                                 "space": {k: vars(p) for k, p in sweep.space.items()}, "base": sweep.base},
                                {"generator": Path(sweep.generator).name})
    # Intermediate reports carry ASHA's progress_score, not the searcher's objectives (final only).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    with ray_session(ray_address):
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        resources = sweep.resources or ({"cpu": 1, "gpu": 1} if gpu else {"cpu": 1})
        print(f"sweep {sweep.name}: {len(identities)} identities, {sweep.num_samples} trials, "
              f"objectives {sweep.objectives}, trial resources {resources}", file=sys.stderr)
        invert = ray.remote(invert_all).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0),
                                                runtime_env=worker_env())
        sources = ray.get(invert.remote(sweep, identities))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, sweep=sweep, identities=identities, sources=sources), resources)
        storage = out / "tune"
        if tune.Tuner.can_restore(storage / sweep.name):
            print(f"resuming the sweep in {storage / sweep.name}", file=sys.stderr)
            tuner = tune.Tuner.restore(str(storage / sweep.name), trainable, resume_errored=True)
        else:
            scheduler = None
            if sweep.asha:
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(metric="progress_score", mode="min",
                                          max_t=math.ceil(sweep.max_iterations / sweep.report_every), **sweep.asha)
            tuner = tune.Tuner(
                trainable, param_space={k: p.domain() for k, p in sweep.space.items()},
                tune_config=tune.TuneConfig(search_alg=_searcher(sweep), scheduler=scheduler,
                                            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(storage), verbose=verbose,
                                          callbacks=[tune_callback(uri, out / "mlartifacts", sweep_key, parent,
                                                                   list(sweep.space))]))
        grid = tuner.fit()
    ended = grid.num_terminated + grid.num_errors
    if ended < sweep.num_samples:
        raise SweepInterrupted(f"interrupted with {ended} of {sweep.num_samples} trials ended; the state is saved "
                               f"in {out / 'tune' / sweep.name}: run the same command again to resume")
    rows = trial_rows(grid, sweep.space)
    for row, result in zip(rows, grid):  # trials the callback missed (a crash between end and log)
        tracker.trial_run(parent, sweep_key, row["trial"], {k: row[k] for k in sweep.space}, result.metrics or {},
                          row["status"])
    front, files = write_results(sweep, rows, out)
    complete = sum(r["status"] == "complete" for r in rows)
    tracker.finish(parent, complete > 0, {"trials": len(rows), "trials_complete": complete,
                                          "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows),
                                          "pareto_size": len(front)}, files)
    return rows, front, parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guide_ray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the sweep YAML (see jobs/sweep/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the sweep file (dotted: space.d.high=40, set.iterations=100)")
    p.add_argument("--out", help="results, the Tune experiment and the default MLflow store "
                   "(default: the file's `out`, else outputs/sweeps/NAME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///OUT/mlflow.db)")
    p.add_argument("--ray-address", help="a Ray cluster (default: RAY_ADDRESS, else a running local cluster, "
                   "else an embedded one); 'local' always starts an embedded one")
    p.add_argument("--export-best", metavar="PATH", help="write the picked trial's configuration as fleet YAML")
    p.add_argument("--pick", default="score", help="which trial --export-best writes: the Pareto front's lowest "
                   "score (default), unlearning or preservation, or a trial id")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress table")
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.set)
        if args.out:
            sweep.out = Path(args.out)
        if args.pick not in OBJECTIVES and not args.export_best:
            raise SweepError("--pick needs --export-best")
        rows, front, _ = run_sweep(sweep, args.ray_address, args.tracking_uri, verbose=0 if args.quiet else 1)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SweepInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    print((sweep.out_dir / "pareto.md").read_text())
    print(f"trials: {sweep.out_dir / 'trials.csv'}\nPareto plot: {sweep.out_dir / 'pareto.png'}")
    if args.export_best:
        try:
            row = pick(rows, front, args.pick)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        export_config(sweep, row, Path(args.export_best))
        print(f"exported trial {row['trial']} to {args.export_best}")
    return 0 if any(r["status"] == "complete" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
