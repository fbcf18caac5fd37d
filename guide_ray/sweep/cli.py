"""``python -m guide_ray.sweep --config SWEEP.yaml ...`` (also ``guide-ray sweep``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..allocator import keep_freed_memory
from .driver import SweepInterrupted, run_sweep
from .results import export_config, export_generators, pick
from .spec import OBJECTIVES, SweepError, load_sweep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guide_ray.sweep", description=sys.modules[__package__].__doc__,
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
    p.add_argument("--export-best", metavar="PATH", help="write the picked trial's configuration as fleet YAML, "
                   "and its unlearned generators as DIR/ID/checkpoint.safetensors (DIR: PATH without its suffix)")
    p.add_argument("--pick", default="score", help="which trial --export-best writes: the Pareto front's lowest "
                   "score (default), unlearning or preservation, or a trial id")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress table")
    args = p.parse_args(argv)
    keep_freed_memory()
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
        path = Path(args.export_best)
        folder = path.with_suffix("") if path.suffix else path.with_name(path.name + ".generators")
        try:
            row = pick(rows, front, args.pick)
            generators = export_generators(sweep, row, folder)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        export_config(sweep, row, path, folder)
        print(f"exported trial {row['trial']} to {path} and its generators to "
              f"{', '.join(str(g) for g in generators)}")
    return 0 if any(r["status"] == "complete" for r in rows) else 1
