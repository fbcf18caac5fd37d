"""One generator that has forgotten N identities: sequential vs joint, side by side, in one run.

    python benchmarks/many_identities.py --seeds 9,36,39,1,2,3,4,5 --set iterations=60 --set lr=6e-4 \
        --set latent_pool=16 --set evaluation.fid_samples=100 --set evaluation.reinversion=false \
        --fid-samples 200 --out outputs/many_identities --doc docs/many_identities.md

Each arm is the fleet itself (``python -m guide_ray.fleet``, its own out dir, one embedded Ray):
sequential (one identity after another onto one generator), sequential with rehearsal of the
identities erased before (``rehearsal``: their erased faces held while the next is erased), and
joint (every identity at once, ``identities_per_step`` = all) on 1 and on 2 Ray Train workers;
every identity gets the same iterations. Then, on each arm's FINAL generator, the same measurements for all arms: per identity
the ID between G_s(w_u) and G_final(w_u) and whether G_final(w_u) is a face (erased = both, at the
verdict's thresholds); FID_pre of the final generator against the original (FID on
--fid-samples); the mean ID of 16 other seeds to themselves (below OTHERS_KEPT the generator lost
its faces and nothing counts as erased); the pairwise ID among the erased faces (distinct identities must not end as one
face); wall time of the arm (Ray start, inversions, training, evaluation, records). The table and
an image of every identity before and after, per arm, go to --doc. An arm that ran to its end
(OUT/ARM/arm.json) is not run again: a rerun after a crash runs the others and measures all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from guide_ray import fleet
from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.core.evaluate import fid_scores, generated_identity, generator_stats, identity_similarity
from guide_ray.core.inversion import random_source
from guide_ray.images import save_png, to_uint8
from guide_ray.models import load_generator
from guide_ray.run.networks import Networks

OTHERS_KEPT = 0.5  # mean ID of other faces to themselves below which the generator lost them (0.232: strangers)
ARMS = {"sequential": ["--mode", "sequential"],
        "sequential-rehearsal": ["--mode", "sequential", "--set", "rehearsal=1.0"],
        "joint-1-worker": ["--mode", "joint", "--workers", "1"],
        "joint-2-workers": ["--mode", "joint", "--workers", "2"]}


def final_checkpoint(out: Path, mode: str) -> Path:
    (runs,) = (out / "runs").iterdir()
    if mode == "sequential":
        return Path(json.loads((runs / "final.json").read_text())["checkpoint"])
    return runs / "_joint" / "checkpoint.safetensors"


@torch.no_grad()
def measure(generator: str, checkpoint: Path, seeds: list[int], nets: Networks, fid_samples: int, base_stats):
    g_s = load_generator(generator, "cpu")
    g = load_generator(generator, "cpu", checkpoint=checkpoint)
    w_us = torch.cat([random_source(g_s, s) for s in seeds])
    ids = identity_similarity(nets.id_metric, g_s, g, w_us)
    faces = nets.faces(torch.cat([g.synthesis(w[None]) for w in w_us]))
    emb = F.normalize(generated_identity(nets.id_metric, g, w_us), dim=-1)
    pair = (emb @ emb.T)[~torch.eye(len(seeds), dtype=torch.bool)]
    fid = fid_scores(g_s, g, nets.inception, fid_samples, 123, 16, None, base_stats).fid_pre
    level = nets.thresholds.id_level
    # A generator that draws one face for everyone also "erases" everyone: an identity counts as erased
    # only when the generator's other faces are still themselves (seeds 1000-1015, none of the identities:
    # mean ID to G_s at least OTHERS_KEPT) and G_final(w_u) is a face of another person.
    others = identity_similarity(nets.id_metric, g_s, g, torch.cat([random_source(g_s, s) for s in range(1000, 1016)]))
    kept = float(others.mean())
    erased = [bool(i < level and nets.faces.is_face(f) and kept >= OTHERS_KEPT)
              for i, f in zip(ids.tolist(), faces.tolist())]
    strip = torch.cat([torch.cat([g_s.synthesis(w[None]), g.synthesis(w[None])], dim=2) for w in w_us], dim=3)
    return {"id": ids.tolist(), "face": faces.tolist(), "erased": erased, "fid_pre": fid, "others_id": kept,
            "pairwise_id_max": float(pair.max()), "pairwise_id_mean": float(pair.mean()), "strip": strip}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="dcgan-digiface64")
    p.add_argument("--seeds", default="9,36,39,1,2,3,4,5", help="the identities: Random-scenario seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, every arm")
    p.add_argument("--arms", default=",".join(ARMS), help="which arms, comma-separated")
    p.add_argument("--fid-samples", type=int, default=200)
    p.add_argument("--out", default="outputs/many_identities")
    p.add_argument("--doc", default=None, help="write the table (Markdown) here, the images beside it in img/")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ids.csv").write_text("id,image,seed,others\n" + "".join(f"s{s},,{s},\n" for s in seeds))
    cfg = load_config(None, args.set)
    sets = [a for s in args.set for a in ("--set", s)]
    results = {}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            p.error(f"--arms: {arm!r} is not one of {', '.join(ARMS)}")
        folder = out / arm
        done = folder / "arm.json"  # an arm that ran to its end is not run again (a rerun finishes the others)
        if not done.exists():
            t = time.perf_counter()
            code = fleet.main([str(out / "ids.csv"), "--generator", args.generator, "--out", str(folder),
                               "--no-progress", "--ray-address", "local", *ARMS[arm], *sets])
            done.write_text(json.dumps({"code": code, "wall_s": time.perf_counter() - t, "set": args.set}))
        results[arm] = {**json.loads(done.read_text()), "folder": folder}
        print(f"{arm}: exit {results[arm]['code']}, {results[arm]['wall_s']:.0f} s", flush=True)
    nets = Networks(cfg, "cpu")
    base = generator_stats(load_generator(args.generator, "cpu"), nets.inception, args.fid_samples, 123, 16)
    lines = [f"| arm | wall s | erased on the final generator | ID per identity | other faces kept (mean ID, 16 "
             f"seeds) | FID_pre vs original ({args.fid_samples} samples) | pairwise ID among erased faces (max / mean) |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in results.items():
        mode = "sequential" if arm.startswith("sequential") else "joint"
        m = measure(args.generator, final_checkpoint(r["folder"], mode), seeds, nets, args.fid_samples, base)
        r.update({k: v for k, v in m.items() if k != "strip"})
        rows = pq.read_table(r["folder"] / "ledger.parquet").to_pylist()
        r["ledger_verdicts"] = {row["identity"]: row["verdict"] for row in rows}
        name = f"many-identities-{arm}.png"
        if args.doc:
            save_png(to_uint8(m["strip"])[0], Path(args.doc).parent / "img" / name)
        lines.append(f"| {arm} | {r['wall_s']:.0f} | {sum(m['erased'])}/{len(seeds)} | "
                     f"{' '.join(f'{v:.2f}' for v in m['id'])} | {m['others_id']:.2f} | {m['fid_pre']:.1f} | "
                     f"{m['pairwise_id_max']:.2f} / {m['pairwise_id_mean']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (out / "results.json").write_text(json.dumps({a: {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}
                                                  for a, r in results.items()}, indent=1))
    if args.doc:
        Path(args.doc).write_text(
            f"# One generator for many identities: sequential vs joint\n\n"
            f"`python benchmarks/many_identities.py --seeds {args.seeds} {' '.join(sets)} --fid-samples "
            f"{args.fid_samples} --doc {args.doc}` on {args.generator}, {len(seeds)} identities (seeds "
            f"{args.seeds}), the same iterations per identity in every arm; ID threshold "
            f"{nets.thresholds.id_level:.3f} (FaceNet's different-person level).\n\n{table}\n\n"
            + "".join(f"![{a}](img/many-identities-{a}.png)  \n{a}: G_s(w_u) over G_final(w_u), "
                      f"seeds left to right\n\n" for a in results))
    return 0 if all(r["code"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
