"""``python -m guide_ray.fleet IDS.csv ...`` (also ``guide-ray fleet``): options, validation, exit status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..allocator import keep_freed_memory
from ..config import ConfigError, GuideConfig, from_dict, load_audit_config, load_config, to_dict
from ..run.files import write_json
from ..run.ids import IdsError, read_ids
from .driver import Fleet, FleetError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guide_ray.fleet", description=sys.modules[__package__].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ids", help="CSV with columns id, image or seed, others (';'-separated photos)")
    p.add_argument("--mode", choices=("parallel", "sequential", "joint"), default="parallel",
                   help="parallel: one generator per identity; sequential: one generator, one identity after "
                   "another; joint: one generator, every identity at once on Ray Train workers")
    p.add_argument("--generator", default="mobilestylegan-ffhq1024",
                   help="a generator name or path, or a registered unlearned generator to start from: "
                   "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (from the store of "
                   "--tracking-uri)")
    p.add_argument("--config", help="YAML config (keys of GuideConfig)")
    p.add_argument("--preset", help="a Table 1 row: baseline, extrapolated, adjacency, guide")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=0, help="actors (parallel mode) or Ray Train workers (joint "
                   "mode); default: one per GPU, else 1")
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--out", default="outputs/fleet", help="ledger, runs and the default MLflow store")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///OUT/mlflow.db)")
    p.add_argument("--resume", action="store_true", help="rerun the fleet saved in OUT/fleet.json "
                   "(same mode, generator and config); finished identities are skipped")
    p.add_argument("--skip-invalid", action="store_true", help="run the good rows of a CSV with bad ones")
    p.add_argument("--ray-address", help="a Ray cluster (default: RAY_ADDRESS, else a running local cluster, "
                   "else an embedded one); 'local' always starts an embedded one")
    p.add_argument("--audit", action="store_true", help="after the fleet, audit every finished identity's erasure "
                   "(guide-ray audit: attacks on G_u beside G_s; the summary's audit column, RUNS/_audit/ID)")
    p.add_argument("--audit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="audit settings (config.AuditConfig), with --audit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    keep_freed_memory()
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
        audit = load_audit_config(args.audit_set) if args.audit else None
        if args.audit_set and not args.audit:
            raise ConfigError("--audit-set needs --audit")
    except (IdsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    try:
        fleet = Fleet(specs, cfg, generator, mode, out, args.tracking_uri, args.workers, args.gpus_per_worker,
                      show_progress=not args.no_progress, ray_address=args.ray_address, audit=audit)
        # a generator URI is saved with its alias pinned (models:/NAME/VERSION): --resume starts from the same one
        write_json(out / "fleet.json", {"mode": mode, "generator": fleet.start["pinned"] if fleet.start else generator,
                                        "config": to_dict(cfg), "ids": str(Path(args.ids).resolve())})
        return fleet.run()
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
