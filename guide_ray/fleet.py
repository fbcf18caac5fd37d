"""Many identities on Ray: ``python -m guide_ray.fleet IDS.csv [--mode parallel|sequential] ...``.

parallel: one actor per GPU (or per share of the CPUs) loads its networks once and takes identities
from the queue; each identity yields its own unlearned generator. sequential: identities are erased
one after another from the same generator; after each step the fleet re-measures ID for every
identity already forgotten and FID_pre against the original, so erosion shows.

Durability: every identity's files land in OUT/runs/FLEET_KEY/ID/ (resumable, see
core.pipeline.run_identity); the ledger OUT/ledger.parquet gets one row per identity per fleet,
rewritten atomically as identities finish. A rerun with the same out dir and config (or
``--resume``) skips finished identities and reruns failed ones. A worker killed mid-identity is
restarted by Ray and the identity retried from its last checkpoint. This layer only schedules
``run_identity``; MLflow is reached through guide_ray.tracking.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from .core.config import ConfigError, GuideConfig, config_hash, from_dict, load_config, to_dict
from .core.pipeline import IdentitySpec, write_json
from .core.verdict import VERDICTS
from .images import ImageError, load_image
from .weights import CACHE_ENV

COLUMNS = ("id", "image", "seed", "others")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
WEIGHTS_PREFIX = "weights://"  # weights://openpeople/P001/assets/studio_portrait.jpg: a file of a pulled weight


NOT_ALL_ERASED = 4  # exit status: every identity ran, but not every one was erased


class IdsError(ValueError):
    """An identities CSV that cannot be run; the message lists every bad row."""


def _resolve_photo(value: str, base: Path) -> Path:
    if value.startswith(WEIGHTS_PREFIX):
        from . import weights

        name, _, rest = value[len(WEIGHTS_PREFIX):].partition("/")
        return weights.weight_dir(name) / rest
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _photo_problem(path: Path) -> str | None:
    if not path.exists():
        return f"{path}: file not found"
    if not path.is_file():
        return f"{path}: not a file"
    try:
        load_image(path)
    except ImageError as e:
        return str(e)
    return None


def read_ids(path: str | Path, skip_invalid: bool = False) -> tuple[list[IdentitySpec], list[str]]:
    """Validate the whole CSV; return its identities and the problems of the rows left out.

    Raises IdsError naming every bad row (CSV line numbers, header = line 1) unless
    ``skip_invalid``, which keeps the good rows and returns the problems.
    """
    path = Path(path)
    if not path.exists():
        raise IdsError(f"{path}: file not found")
    if not path.is_file():
        raise IdsError(f"{path}: is a directory, not an identities CSV")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise IdsError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    if not text.strip():
        raise IdsError(f"{path}: is empty; expected a header line 'id,image,seed,others' and one row per identity")
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    if "id" not in header or not ({"image", "seed"} & set(header)) or unknown:
        raise IdsError(f"{path}: wrong header {header}; columns are id (required), image or seed, and optionally "
                       f"others" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    specs, problems, seen = [], [], {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            problems.append(f"line {line}: more fields than the header has")
            continue
        errs = []
        ident, image, seed = row.get("id", ""), row.get("image", ""), row.get("seed", "")
        if not ident:
            errs.append("empty id")
        elif not SAFE_ID.fullmatch(ident):
            errs.append(f"id {ident!r} must be letters, digits, '.', '_' or '-' (it names a folder and a run)")
        elif ident in seen:
            errs.append(f"duplicate id {ident!r} (first on line {seen[ident]})")
        else:
            seen[ident] = line
        if bool(image) == bool(seed):
            errs.append("give exactly one of image and seed")
        if seed:
            try:
                if int(seed) < 0:
                    raise ValueError
            except ValueError:
                errs.append(f"seed {seed!r} is not a non-negative integer")
        photos = ([_resolve_photo(image, path.parent)] if image else []) + [
            _resolve_photo(p.strip(), path.parent) for p in row.get("others", "").split(";") if p.strip()]
        errs += [p for p in map(_photo_problem, photos) if p]
        if errs:
            problems.append(f"line {line} ({ident or 'no id'}): " + "; ".join(errs))
        else:
            specs.append(IdentitySpec(ident, image=photos[0] if image else None, seed=int(seed) if seed else None,
                                      others=photos[1:] if image else photos))
    if not specs and not problems:
        raise IdsError(f"{path}: has a header but no identities")
    if problems and not skip_invalid:
        raise IdsError(f"{path}: {len(problems)} bad row(s); fix them or pass --skip-invalid to run the "
                       f"{len(specs)} good one(s):\n  " + "\n  ".join(problems))
    return specs, problems


@contextmanager
def ray_session(address: str | None):
    """Ray, found as ``ray.init`` finds it (address None: RAY_ADDRESS, else a cluster running on this
    machine, else a new embedded one; 'local': always embedded); shut down after if started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **({"include_dashboard": False} if address == "local" else {}))
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def worker_env() -> dict | None:
    """The runtime_env that points Ray workers at this process's weights cache."""
    return {"env_vars": {CACHE_ENV: os.environ[CACHE_ENV]}} if CACHE_ENV in os.environ else None


