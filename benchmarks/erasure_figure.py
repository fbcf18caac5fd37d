"""One identity's erasure as a picture: the photo, G_s(w_u), UFO's target G_s(w_t) and G_u(w_u), then
8 random samples of G_s above the same latents through G_u (the rest of the generator kept?).

    python benchmarks/erasure_figure.py outputs/demo-photo/P001 --out docs/img/demo-P001.png

RUN_DIR is an identity's folder (result.json, latents.pt, the checkpoint result.json names). The
samples are NumPy seeds 0-7 (``guide-ray sample --seeds 0-7``), untruncated.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from guide_ray.images import save_png, to_uint8
from guide_ray.models import load_generator
from guide_ray.run.folder import RunFolder

TILE = 256
LABEL = 22


def tiles(images: list[torch.Tensor]) -> list[np.ndarray]:
    return [to_uint8(F.interpolate(x, size=TILE, mode="area"))[0] for x in images]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args(argv)
    run = RunFolder(args.run_dir)
    result, latents = run.result, run.latents
    g_s = load_generator(run.spec, "cpu")
    g_u = load_generator(run.spec, "cpu", checkpoint=run.checkpoint)
    m = result["metrics"]
    with torch.no_grad():
        top = [g_s.synthesis(latents["w_u"]), g_s.synthesis(latents["w_t"]), g_u.synthesis(latents["w_u"])]
        names = ["G_s(w_u) before", "G_s(w_t) UFO target", f"G_u(w_u) after: ID {m['id']:.2f}"]
        if run.photo:
            top, names = [run.source_images(g_s)[0], *top], ["photo", *names]
        z = torch.cat([g_s.z_from_seed(s) for s in range(args.seeds)])
        before = [g_s(z[i:i + 1]) for i in range(args.seeds)]
        after = [g_u(z[i:i + 1]) for i in range(args.seeds)]
    cols = max(len(top), args.seeds)
    title = (f"{result['identity']} | {result['generator']} | {result['verdict']} | ID {m['id']:.3f} | "
             f"face kept {m['face_kept']:.0%} | FID_pre {m['fid_pre']:.1f} (floor {m.get('fid_floor') or float('nan'):.1f})")
    canvas = Image.new("RGB", (cols * TILE, 30 + 3 * (LABEL + TILE)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    draw.text((6, 6), title, fill=(0, 0, 0), font=ImageFont.load_default(size=18))
    rows = [(tiles(top), names), (tiles(before), [f"G_s seed {s}" for s in range(args.seeds)]),
            (tiles(after), [f"G_u seed {s}" for s in range(args.seeds)])]
    for r, (pictures, labels) in enumerate(rows):
        y = 30 + r * (LABEL + TILE)
        for c, (picture, label) in enumerate(zip(pictures, labels)):
            draw.text((c * TILE + 4, y + 3), label, fill=(0, 0, 0), font=font)
            canvas.paste(Image.fromarray(picture), (c * TILE, y + LABEL))
    save_png(np.asarray(canvas), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
