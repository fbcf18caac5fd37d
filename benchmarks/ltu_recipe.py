"""An LTU recipe on one photo's latent, measured as it trains: the curve of ID at 1024² (and at the
training view), G_u(w_u)'s face score and how four other latents keep their identity.

    python benchmarks/photo_inversion.py --people P003 --out outputs/photo-inversion
    python benchmarks/ltu_recipe.py --latent outputs/photo-inversion/P003.pt --name full-lr5e-4 \\
        --set train_resolution=null --set lr=5e-4 --set iterations=200 --every 25 --out outputs/ltu-recipes

Every ``--every`` steps one JSON line (OUT/NAME/log.jsonl, printed too): step, ID (FaceNet, G_s(w_u)
vs G_u(w_u)) on 1024² renders and on the training view, face score of G_u(w_u), mean ID of four other
latents to themselves (1 = kept), given a run's latents.pt the mean ID of its other photos' latents
(ID_others), s / iteration, the step's losses. At the end OUT/NAME/strip.png:
G_s(w_u), G_s(w_t), G_u(w_u), then two other latents before and after. The search of
docs/mobilestylegan-cpu.md ran this on P003 (the hardest portrait); the winner is judged in full by
`guide-ray fleet` (verdict, ID_others, FID_pre against its floor).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.core.evaluate import identity_similarity
from guide_ray.core.ltu import Unlearning
from guide_ray.images import save_png, to_uint8
from guide_ray.models import load_generator
from guide_ray.run.identity import training_view
from guide_ray.run.networks import Networks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", required=True, help="w_u [1, num_ws, w_dim] (photo_inversion.py's PERSON.pt), or a "
                   "run's latents.pt (its w_u, and its other photos' w_others for the ID_others curve)")
    p.add_argument("--name", required=True)
    p.add_argument("--config", default="jobs/configs/mobilestylegan-cpu.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--fid", type=int, default=0, help="at the end, FID_pre and its floor on this many 1024² samples")
    p.add_argument("--out", default="outputs/ltu-recipes")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    cfg = load_config(args.config, args.set)
    g = load_generator("mobilestylegan-ffhq1024", args.device)
    nets = Networks(cfg, g.device)
    latent = torch.load(args.latent, map_location=g.device, weights_only=True)
    w_u, w_photos = (latent["w_u"], latent["w_others"]) if isinstance(latent, dict) else (latent, None)
    g_train = training_view(g, cfg)
    t0 = time.perf_counter()
    run = Unlearning(g_train, w_u, cfg, nets.id_loss, nets.perceptual, face_check=nets.faces)
    setup = time.perf_counter() - t0
    g_s = run.problem.g_s.full
    with torch.no_grad():  # four other latents (torch seed 5): never in the run's pools
        others = g.mapping(torch.randn(4, g.z_dim, generator=torch.Generator().manual_seed(5)).to(g.device))
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.jsonl", "w") as log:
        step, trained = 0, 0.0
        while step < cfg.iterations and not run.done:
            step = min(step + args.every, cfg.iterations)
            t = time.perf_counter()
            run.advance(step)
            trained += time.perf_counter() - t
            with torch.no_grad():
                row = {"name": args.name, "step": run.step,
                       "id": float(identity_similarity(nets.id_metric, g_s, g, w_u, 1)[0]),
                       "id_view": float(identity_similarity(nets.id_metric, run.problem.g_s, g_train, w_u, 1)[0]),
                       "face_after": float(nets.faces(g.synthesis(w_u))[0]),
                       "others_kept": float(identity_similarity(nets.id_metric, g_s, g, others, 1).mean()),
                       # the person's other photos: G_s vs G_u on their latents (the run's ID_others)
                       "id_others": None if w_photos is None else
                       float(identity_similarity(nets.id_metric, g_s, g, w_photos, 1).mean()),
                       "s_per_iteration": trained / max(run.step, 1), "setup_s": setup, "status": run.status,
                       "losses": run.history[-1] if run.history else {}}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    if args.fid:
        from guide_ray.core.evaluate import fid_scores, floor_seed, generator_fingerprint

        ev, fingerprint = cfg.evaluation, generator_fingerprint(g_s)
        before = nets.pretrained_stats(g_s, fingerprint, args.fid, ev.fid_seed, ev.fid_batch)
        floor = before.fid(nets.pretrained_stats(g_s, fingerprint, args.fid, floor_seed(ev.fid_seed), ev.fid_batch))
        fid = fid_scores(g_s, g, nets.inception, args.fid, ev.fid_seed, ev.fid_batch, g_s_stats=before).fid_pre
        row = {"name": args.name, "step": run.step, "fid_pre": fid, "fid_floor": floor, "fid_samples": args.fid}
        print(json.dumps(row), flush=True)
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")
    with torch.no_grad():
        pictures = [g_s.synthesis(w_u), g_s.synthesis(run.problem.w_t), g.synthesis(w_u),
                    *(g_s.synthesis(w[None]) for w in others[:2]), *(g.synthesis(w[None]) for w in others[:2])]
    save_png(to_uint8(torch.cat([F.interpolate(x, size=256, mode="area") for x in pictures], 3))[0], out / "strip.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