class FleetError(RuntimeError):
    """The fleet cannot run at all (e.g. its workers cannot load the generator)."""


class Ledger:
    """One row per (fleet, identity) in a Parquet file, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path).to_pylist() if self.path.exists() else []

    def fleet(self, fleet_key: str) -> dict[str, dict]:
        return {r["id"]: r for r in self.rows() if r["fleet_key"] == fleet_key}

    def upsert(self, updates: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = {(r["fleet_key"], r["id"]): r for r in self.rows()}
        for update in updates:
            key = (update["fleet_key"], update["id"])
            rows[key] = {**rows.get(key, {}), **update, "updated_at": time.time()}
        columns = sorted({k for r in rows.values() for k in r})
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows.values()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)


class IdentityWorker:
    """Holds a generator, its pristine copy and the frozen networks; unlearns one identity per call."""

    def __init__(self, generator: str, cfg: dict, device: str | None = None, threads: int | None = None):
        import torch

        from .core.pipeline import Networks
        from .models import load_generator

        if threads:
            torch.set_num_threads(threads)
        self.cfg = from_dict(GuideConfig, cfg)
        self.generator = load_generator(generator, device)
        self.original = copy.deepcopy(self.generator).requires_grad_(False)
        self.nets = Networks(self.cfg, self.generator.device)

    def ready(self) -> int:
        return os.getpid()

    def unlearn(self, spec: dict, run_dir: str, start_from: str | None = None,
                earlier: list[tuple[str, str]] | None = None) -> dict:
        """Unlearn ``spec`` from the original generator, or from the one saved at ``start_from``.
        ``earlier`` (sequential mode): (id, latents.pt) of identities already erased, re-measured
        afterwards with FID_pre against the original. Never raises: a failure is a result."""
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "worker.pid").write_text(str(os.getpid()))
            result = self._unlearn(IdentitySpec(**spec), run_dir, start_from)
            if earlier is not None and result["status"] == "finished":
                result["erosion"] = self._erosion(earlier + [(spec["id"], str(run_dir / "latents.pt"))])
            return result
        except Exception as e:  # one bad identity never takes the fleet down: it is recorded as failed
            return {"id": spec["id"], "status": "failed", "error": f"{type(e).__name__}: {e}"}

    def _unlearn(self, spec: IdentitySpec, run_dir: Path, start_from: str | None) -> dict:
        from .core.checkpoint import apply_checkpoint
        from .core.pipeline import run_identity

        finished = run_dir / "result.json"
        if finished.exists():  # a retried call whose first attempt completed
            result = json.loads(finished.read_text())
            if result.get("config_hash") == config_hash(self.cfg):
                return result
        self.generator.load_state_dict(self.original.state_dict())
        if start_from:
            apply_checkpoint(self.generator, start_from)
        return run_identity(self.generator, spec, self.cfg, self.nets, run_dir, overwrite=finished.exists(),
                            show_progress=False)

    def _erosion(self, erased: list[tuple[str, str]]) -> dict:
        import torch

        from .core.evaluate import (default_fid_samples, fid_scores, generator_fingerprint, generator_stats,
                                    identity_similarity)

        ev = self.cfg.evaluation
        ids = {}
        for ident, latents in erased:
            w_u = torch.load(latents, map_location=self.generator.device, weights_only=True)["w_u"]
            ids[ident] = float(identity_similarity(self.nets.id_metric, self.original, self.generator, w_u,
                                                   ev.id_views)[0])
        samples = ev.fid_samples or default_fid_samples(self.nets.device)
        key = (generator_fingerprint(self.original), samples, ev.fid_seed)
        if key not in self.nets.fid_cache:
            self.nets.fid_cache[key] = generator_stats(self.original, self.nets.inception, samples, ev.fid_seed,
                                                       ev.fid_batch)
        fid = fid_scores(self.original, self.generator, self.nets.inception, samples, ev.fid_seed, ev.fid_batch,
                         None, self.nets.fid_cache[key])
        return {"id": ids, "fid_pre_vs_original": fid.fid_pre}


def _metric_columns(result: dict) -> dict:
    m = result.get("metrics", {})
    return {f"metric_{k}": (float(m[k]) if m.get(k) is not None else None)
            for k in ("id", "id_others", "reinversion_id", "inversion_id", "face_kept", "fid_pre")}


def _ledger_row(fleet_key: str, mode: str, generator: str, cfg_hash: str, step: int, result: dict,
                run_dir: Path, attempt: int) -> dict:
    ckpt = result.get("checkpoint")
    return {
        "fleet_key": fleet_key, "id": result["id"], "mode": mode, "generator": generator, "config_hash": cfg_hash,
        "status": result["status"], "verdict": result.get("verdict"),
        "represented": result.get("verdict_detail", {}).get("represented"),
        "verdict_reason": result.get("verdict_detail", {}).get("reason"), "step": step, **_metric_columns(result),
        "metrics_json": json.dumps(result.get("metrics", {})), "timings_json": json.dumps(result.get("timings", {})),
        "checkpoint_uri": Path(ckpt).resolve().as_uri() if ckpt else None, "run_dir": str(run_dir),
        "error": result.get("error") or result.get("message") or None, "attempt": attempt,
    }


def _fmt(v, spec=".3f"):
    return format(v, spec) if isinstance(v, (int, float)) and v == v else "–"


def erosion_metrics(erosion: dict) -> dict[str, float]:
    """Sequential mode, after a step: ID of every identity erased so far (id_now_ID) and FID_pre
    against the original generator, as logged on the fleet run and tagged on the final version."""
    return {**{f"id_now_{i}": v for i, v in erosion["id"].items()}, "fid_pre_vs_original": erosion["fid_pre_vs_original"]}


def summary_table(table: list[dict]) -> str:
    """The console view of ``review.summary_rows``."""
    head = (f"{'identity':16s} {'status':9s} {'verdict':15s} {'ID':>7s} {'ID_oth':>7s} {'re-inv':>7s} {'faces':>6s} "
            f"{'FID_pre':>8s} {'ID now':>7s}  error")
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['identity'][:16]:16s} {r['status']:9s} {r['verdict'] or '–':15s} {_fmt(r['ID']):>7s} "
                     f"{_fmt(r['ID_others']):>7s} {_fmt(r['re-inversion ID']):>7s} {_fmt(r['face kept'], '.0%'):>6s} "
                     f"{_fmt(r['FID_pre'], '.2f'):>8s} {_fmt(r['ID now']):>7s}  {r['error'][:80]}")
    counts = {v: sum(r["verdict"] == v for r in table) for v in VERDICTS}
    lines.append("verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) +
                 f" of {len(table)} identities" if any(counts.values()) else "verdicts: none yet")
    return "\n".join(lines)


class Fleet:
    """The driver: schedules identities on Ray actors, records each result in the ledger and MLflow."""

    def __init__(self, specs: list[IdentitySpec], cfg: GuideConfig, generator: str, mode: str, out: Path,
                 tracking_uri: str | None, workers: int | None, gpus_per_worker: float, show_progress: bool = True,
                 ray_address: str | None = None):
        from .tracking import Tracker, model_name, resolve_uri

        self.specs, self.cfg, self.generator, self.mode = specs, cfg, generator, mode
        self.out = Path(out).resolve()
        self.cfg_hash = config_hash(cfg)
        self.fleet_key = f"{mode}-{Path(generator).name}-{self.cfg_hash}"
        self.runs = self.out / "runs" / self.fleet_key
        self.ledger = Ledger(self.out / "ledger.parquet")
        self.tracker = Tracker(resolve_uri(tracking_uri, self.out), self.out / "mlartifacts")
        self.model_name = model_name(generator)
        self.workers, self.gpus_per_worker, self.show_progress = workers, gpus_per_worker, show_progress
        self.ray_address = ray_address
        self.parent = self.tracker.parent_run(
            "fleet", self.fleet_key, f"fleet {mode} {self.fleet_key}",
            {"mode": mode, "generator": generator, "identities": len(specs), "config": to_dict(cfg)},
            {"mode": mode, "generator": Path(generator).name})

    def _actors(self, count: int):
        import ray

        resources = ray.cluster_resources()
        if resources.get("GPU", 0) > 0 and self.gpus_per_worker > 0:
            count = count or max(1, int(resources["GPU"] / self.gpus_per_worker))
            options = {"num_gpus": self.gpus_per_worker, "num_cpus": 1}
            threads = None
        else:
            count = count or 1
            threads = max(1, int(resources.get("CPU", 1) // count))
            options = {"num_cpus": threads}
        remote = ray.remote(max_restarts=-1, max_task_retries=2)(IdentityWorker)
        actors = [remote.options(**options, runtime_env=worker_env()).remote(
            self.generator, to_dict(self.cfg), None, threads) for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayActorError as e:
            raise FleetError(f"the workers could not load {self.generator} and the networks: {e}") from None
        return actors

    def _record(self, result: dict, step: int, done_before: dict[str, dict]) -> dict:
        run_dir = self.runs / result["id"]
        mlflow_id = self.tracker.identity_run(self.parent, self.fleet_key, result, run_dir,
                                              {"mode": self.mode, "generator": Path(self.generator).name})
        attempt = int(done_before.get(result["id"], {}).get("attempt") or 0) + 1
        row = {**_ledger_row(self.fleet_key, self.mode, self.generator, self.cfg_hash, step, result, run_dir, attempt),
               "mlflow_run_id": mlflow_id}
        self.ledger.upsert([row])
        if self.mode == "parallel" and row["status"] == "finished":
            self._register(row, [row["id"]], json.loads(row["metrics_json"]), {row["id"]: row["verdict"]})
        return row

    def _register(self, row: dict, identities: list[str], metrics: dict, verdicts: dict[str, str]) -> None:
        """Register the generator of ``row``'s run (it was asked to forget ``identities``; ``verdicts``
        says what came of each) in the Model Registry; tag all_erased says whether it may be deployed."""
        tags = {"identities": ";".join(identities), "config_hash": self.cfg_hash, "fleet_key": self.fleet_key,
                "mode": self.mode, "base_generator": self.generator, "checkpoint_uri": row["checkpoint_uri"],
                "verdicts": ";".join(f"{i}={verdicts.get(i)}" for i in identities),
                "all_erased": str(all(verdicts.get(i) == "erased" for i in identities)).lower(),
                **{f"metric_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.tracker.register_generator(self.model_name, row["mlflow_run_id"], tags)

    def _register_finished(self, rows: dict[str, dict], ok: bool, earlier: list[str]) -> None:
        """parallel: the generators of the identities an earlier run of this fleet finished (a crash
        may have come before their registration; it is idempotent), the others were registered as
        they finished; sequential: the final generator, once every identity is erased."""
        if self.mode == "parallel":
            for ident in earlier:
                self._register(rows[ident], [ident], json.loads(rows[ident]["metrics_json"]),
                               {ident: rows[ident].get("verdict")})
        elif ok:
            final = json.loads((self.runs / "final.json").read_text())
            self._register(rows[self.specs[-1].id], [s.id for s in self.specs], erosion_metrics(final["erosion"]),
                           {i: r.get("verdict") for i, r in rows.items()})

    def _review(self, table: list[dict]) -> list[Path]:
        """The parent run's files: summary table (CSV, HTML), ID and FID_pre per identity, and in
        sequential mode the ID of every identity erased so far after each step."""
        from . import review

        folder = self.runs / "_review"  # ids start with a letter or digit: no identity folder is named so
        files = review.write_summary(table, folder, f"fleet {self.fleet_key}")
        files.append(review.metrics_plot(table, folder / "metrics.png", f"fleet {self.fleet_key}"))
        if self.mode == "sequential":
            history = self.tracker.step_history(self.parent)
            order = [s.id for s in self.specs]
            ids_after = {i: history[f"id_now_{i}"] for i in order if f"id_now_{i}" in history}
            if ids_after:
                files.append(review.erosion_plot(order, ids_after, history.get("fid_pre_vs_original", {}),
                                                 folder / "erosion.png", f"fleet {self.fleet_key}: erosion"))
        return files

    def run(self) -> int:
        from tqdm import tqdm

        from . import review
        from .tracking import is_server

        previous = self.ledger.fleet(self.fleet_key)
        todo = [s for s in self.specs if previous.get(s.id, {}).get("status") != "finished"]
        skipped = len(self.specs) - len(todo)
        if skipped:
            print(f"resuming fleet {self.fleet_key}: {skipped} identities already finished, {len(todo)} to run",
                  file=sys.stderr)
        bar = tqdm(total=len(self.specs), initial=skipped, desc=f"fleet ({self.mode})", unit="identity",
                   disable=not self.show_progress, dynamic_ncols=True)
        counts = {"finished": skipped, "failed": 0, "running": 0}

        def note(row):
            counts[row["status"] if row["status"] == "finished" else "failed"] += 1
            bar.update(1)
            bar.set_postfix(done=counts["finished"], running=counts["running"], failed=counts["failed"])
            bar.write(f"{row['id']}: {row['status']}  {row.get('verdict') or ''}  ID {_fmt(row.get('metric_id'))}  "
                      f"face kept {_fmt(row.get('metric_face_kept'), '.0%')}  FID_pre "
                      f"{_fmt(row.get('metric_fid_pre'), '.2f')}" + (f"  ({row['error']})" if row.get("error") else ""))

        if todo:
            with ray_session(self.ray_address):
                if self.mode == "parallel":
                    self._parallel(todo, previous, counts, note, bar)
                else:
                    self._sequential(previous, counts, note, bar)
        bar.close()
        rows = self.ledger.fleet(self.fleet_key)
        ok = all(rows.get(s.id, {}).get("status") == "finished" for s in self.specs)
        erased = sum(rows.get(s.id, {}).get("verdict") == "erased" for s in self.specs)
        table = review.summary_rows([s.id for s in self.specs], rows)
        print(summary_table(table))
        finished = [r for r in rows.values() if r["status"] == "finished"]
        self._register_finished(rows, ok, [i for i in rows if i in previous and previous[i]["status"] == "finished"])
        self.tracker.finish(self.parent, ok and erased == len(self.specs),
                            {"identities_finished": len(finished), "identities_failed": len(self.specs) - len(finished),
                             **{f"identities_{v}": sum(r.get("verdict") == v for r in rows.values()) for v in VERDICTS}},
                            self._review(table),
                            outcome=f"{erased} of {len(self.specs)} erased" + ("" if ok else ", some failed"))
        uri = self.tracker.uri
        print(f"ledger: {self.ledger.path}\nruns:   {self.runs}\nMLflow: {uri} " +
              (f"(open {uri} in a browser)" if is_server(uri) else f"(open with: mlflow ui --backend-store-uri {uri})")
              + f"; generators registered as {self.model_name}")
        if not ok:
            return 1
        return 0 if erased == len(self.specs) else NOT_ALL_ERASED

    def _parallel(self, todo, previous, counts, note, bar) -> None:
        import ray

        actors = self._actors(self.workers or 0)
        pending, inflight, idle = deque(todo), {}, list(actors)
        while pending or inflight:
            while idle and pending:
                actor, spec = idle.pop(), pending.popleft()
                inflight[actor.unlearn.remote(_spec_dict(spec), str(self.runs / spec.id))] = (actor, spec)
            counts["running"] = len(inflight)
            bar.set_postfix(done=counts["finished"], running=counts["running"], failed=counts["failed"])
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor, spec = inflight.pop(ref)
                note(self._record(_get(ref, spec), -1, previous))
                idle.append(actor)

    def _sequential(self, previous, counts, note, bar) -> None:

        (actor,) = self._actors(1)
        start_from, erased = None, []
        for step, spec in enumerate(self.specs):
            before = previous.get(spec.id, {})
            if before.get("status") == "finished":  # a resumed fleet: this step's generator is on disk
                start_from = str(self.runs / spec.id / "checkpoint.safetensors")
                erased.append((spec.id, str(self.runs / spec.id / "latents.pt")))
                continue
            counts["running"] = 1
            ref = actor.unlearn.remote(_spec_dict(spec), str(self.runs / spec.id), start_from, list(erased))
            result = _get(ref, spec)
            row = self._record(result, step, previous)
            if result["status"] == "finished":
                start_from = result["checkpoint"]
                erased.append((spec.id, str(self.runs / spec.id / "latents.pt")))
                erosion = result["erosion"]
                self.ledger.upsert([{"fleet_key": self.fleet_key, "id": i, "id_now": v, "id_now_after": spec.id}
                                    for i, v in erosion["id"].items()])
                self.tracker.fleet_step(self.parent, step, erosion_metrics(erosion))
                write_json(self.runs / "final.json", {"checkpoint": start_from, "after": spec.id, "step": step,
                                                      "erosion": erosion})
            note(row)


def _spec_dict(spec: IdentitySpec) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v)
            for k, v in asdict(spec).items()}


def _get(ref, spec: IdentitySpec) -> dict:
    import ray

    try:
        return ray.get(ref)
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:  # retries exhausted
        return {"id": spec.id, "status": "failed", "error": f"worker lost: {type(e).__name__}: {str(e)[:500]}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guide_ray.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ids", help="CSV with columns id, image or seed, others (';'-separated photos)")
    p.add_argument("--mode", choices=("parallel", "sequential"), default="parallel")
    p.add_argument("--generator", default="mobilestylegan-ffhq1024", help="a generator name or path")
    p.add_argument("--config", help="YAML config (keys of GuideConfig)")
    p.add_argument("--preset", help="a Table 1 row: baseline, extrapolated, adjacency, guide")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=0, help="actors (parallel mode); default: one per GPU, else 1")
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--out", default="outputs/fleet", help="ledger, runs and the default MLflow store")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///OUT/mlflow.db)")
    p.add_argument("--resume", action="store_true", help="rerun the fleet saved in OUT/fleet.json "
                   "(same mode, generator and config); finished identities are skipped")
    p.add_argument("--skip-invalid", action="store_true", help="run the good rows of a CSV with bad ones")
    p.add_argument("--ray-address", help="a Ray cluster (default: RAY_ADDRESS, else a running local cluster, "
                   "else an embedded one); 'local' always starts an embedded one")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        if args.resume:
            saved = out / "fleet.json"
            if not saved.exists():
                raise ConfigError(f"--resume: {saved} not found; no fleet ran in {out}")
            fleet = json.loads(saved.read_text())
            cfg = from_dict(GuideConfig, fleet["config"])
            mode, generator = fleet["mode"], fleet["generator"]
        else:
            cfg = load_config(args.config, args.set, args.preset)
            mode, generator = args.mode, args.generator
        specs, problems = read_ids(args.ids, args.skip_invalid)
    except (IdsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    write_json(out / "fleet.json", {"mode": mode, "generator": generator, "config": to_dict(cfg),
                                    "ids": str(Path(args.ids).resolve())})
    try:
        fleet = Fleet(specs, cfg, generator, mode, out, args.tracking_uri, args.workers, args.gpus_per_worker,
                      show_progress=not args.no_progress, ray_address=args.ray_address)
        return fleet.run()
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
