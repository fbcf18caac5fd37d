"""``python -m guide_ray``: weights, sample."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import weights


def parse_seeds(text: str) -> list[int]:
    """'0-7', '1,5,9' or '0-3,10' -> a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. 0-7 or 1,5,9") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def cmd_weights_list(args) -> int:
    print(f"cache: {weights.cache_dir()} (set ${weights.CACHE_ENV} to move it)")
    bad = 0
    for name, w in sorted(weights.manifest().items()):
        state = weights.status(name)
        bad += state != "cached"
        a = w.archive
        print(f"{name:26s} {state:8s} {w.size / 1e6:8.1f} MB  {a.package}=={a.version}  {w.description}")
    if bad:
        print(f"\n{bad} weight(s) not usable. Run: python -m guide_ray weights pull", file=sys.stderr)
    return 1 if bad else 0


def cmd_weights_pull(args) -> int:
    weights.pull(args.names or None)
    return 0


def cmd_sample(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from .images import grid, save_png, to_uint8
    from .models import load_generator

    gen = load_generator(args.generator, args.device)
    out = Path(args.out)
    pictures = []
    with torch.no_grad():
        for start in tqdm(range(0, len(args.seeds), args.batch), desc=f"sampling {gen.name}", unit="batch"):
            seeds = args.seeds[start:start + args.batch]
            z = torch.cat([gen.z_from_seed(s) for s in seeds])
            imgs = to_uint8(gen(z, truncation_psi=args.truncation))
            for seed, im in zip(seeds, imgs):
                save_png(im, out / f"seed{seed:04d}.png")
            pictures.append(imgs)
    save_png(grid(np.concatenate(pictures)), out / "grid.png")
    print(f"wrote {len(args.seeds)} images and grid.png to {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guide_ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    pw = sub.add_parser("weights", help="list or pull the open pretrained weights")
    wsub = pw.add_subparsers(dest="action", required=True)
    wsub.add_parser("list", help="show each weight as cached / missing / corrupt").set_defaults(func=cmd_weights_list)
    pull = wsub.add_parser("pull", help="download, verify and cache weights (all by default)")
    pull.add_argument("names", nargs="*", metavar="NAME")
    pull.set_defaults(func=cmd_weights_pull)

    ps = sub.add_parser("sample", help="write one PNG per seed and a grid from a generator")
    ps.add_argument("--generator", default="mobilestylegan-ffhq1024", help="manifest name or path")
    ps.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7 or 1,5,9")
    ps.add_argument("--truncation", type=float, default=1.0, metavar="PSI")
    ps.add_argument("--out", required=True)
    ps.add_argument("--batch", type=int, default=4)
    ps.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ps.set_defaults(func=cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except weights.WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
