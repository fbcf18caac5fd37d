"""UFO's target for photos: openpeople studio portraits inverted with the default projector (cached
in OUT), then G_s(w_t) in each Eq. 3 geometry, judged by the face detector and the ID metric.

    python benchmarks/photo_targets.py --generator mobilestylegan-ffhq1024 --people P001,P002,P003 --out outputs/photo-targets

Prints, per person: the inversion's ID to the photo (is the person in the generator?), and per
geometry the face score of G_s(w_t) and its similarity to the photo; writes OUT/targets.png (one
row per person: photo, G_s(w_u), then G_s(w_t) per geometry) to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from guide_ray import weights
from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.core.evaluate import generated_identity
from guide_ray.run.identity import IdentitySpec, SourceLatents, invert_identity
from guide_ray.run.networks import Networks
from guide_ray.core.ufo import distance_scale, ufo_target
from guide_ray.images import grid, save_png, to_uint8
from guide_ray.models import load_generator
from guide_ray.models.identity import cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="mobilestylegan-ffhq1024")
    p.add_argument("--people", default="P001,P002,P003")
    p.add_argument("--geometries", default="w+,w")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", default="outputs/photo-targets")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    out = Path(args.out)
    cfg = load_config(overrides=args.set)
    g = load_generator(args.generator, args.device)
    nets = Networks(cfg, g.device)
    scale = distance_scale(g, cfg.distance_units)
    root = weights.directory("openpeople")
    tile, rows = 256, []
    print(f"{args.generator}, d = {cfg.d:g} ({cfg.d * scale:.1f} latent units), inversion: {cfg.inversion.space}, "
          f"{cfg.inversion.steps} steps; face detector {nets.faces.name} (a face at >= {nets.faces.threshold}); "
          f"ID metric {cfg.id_metric_net}, level {nets.thresholds.id_level:.3f}")
    print("| person | inversion ID to the photo | geometry | G_s(w_t) face score | sim(photo, G_s(w_t)) |")
    print("|---|---|---|---|---|")
    for person in args.people.split(","):
        cache = out / f"{person}-{args.generator}-{cfg.inversion.space}-{cfg.inversion.steps}.pt"
        if cache.exists():
            src = SourceLatents(**torch.load(cache, weights_only=True))
        else:
            print(f"inverting {person}", file=sys.stderr)
            spec = IdentitySpec(person, image=root / person / "assets" / "studio_portrait.jpg")
            src = invert_identity(g, spec, cfg, nets).to("cpu")
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(vars(src), cache)
        src = src.to(g.device)
        with torch.no_grad():
            photo_id = nets.id_metric.embed_generated(src.source_image, g.ffhq_box)
            inversion_id = float(cosine(photo_id, generated_identity(nets.id_metric, g, src.w_u))[0])
            pictures = [src.source_image, g.synthesis(src.w_u)]
            for geometry in args.geometries.split(","):
                w_t = ufo_target(src.w_u, g.w_avg, cfg.d * scale, geometry)
                image = g.synthesis(w_t)
                score = float(nets.faces(image)[0])
                sim = float(cosine(photo_id, generated_identity(nets.id_metric, g, w_t))[0])
                print(f"| {person} | {inversion_id:.3f} | {geometry} | {score:.3f} | {sim:.3f} |")
                pictures.append(image)
        rows.append(to_uint8(torch.cat([F.interpolate(x, size=(tile, tile), mode="area") for x in pictures])))
    save_png(grid(np.concatenate(rows), cols=len(rows[0])), out / "targets.png")
    print(f"wrote {out / 'targets.png'} (columns: photo, G_s(w_u), then G_s(w_t) for {args.geometries})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
