"""The paper's Table 1 (and Table 2's ID_others) on an open generator: baseline -> + extrapolated w_t
-> + L_adj -> + L_global (GUIDE), over openpeople identities (source = studio_portrait, others =
the other photos) and Random-scenario seeds.

    python benchmarks/table1.py --generator dcgan-digiface64 --iterations 300 --out outputs/table1

Each identity is inverted once (with G_s) and shared by the four rows; every run lands in
OUT/runs/ROW/ID/ and is skipped when its result.json exists, so an interrupted table resumes.
The markdown table is written to OUT/table1.md with the command line that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from guide_ray import weights
from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.results import RunResult
from guide_ray.run.identity import IdentitySpec, SourceLatents, invert_identity, run_identity
from guide_ray.run.networks import Networks
from guide_ray.models import load_generator

ROWS = [("baseline", "Baseline"), ("extrapolated", "+ extrapolated w_t"), ("adjacency", "+ L_adj"),
        ("guide", "+ L_global (GUIDE)")]
OTHER_PHOTOS = ("studio_posture", "amateur_selfie", "amateur_posture")


def identities(people: list[str], seeds: list[int]) -> list[IdentitySpec]:
    root = weights.directory("openpeople")
    specs = [IdentitySpec(p, image=root / p / "assets" / "studio_portrait.jpg",
                          others=[root / p / "assets" / f"{o}.jpg" for o in OTHER_PHOTOS]) for p in people]
    return specs + [IdentitySpec(f"seed{s}", seed=s) for s in seeds]


def cached_sources(generator, spec, cfg, nets, folder: Path) -> SourceLatents:
    path = folder / "sources.pt"
    if path.exists():
        return SourceLatents(**torch.load(path, weights_only=True))
    sources = invert_identity(generator, spec, cfg, nets)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(vars(sources.to("cpu")), path)
    return sources


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "–"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="dcgan-digiface64")
    p.add_argument("--people", default="P001,P002,P003,P004,P005")
    p.add_argument("--seeds", default="1,2", help="Random-scenario identities")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="outputs/table1")
    p.add_argument("--device", default=None)
    p.add_argument("--rows", default=",".join(r for r, _ in ROWS), help="which rows to run (comma-separated)")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    out = Path(args.out)
    rows = [(r, label) for r, label in ROWS if r in args.rows.split(",")]
    if not rows:
        p.error(f"--rows: none of {args.rows!r} is one of {', '.join(r for r, _ in ROWS)}")
    specs = identities([s for s in args.people.split(",") if s], [int(s) for s in args.seeds.split(",") if s])
    base_cfg = load_config(overrides=[f"iterations={args.iterations}", *args.set])
    g_s = load_generator(args.generator, args.device)
    nets = Networks(base_cfg, g_s.device)
    sources = {s.id: cached_sources(g_s, s, base_cfg, nets, out / "identities" / s.id) for s in specs}
    results: dict[str, list[RunResult]] = {}
    for preset, _ in rows:
        cfg = load_config(preset=preset, overrides=[f"iterations={args.iterations}", *args.set])
        for spec in specs:
            run_dir = out / "runs" / preset / spec.id
            if (run_dir / "result.json").exists():
                result = RunResult.from_dict(json.loads((run_dir / "result.json").read_text()))
            else:
                print(f"[{preset}] {spec.id}", file=sys.stderr)
                g_u = load_generator(args.generator, args.device)
                result = run_identity(g_u, spec, cfg, nets, run_dir, sources=sources[spec.id])
            results.setdefault(preset, []).append(result)

    level = nets.thresholds.id_level
    lines = [f"Generator `{args.generator}`, {args.iterations} LTU iterations, identities: "
             f"{', '.join(s.id for s in specs)} (photos: source = studio_portrait, others = "
             f"{', '.join(OTHER_PHOTOS)}). ID metric: `{base_cfg.id_metric_net}`; its different-person level on "
             f"openpeople (mean similarity between different identities) is **{level:.3f}**.",
             "", "| Method | ID ↓ | ID_others ↓ | re-inversion ID ↓ | inversion ID ↑ | face kept ↑ | FID_pre ↓ "
             "| ID < level | represented | erased |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for preset, label in rows:
        rs = results[preset]
        m = [r.metrics for r in rs]
        ids = [x.id for x in m]
        others = [x.id_others for x in m if x.id_others is not None]
        reinv = [x.reinversion_id for x in m if x.reinversion_id is not None]
        inversion = [x.inversion_id for r, x in zip(rs, m) if r.source["image"]]  # seeds: 1 by construction
        n = len(rs)
        below = sum(v < level for v in ids)
        represented = sum(r.verdict_detail["represented"] for r in rs)
        erased = sum(r.verdict == "erased" for r in rs)
        lines.append(f"| {label} | {fmt(ids)} | {fmt(others)} | {fmt(reinv)} | {fmt(inversion)} | "
                     f"{fmt([x.face_kept for x in m])} | {fmt([x.fid_pre for x in m])} | {below}/{n} | "
                     f"{represented}/{n} | {erased}/{n} |")
    last_preset, last_label = rows[-1]
    lines += ["", f"Per identity ({last_label}): " + ", ".join(
        f"{r.identity} {r.verdict} (ID {r.metrics.id:.3f}, face kept {r.metrics.face_kept:.0%}, "
        f"target d {r.latents['d_used']:.3g})" for r in results[last_preset]),
              "", f"FID_pre on {results[last_preset][0].metrics.fid_samples} samples (same latents before/after).",
              "", "Produced by:", "", "    python benchmarks/table1.py " + " ".join(argv if argv is not None else sys.argv[1:])]
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
