"""How different is UFO's target from the source, before any training? For Random-scenario seeds,
the metric's similarity between G_s(w_u) and G_s(w_t) (Eq. 3) at several distances d, next to the
similarity of two different faces of the same generator and the real-photo different-person level.

    python benchmarks/ufo_targets.py --generator dcgan-digiface64 --seeds 50 --d 10,20,30,45

If the target is not a different person for the metric, no amount of LTU can make G_u(w_u) one.
"""

from __future__ import annotations

import argparse

import torch

from guide_ray.core.config import load_config
from guide_ray.core.evaluate import different_person_level, generated_identity
from guide_ray.core.ltu import target_latent
from guide_ray.core.ufo import distance_scale
from guide_ray.models import load_generator, load_identity_net
from guide_ray.models.identity import cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="dcgan-digiface64")
    p.add_argument("--seeds", type=int, default=50, help="seeds 1..N")
    p.add_argument("--d", default="10,20,30,45", help="d values in the config's units (distance_units)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    cfg = load_config()
    g = load_generator(args.generator, args.device)
    metric = load_identity_net(cfg.id_metric_net, g.device)
    level = different_person_level(metric)
    ws = torch.cat([g.mapping(g.z_from_seed(s)) for s in range(1, args.seeds + 1)])
    sources = generated_identity(metric, g, ws)
    unit = sources / sources.norm(dim=1, keepdim=True)
    pairs = unit @ unit.T
    between = pairs[~torch.eye(len(ws), dtype=torch.bool)].mean()
    scale = distance_scale(g, cfg.distance_units)
    print(f"{args.generator}, metric {cfg.id_metric_net}, seeds 1-{args.seeds}")
    print(f"real-photo different-person level (openpeople): {level:.3f}")
    print(f"two different generated faces, mean similarity:  {between:.3f}\n")
    print("| d (config) | d (latent units) | mean sim(source, target) | targets above the level |")
    print("|---|---|---|---|")
    for d in (float(v) for v in args.d.split(",")):
        dcfg = load_config(overrides=[f"d={d}"])
        targets = torch.cat([target_latent(g, w[None], dcfg, scale) for w in ws])
        sim = cosine(sources, generated_identity(metric, g, targets))
        print(f"| {d:g} | {d * scale:.1f} | {sim.mean():.3f} | {(sim > level).sum().item()}/{len(ws)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
