"""``python -m guide_ray``: weights, sample, idsim, fid."""

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


def cmd_idsim(args) -> int:
    import torch

    from .images import load_image
    from .models.face_align import default_aligner
    from .models.identity import cosine, load_identity_net

    net = load_identity_net(args.net, args.device)
    aligner = default_aligner()
    embeddings = []
    with torch.no_grad():
        for path in (args.a, args.b):
            image = load_image(path)
            face = aligner.face(image, source=str(path), multiple=args.multiple)
            embeddings.append(net.embed_photo(image, face))
    a, b = embeddings
    print(f"cosine similarity ({net.name}): {cosine(a, b).item():.4f}")
    if net.name == "dlib-resnet34":
        print(f"L2 distance: {(a - b).norm().item():.4f} (dlib: same person below 0.6)")
    return 0


def cmd_fid(args) -> int:
    from .models.fid import InceptionFeatures, stats_of

    if args.b is None and args.save_stats is None:
        raise ValueError("give a second set B to compare with, or --save-stats OUT.npz")
    sources = [s for s in (args.a, args.b) if s is not None]
    net = None if all(Path(s).suffix == ".npz" for s in sources) else InceptionFeatures(device=args.device)
    a = stats_of(args.a, net, args.batch_size)
    if args.save_stats:
        print(f"saved statistics of {a.n} images to {a.save(args.save_stats)}")
    if args.b is not None:
        print(f"FID: {a.fid(stats_of(args.b, net, args.batch_size)):.6f}")
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

    pi = sub.add_parser("idsim", help="identity similarity of the faces in two photos")
    pi.add_argument("a", metavar="A.jpg")
    pi.add_argument("b", metavar="B.jpg")
    pi.add_argument("--net", default="facenet-vggface2",
                    help="dlib-resnet34, facenet-vggface2, insightface:PACK, or a .dat/.pb/.onnx path")
    pi.add_argument("--multiple", choices=("error", "largest"), default="error",
                    help="what to do with a photo holding several faces (default: refuse)")
    pi.add_argument("--device", default=None)
    pi.set_defaults(func=cmd_idsim)

    pf = sub.add_parser("fid", help="FID between two folders of images or .npz statistics")
    pf.add_argument("a", help="reference: folder of images or .npz statistics")
    pf.add_argument("b", nargs="?", help="compared set: folder of images or .npz statistics")
    pf.add_argument("--save-stats", metavar="OUT.npz", help="save the statistics of A (to reuse as a reference)")
    pf.add_argument("--batch-size", type=int, default=32)
    pf.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    pf.set_defaults(func=cmd_fid)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (weights.WeightsError, ValueError, OSError) as e:  # bad input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
