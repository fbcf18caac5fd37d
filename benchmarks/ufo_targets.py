"""Is UFO's target a face, and another person, before any training? For Random-scenario seeds 1..N:
G_s(w_t) judged by both face detectors (dlib's MMOD CNN, the default, and MTCNN), and the ID
metric's similarity between G_s(w_u) and G_s(w_t), per Eq. 3 geometry and distance d; then the
targets the pipeline uses (config defaults, with the face check that shrinks d).

    python benchmarks/ufo_targets.py --generator dcgan-digiface64 --seeds 20 --d 15,30,45

If the target is not a face, LTU teaches G_u to draw a smear; if it is not another person for the
metric, no amount of LTU makes G_u(w_u) one.
"""

from __future__ import annotations

import argparse

import torch

from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.core.evaluate import generated_identity
from guide_ray.run.calibration import cached_calibration
from guide_ray.core.ltu import target_latent
from guide_ray.core.ufo import distance_scale, geometry_for, ufo_target
from guide_ray.models import load_generator, load_identity_net
from guide_ray.models.face_check import FaceCheck
from guide_ray.models.identity import cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="dcgan-digiface64")
    p.add_argument("--seeds", type=int, default=20, help="seeds 1..N")
    p.add_argument("--d", default="15,30,45", help="d values in the config's units (distance_units)")
    p.add_argument("--geometries", default="w+,auto", help="Eq. 3 geometries to compare (auto: the default)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    cfg = load_config()
    g = load_generator(args.generator, args.device)
    metric = load_identity_net(cfg.id_metric_net, g.device)
    checks = [FaceCheck("dlib-mmod", device=g.device), FaceCheck("mtcnn", device=g.device)]
    level = cached_calibration(metric, cfg.id_metric_net).different_person_level
    ws = torch.cat([g.mapping(g.z_from_seed(s)) for s in range(1, args.seeds + 1)])
    n = len(ws)

    def judged(latents):
        with torch.no_grad():
            images = torch.cat([g.synthesis(w[None]) for w in latents])
        faces = [sum(check.is_face(v) for v in check(images)) for check in checks]
        sim = cosine(sources, generated_identity(metric, g, latents))
        return faces, sim

    sources = generated_identity(metric, g, ws)
    source_faces, _ = judged(ws)
    scale = distance_scale(g, cfg.distance_units)
    print(f"{args.generator}, seeds 1-{n}; ID metric {cfg.id_metric_net}, different-person level {level:.3f}")
    print(f"the sources G_s(w_u) are faces: {source_faces[0]}/{n} (dlib-mmod), {source_faces[1]}/{n} (mtcnn)\n")
    print("| geometry | d (config) | G_s(w_t) a face: dlib-mmod | mtcnn | mean sim(source, target) | "
          "targets above the level |")
    print("|---|---|---|---|---|---|")
    for geometry in args.geometries.split(","):
        name = geometry_for(g) if geometry == "auto" else geometry
        for d in (float(v) for v in args.d.split(",")):
            (mmod, mtcnn), sim = judged(torch.cat([ufo_target(w[None], g.w_avg, d * scale, name) for w in ws]))
            print(f"| {name}{' (default)' if geometry == 'auto' else ''} | {d:g} | {mmod}/{n} | {mtcnn}/{n} | "
                  f"{sim.mean():.3f} | {(sim > level).sum().item()}/{n} |")
    targets = [target_latent(g, w[None], cfg, scale, checks[0]) for w in ws]
    (mmod, mtcnn), sim = judged(torch.cat([t.w_t for t in targets]))
    shrunk = [f"seed {i + 1}: d {t.d / scale:.3g}" for i, t in enumerate(targets) if t.d < cfg.d * scale]
    print(f"\nThe pipeline's targets (defaults: d = {cfg.d:g}, geometry {targets[0].geometry}, d shrunk until "
          f"dlib-mmod calls G_s(w_t) a face): a face for {mmod}/{n} (dlib-mmod), {mtcnn}/{n} (mtcnn); "
          f"mean sim {sim.mean():.3f}, {(sim > level).sum().item()}/{n} above the level; "
          f"d shrunk for {len(shrunk)}/{n}" + (f" ({', '.join(shrunk)})" if shrunk else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
