"""Does the generator hold real people? Each openpeople studio portrait inverted with a config's
projector (run.identity.invert_identity, as a run inverts its photo), judged on the 1024² render.

    python benchmarks/photo_inversion.py --config jobs/configs/mobilestylegan-cpu.yaml --people P001-P010 \\
        --out outputs/photo-inversion --doc-image docs/img/mobilestylegan-inversions.png

Per person: FaceNet similarity between the aligned photo and the render of its latent (the run's
``inversion_id``), seconds, steps. Resumable: a person's row (OUT/PERSON.json) is kept; the image
shows each photo above its inversion.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from guide_ray import weights
from guide_ray.allocator import keep_freed_memory
from guide_ray.config import load_config
from guide_ray.images import save_png, to_uint8
from guide_ray.models import load_generator
from guide_ray.models.identity import cosine
from guide_ray.run.identity import IdentitySpec, invert_identity
from guide_ray.run.networks import Networks

TILE = 192


def people(text: str) -> list[str]:
    """'P001-P010' or 'P001,P004' -> person folder names."""
    if "-" in text:
        lo, hi = (int(part.strip().lstrip("P")) for part in text.split("-"))
        return [f"P{i:03d}" for i in range(lo, hi + 1)]
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jobs/configs/mobilestylegan-cpu.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--generator", default="mobilestylegan-ffhq1024")
    p.add_argument("--people", type=people, default=people("P001-P010"))
    p.add_argument("--photo", default="studio_portrait.jpg")
    p.add_argument("--out", default="outputs/photo-inversion")
    p.add_argument("--doc-image", default=None, help="also write the photo / inversion image here")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the CLIs do: the timings are the tool's (guide_ray/allocator.py)
    cfg = load_config(args.config, args.set)
    g = load_generator(args.generator, args.device)
    nets = Networks(cfg, g.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = weights.directory("openpeople")
    rows, tiles = [], []
    for person in args.people:
        row_file = out / f"{person}.json"
        latent_file = out / f"{person}.pt"
        if row_file.is_file() and latent_file.is_file():
            row = json.loads(row_file.read_text())
            w_u = torch.load(latent_file, map_location=g.device, weights_only=True)
        else:
            t0 = time.perf_counter()
            src = invert_identity(g, IdentitySpec(person, image=root / person / "assets" / args.photo), cfg, nets,
                                  show_progress=False)
            seconds = time.perf_counter() - t0
            w_u = src.w_u
            with torch.no_grad():
                photo_id = nets.id_metric.embed_generated(src.source_image, g.ffhq_box)
                score = float(cosine(photo_id, nets.id_metric.embed_generated(g.synthesis(w_u), g.ffhq_box))[0])
            row = {"person": person, "photo": args.photo, "inversion_id": score, "seconds": seconds,
                   "losses": src.inversion_losses}
            torch.save(w_u.cpu(), latent_file)
            row_file.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(f"{person}: inversion ID {row['inversion_id']:.3f} in {row['seconds'] / 60:.1f} min", flush=True)
        with torch.no_grad():
            from guide_ray.models.face_align import photo_to_generator_crop

            photo = photo_to_generator_crop(root / person / "assets" / args.photo, g.resolution, box=g.ffhq_box)
            pair = [F.interpolate(x.to(g.device), size=TILE, mode="area") for x in (photo, g.synthesis(w_u))]
        tiles.append(to_uint8(torch.cat(pair, 2))[0])
    picture = np.concatenate(tiles, 1)
    save_png(picture, out / "inversions.png")
    if args.doc_image:
        save_png(picture, args.doc_image)
    held = sum(r["inversion_id"] >= 0.55 for r in rows)
    print(f"\n| person | inversion ID (FaceNet, photo vs 1024² render) | minutes |\n|---|---|---|")
    for r in rows:
        print(f"| {r['person']} | {r['inversion_id']:.3f} | {r['seconds'] / 60:.1f} |")
    print(f"\n{held}/{len(rows)} at or above 0.55; slowest {max(r['seconds'] for r in rows) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
