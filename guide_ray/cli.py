"""guide-ray (or python -m guide_ray): one command for the whole tool.

    guide-ray unlearn | fleet | sweep | evaluate | audit | export | sample | config | weights | idsim | fid | bench

fleet and sweep are python -m guide_ray.fleet and python -m guide_ray.sweep; their options follow
them (guide-ray fleet --help).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import weights
from .allocator import keep_freed_memory

# What `unlearn` prints of an identity's metrics (all of them are in result.json).
SHOWN_METRICS = ("id", "id_others", "reinversion_id", "inversion_id", "face_kept", "fid_pre", "fid_floor", "fid_pre_ratio",
                 "delta_fid_real")


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


def _load_generator(generator: str, device, checkpoint: str | None = None, tracking_uri: str | None = None):
    """load_generator for --generator / --checkpoint, where --generator may also be a generator held
    in MLflow (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model): its base generator
    with its checkpoint, downloaded from --tracking-uri (else MLFLOW_TRACKING_URI)."""
    import tempfile

    from .models import load_generator

    if not generator.startswith(("models:/", "runs:/")):
        return load_generator(generator, device, checkpoint=checkpoint)
    if checkpoint:
        raise ValueError(f"--checkpoint {checkpoint} cannot be combined with --generator {generator}: "
                         "that registered generator holds its own checkpoint; give one or the other")
    from .mlflow_model import resolve_generator

    with tempfile.TemporaryDirectory(prefix="guide_ray-generator-") as tmp:
        found = resolve_generator(generator, tracking_uri, tmp)
        return load_generator(found.base, device, checkpoint=found.checkpoint)


def _checkpoint(checkpoint: str, tracking_uri: str | None, folder: str) -> Path:
    """--checkpoint as a local file: a path, or a generator URI's checkpoint downloaded into ``folder``."""
    if not checkpoint.startswith(("models:/", "runs:/")):
        return Path(checkpoint)
    from .mlflow_model import resolve_generator

    return resolve_generator(checkpoint, tracking_uri, folder).checkpoint


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
    from tqdm import tqdm

    from .images import grid, save_png
    from .models.generator import render_seeds

    gen = _load_generator(args.generator, args.device, args.checkpoint, args.tracking_uri)
    out = Path(args.out)
    pictures = []
    for start in tqdm(range(0, len(args.seeds), args.batch), desc=f"sampling {gen.name}", unit="batch"):
        seeds = args.seeds[start:start + args.batch]
        imgs = render_seeds(gen, seeds, args.truncation, args.batch)
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


def _config(args):
    from .config import load_config

    return load_config(args.config, args.set or (), preset=args.preset)


def cmd_unlearn(args) -> int:
    from .run.identity import IdentitySpec, run_identity
    from .run.networks import Networks

    cfg = _config(args)
    spec = IdentitySpec(id=args.id or (Path(args.image).stem if args.image else f"seed{args.seed}"),
                        image=Path(args.image) if args.image else None, seed=args.seed,
                        others=[Path(p) for p in args.others])
    for path in ([spec.image] if spec.image else []) + spec.others:
        if not path.is_file():
            raise ValueError(f"{path}: file not found")
    generator = _load_generator(args.generator, args.device, args.checkpoint, args.tracking_uri)
    result = run_identity(generator, spec, cfg, Networks(cfg, generator.device), args.out, loop=args.loop,
                          overwrite=args.overwrite)
    print(f"{spec.id}: {result.status} after {result.steps} steps "
          f"({result.timings['s_per_iteration'] or 0:.2f} s/iteration)")
    if result.message:
        print(result.message, file=sys.stderr)
    shown = {k: v for k, v in result.metrics.scalars().items() if k in SHOWN_METRICS}
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(f"verdict: {result.verdict} ({result.verdict_detail['reason']})")
    print(f"wrote result.json, checkpoint.safetensors and grid.png to {Path(args.out).resolve()}")
    if not result.finished:
        return 3
    return 0 if result.verdict == "erased" else 4


