"""How faithful MobileStyleGAN's reduced-resolution view is (train_resolution, models/mobilestylegan.py):
for each seed, the view's image against the full generator's image of the same latent.

    python benchmarks/reduced_resolution.py --resolution 256 --seeds 0-99 --out outputs/reduced-256

Per seed: PSNR and ST-LPIPS distance between the view's R² image and the 1024² image
area-downsampled to R², and FaceNet's identity similarity between the two (the same person?).
Prints the mean, minimum and quartiles, and writes OUT/pairs.png (the first 8 seeds: view above,
full below) to look at. The head is fitted on torch-seeded latents, never on these NumPy seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from guide_ray.allocator import keep_freed_memory
from guide_ray.cli import parse_seeds
from guide_ray.images import save_png, to_uint8
from guide_ray.models import load_generator, load_identity_net, load_perceptual
from guide_ray.models.identity import cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-99"))
    p.add_argument("--out", default="outputs/reduced-resolution")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    g = load_generator("mobilestylegan-ffhq1024", args.device)
    view = g.at_resolution(args.resolution)
    facenet = load_identity_net("facenet-vggface2", g.device)
    perceptual = load_perceptual("stlpips-vgg", g.device)
    rows, tiles = [], []
    with torch.no_grad():
        for seed in args.seeds:
            ws = g.mapping(g.z_from_seed(seed))
            full = g.synthesis(ws)
            reduced = view.synthesis(ws)
            reference = F.avg_pool2d(full, g.resolution // args.resolution)
            psnr = float(10 * torch.log10(4 / F.mse_loss(reduced, reference)))
            lpips = float(perceptual(reduced, reference).mean())
            same = float(cosine(facenet.embed_generated(reduced, g.ffhq_box), facenet.embed_generated(full, g.ffhq_box))[0])
            rows.append({"seed": seed, "psnr": psnr, "stlpips": lpips, "facenet_id": same})
            if len(tiles) < 8:
                tiles.append((to_uint8(reduced)[0], to_uint8(reference)[0]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(rows, indent=1))
    save_png(np.concatenate([np.concatenate([t[0] for t in tiles], 1), np.concatenate([t[1] for t in tiles], 1)], 0),
             out / "pairs.png")
    print(f"{g.name} at {args.resolution}x{args.resolution} (cut after layer {view.cut}, {view.used_ws} of "
          f"{view.num_ws} W+ entries) vs its 1024x1024 image, {len(rows)} seeds")
    print("| measure | mean | min | 25% | median | 75% |")
    print("|---|---|---|---|---|---|")
    for key in ("psnr", "stlpips", "facenet_id"):
        v = np.array([r[key] for r in rows])
        print(f"| {key} | {v.mean():.3f} | {v.min():.3f} | {np.percentile(v, 25):.3f} | {np.median(v):.3f} | "
              f"{np.percentile(v, 75):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