def cmd_evaluate(args) -> int:
    import json
    import tempfile

    from .core.evaluate import evaluate_run
    from .core.verdict import judge
    from .models import load_generator
    from .run.files import write_json
    from .run.folder import RunFolder
    from .run.identity import bar_callback, inversion_view, progress_bar
    from .run.networks import Networks

    run = RunFolder(args.run)
    cfg = run.cfg
    if args.fid_samples:
        cfg.evaluation.fid_samples = args.fid_samples
    with tempfile.TemporaryDirectory(prefix="guide_ray-generator-") as tmp:
        checkpoint = _checkpoint(args.checkpoint, args.tracking_uri, tmp) if args.checkpoint else run.checkpoint
        g_u = load_generator(run.spec, args.device, checkpoint=checkpoint)
    g_s = load_generator(run.spec, args.device)
    source, _ = run.source_images(g_s)
    latents = {k: None if v is None else v.to(g_s.device) for k, v in run.latents.items()}
    nets = Networks(cfg, g_u.device)
    photo = run.photo is not None
    with progress_bar("re-inverting the source into G_u", cfg.inversion.steps, cfg.evaluation.reinversion) as bar:
        metrics = evaluate_run(g_s, g_u, latents["w_u"], latents["w_t"], latents.get("w_others"), source, cfg, nets,
                               photo, g_u_fit=inversion_view(g_u, cfg), progress=bar_callback(bar))
    verdict = judge(metrics, photo, nets.thresholds)
    write_json(run.path / "evaluation.json", {**metrics.to_dict(), "verdict": verdict.verdict,
                                              "verdict_detail": verdict.to_dict(),
                                              "calibration": nets.levels_used()})
    print(json.dumps(metrics.scalars(), indent=2))
    print(f"verdict: {verdict.verdict} ({verdict.reason})")
    return 0


def cmd_audit(args) -> int:
    import logging

    from .config import load_audit_config
    from .run.audit import audit_run, default_out

    cfg = load_audit_config(args.set or ())
    say = logging.getLogger("guide_ray.audit").info if args.quiet else print
    target = Path(args.run)
    if (target / "ledger.parquet").is_file():  # a fleet's --out: every identity, into the ledger and MLflow
        from .fleet.audit import audit_fleet_out

        if args.out:
            raise ValueError(f"--out is for one run folder; a fleet's audits go to its runs/KEY/_audit/ID ({target})")
        reports = audit_fleet_out(target, cfg, args.tracking_uri, args.device, say)
    else:
        out = Path(args.out) if args.out else default_out(target)
        reports = [audit_run(target, out, cfg, args.device, generator=args.generator, say=say)]
        print(f"wrote audit.json and audit.html to {out.resolve()}")
    for r in reports:
        values = "  ".join(f"{a} G_u {r['attacks'][a]['g_u'][k]:.3f} / G_s {r['attacks'][a]['g_s'][k]:.3f}"
                           for a, k in r["attack_values"].items())
        print(f"{r['identity']}: {r['audit_verdict']} ({r['audit_reason']})\n  {values}")
    return 0 if reports and all(r["audit_verdict"] == "survives" for r in reports) else 4


def cmd_bench(args) -> int:
    import dataclasses

    import torch

    from .run.bench import time_loop
    from .core.inversion import random_source
    from .run.identity import training_view
    from .run.networks import Networks
    from .models import load_generator

    cfg = _config(args)
    generator = load_generator(args.generator, args.device)
    g_train = training_view(generator, cfg)
    w_u = random_source(generator, args.seed)
    if g_train is generator:  # the official code's loop against ours, same math
        cases = [("straightforward", generator, False, cfg), ("optimised", generator, True, cfg)]
    else:  # our loop at the full and at the training resolution
        cases = [("optimised", generator, True, cfg), ("optimised", g_train, True, cfg)]
    if args.precisions:  # the last loop again in each other perceptual precision (fp32 vs the fast mode)
        cases += [("optimised", cases[-1][1], True, dataclasses.replace(cfg, perceptual_precision=p))
                  for p in args.precisions.split(",") if p != cfg.perceptual_precision]
    print(f"LTU on {generator.name} ({generator.device}), N_a={cfg.n_adj}, N_g={cfg.n_global}, "
          f"{args.iterations} timed iterations after {args.warmup} warm-up, torch threads {torch.get_num_threads()}")
    rows = []
    for loop, g, channels_last, case_cfg in cases:
        nets = Networks(case_cfg, generator.device, channels_last=channels_last)
        rows.append((g.resolution, case_cfg.perceptual_precision,
                     time_loop(g, w_u, case_cfg, nets.id_loss, nets.perceptual, loop, args.iterations, args.warmup)))
    for resolution, precision, r in rows:
        print(f"  {r.loop:16s} {resolution:5d}px perceptual {precision}  {r.seconds_per_iteration:8.3f} s/iteration  "
              f"peak memory {r.peak_memory_mb:8.0f} MB  step-0 total loss {r.step0_losses['total']:.6f}  one-off setup "
              f"{r.setup_seconds:.1f} s")
    print(f"  speed-up: {rows[0][2].seconds_per_iteration / rows[1][2].seconds_per_iteration:.2f}x")
    for resolution, precision, r in rows[2:]:
        print(f"  perceptual {precision} vs {cfg.perceptual_precision}: "
              f"{rows[1][2].seconds_per_iteration / r.seconds_per_iteration:.2f}x")
    return 0


def cmd_export(args) -> int:
    from .models import load_generator
    from .models.nvidia import export_generator

    generator = load_generator(args.generator, "cpu", checkpoint=args.checkpoint)
    original = args.generator if Path(args.generator).suffix == ".pkl" else None
    path = export_generator(generator, args.out, original=original, key=args.key)
    print(f"wrote {path}")
    return 0


def cmd_config(args) -> int:
    """Print the resolved configuration (defaults, preset, file, --set) as the YAML a run records."""
    import yaml

    from .config import config_hash, to_dict

    cfg = _config(args)
    print(f"# resolved config, hash {config_hash(cfg)}")
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _delegate(module: str):
    """A subcommand that is another entry point (its own options and exit codes)."""
    def run(args) -> int:
        from importlib import import_module

        return import_module(module).main(args.rest)
    return run


def _version() -> str:
    try:
        return version("guide_ray")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_config_options(p) -> None:
    p.add_argument("--config", help="YAML config (keys as in guide_ray/config.py)")
    p.add_argument("--preset", choices=("baseline", "extrapolated", "adjacency", "guide"),
                   help="a row of the paper's Table 1 (default: guide)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guide-ray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"guide_ray {_version()}")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="what guide_ray's modules log to stderr (default: WARNING)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, module, text in (("fleet", "guide_ray.fleet", "erase many identities on Ray (python -m guide_ray.fleet)"),
                               ("sweep", "guide_ray.sweep", "search GUIDE's settings with Ray Tune + Optuna "
                                                            "(python -m guide_ray.sweep)")):
        pd = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        pd.add_argument("rest", nargs=argparse.REMAINDER, help=f"{name}'s own options (guide-ray {name} --help)")
        pd.set_defaults(func=_delegate(module))

    pc = sub.add_parser("config", help="print the resolved configuration (defaults, preset, --config, --set)")
    _add_config_options(pc)
    pc.set_defaults(func=cmd_config)

    pw = sub.add_parser("weights", help="list or pull the open pretrained weights")
    wsub = pw.add_subparsers(dest="action", required=True)
    wsub.add_parser("list", help="show each weight as cached / missing / corrupt").set_defaults(func=cmd_weights_list)
    pull = wsub.add_parser("pull", help="download, verify and cache weights (all by default)")
    pull.add_argument("names", nargs="*", metavar="NAME")
    pull.set_defaults(func=cmd_weights_pull)

    ps = sub.add_parser("sample", help="write one PNG per seed and a grid from a generator")
    ps.add_argument("--generator", default="mobilestylegan-ffhq1024",
                    help="manifest name or path, or a registered unlearned generator: models:/NAME@ALIAS, "
                    "models:/NAME/VERSION, runs:/RUN_ID/model")
    ps.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7 or 1,5,9")
    ps.add_argument("--truncation", type=float, default=1.0, metavar="PSI")
    ps.add_argument("--out", required=True)
    ps.add_argument("--batch", type=int, default=4)
    ps.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ps.add_argument("--checkpoint", help="an unlearned generator's checkpoint.safetensors")
    ps.add_argument("--tracking-uri", help="the MLflow store of a models:/ or runs:/ --generator (default: "
                    "MLFLOW_TRACKING_URI)")
    ps.set_defaults(func=cmd_sample)

    pi = sub.add_parser("idsim", help="identity similarity of the faces in two photos")
    pi.add_argument("a", metavar="A.jpg")
    pi.add_argument("b", metavar="B.jpg")
    pi.add_argument("--net", default="facenet-vggface2",
                    help="dlib-resnet34, facenet-vggface2, insightface:PACK, or a .dat/.pb/.onnx/.pth (IR-SE50, CurricularFace) path")
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

    pu = sub.add_parser("unlearn", help="erase one identity from a generator (GUIDE)")
    pu.add_argument("--generator", required=True,
                    help="manifest name or path, or a registered unlearned generator to start from: "
                    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model")
    pu.add_argument("--checkpoint", help="start from an unlearned generator's checkpoint.safetensors")
    pu.add_argument("--tracking-uri", help="the MLflow store of a models:/ or runs:/ --generator (default: "
                    "MLFLOW_TRACKING_URI)")
    source = pu.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a photo of the person")
    source.add_argument("--seed", type=int, help="the Random scenario: w_u = mapping(z of SEED)")
    pu.add_argument("--others", nargs="*", default=[], metavar="PHOTO", help="other photos of the person (ID_others)")
    pu.add_argument("--id", help="a name for the identity (default: the photo's stem)")
    _add_config_options(pu)
    pu.add_argument("--out", required=True)
    pu.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    pu.add_argument("--loop", choices=("optimised", "straightforward"), default="optimised")
    pu.add_argument("--device", default=None)
    pu.set_defaults(func=cmd_unlearn)

    pe = sub.add_parser("evaluate", help="recompute a run's metrics from its checkpoint")
    pe.add_argument("run", metavar="RUN_DIR", help="the --out folder of an unlearn run")
    pe.add_argument("--checkpoint", help="another checkpoint to evaluate (default: the run's): a "
                    "checkpoint.safetensors, or a registered generator models:/NAME@ALIAS, models:/NAME/VERSION")
    pe.add_argument("--tracking-uri", help="the MLflow store of a models:/ or runs:/ --checkpoint (default: "
                    "MLFLOW_TRACKING_URI)")
    pe.add_argument("--fid-samples", type=int)
    pe.add_argument("--device", default=None)
    pe.set_defaults(func=cmd_evaluate)

    pa = sub.add_parser("audit", help="attack a run's erasure (re-inversion restarts, neighbourhood probe, "
                        "relearning) on G_u and on G_s; or every identity of a fleet's --out")
    pa.add_argument("run", metavar="RUN_DIR", help="an unlearn run's --out folder, a fleet's runs/KEY/ID, or a "
                    "fleet's --out (every finished identity; verdicts into its ledger and MLflow runs)")
    pa.add_argument("--out", help="the audit's folder (default: _audit/ID beside the run folder; never inside it)")
    pa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="audit settings (config.AuditConfig), e.g. relearn_steps=[10,50,200] random_starts=4")
    pa.add_argument("--generator", help="the run's base generator when it was a file or folder (a fleet's ledger "
                    "names it); default: the run's generator by name")
    pa.add_argument("--tracking-uri", help="a fleet's MLflow store (default: MLFLOW_TRACKING_URI, else OUT/mlflow.db)")
    pa.add_argument("--device", default=None)
    pa.add_argument("--quiet", action="store_true", help="no progress lines")
    pa.set_defaults(func=cmd_audit)

    px = sub.add_parser("export", help="write an unlearned NVIDIA generator back in NVIDIA's formats")
    px.add_argument("--generator", required=True, help="the base generator: an NVIDIA .pkl (or .safetensors)")
    px.add_argument("--checkpoint", required=True, help="the run's checkpoint.safetensors (G_u's trained tensors)")
    px.add_argument("--out", required=True,
                    help="G_u.pkl (the original pickle with G_u's tensors, for NVIDIA's code) or G_u.safetensors")
    px.add_argument("--key", default="G_ema", help="the network replaced in the pickle (default: G_ema)")
    px.set_defaults(func=cmd_export)

    pb = sub.add_parser("bench", help="time LTU iterations: straightforward vs optimised loop, or (with train_resolution) full vs reduced resolution")
    pb.add_argument("--generator", default="dcgan-digiface64")
    pb.add_argument("--iterations", type=int, default=5)
    pb.add_argument("--warmup", type=int, default=1)
    pb.add_argument("--seed", type=int, default=0, help="source latent seed")
    pb.add_argument("--precisions", default="fp32,bf16",
                    help="the perceptual precisions the last loop is also timed in, side by side ('' for none)")
    _add_config_options(pb)
    pb.add_argument("--device", default=None)
    pb.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        return args.func(args)
    except (weights.WeightsError, ValueError, OSError) as e:  # bad input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
