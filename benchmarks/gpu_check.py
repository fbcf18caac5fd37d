"""The GPU check: one prepared process that turns a lent GPU into verified figures (docs/gpu.md).

    python benchmarks/gpu_check.py --out DIR                 # on a CUDA machine, ~8 min
    python benchmarks/gpu_check.py --dry-run --out DIR       # rehearsal on CPU: tiny sizes, claims nothing
    python benchmarks/gpu_check.py --out DIR --only kernels,ltu-msg --budget identity=240

Stages, in order, each with its own time budget (seconds, ``--budget STAGE=S``):
  kernels   build the CUDA ops with ninja; bias_act / upfirdn2d / the modulated convolution against
            the PyTorch paths (max |diff| forward and gradient) and their speed ratio
  ltu-msg   MobileStyleGAN's optimised LTU loop at 1024²: s / iteration in fp32, TF32 and bf16
            (perceptual_precision), peak GPU memory, 1000 iterations extrapolated from >= 20 timed
  identity  one photo (openpeople P001) end to end at the paper's defaults if they fit the budget,
            else the largest iteration count that does (printed): verdict, figures, grid
  fid       FID_pre of that identity's G_u with 5000 samples at 1024² (the paper's protocol), timed
  fleet     `guide-ray fleet` with 2 Ray actors sharing the GPU (0.5 each) on 2 seeds: both finish?
  joint     `guide-ray fleet --mode joint`, one Ray Train GPU worker (NCCL), a few steps, its checkpoint
DIR/gpu_check.json is rewritten after every stage (a killed run keeps what it measured) with each
stage's status (measured | skipped, with why | failed, with the error | dry), seconds and figures,
and DIR/gpu_check.md is its table. A stage that needs another's output (fid: identity's G_u) is
skipped when that one did not measure. --dry-run runs every stage on the CPU at tiny sizes (a
random 8-d DCGAN, a handful of steps) so that every code path is exercised before a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

STAGES = ("kernels", "ltu-msg", "identity", "fid", "fleet", "joint")
BUDGET_S = {"kernels": 90, "ltu-msg": 90, "identity": 150, "fid": 75, "fleet": 60, "joint": 45}  # 510 s: 8.5 min
DRY_BUDGET_S = {"kernels": 30, "ltu-msg": 60, "identity": 90, "fid": 30, "fleet": 180, "joint": 150}
# A tiny generator's runs (dry): every path, a few steps, FID on one batch, no face checks of faces it cannot draw.
TINY = ["iterations=4", "checkpoint_every=2", "evaluation.fid_samples=8", "evaluation.fid_batch=8",
        "inversion.steps=4", "latent_pool=4", "evaluation.face_samples=0", "target_face_check=false",
        "evaluation.id_threshold=0.232"]
MSG = "mobilestylegan-ffhq1024"


class StageTimeout(Exception):
    pass


class Skipped(Exception):
    """A stage that cannot run here (its reason is the message)."""


@contextlib.contextmanager
def hard_limit(seconds: float):
    """SIGALRM after ``seconds``: a stage that overruns its budget by half is stopped (StageTimeout)."""
    def stop(signum, frame):
        raise StageTimeout(f"ran past {seconds:.0f} s (its budget and a half)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Check:
    """The shared state of one run: where it writes, the device, what each stage left for the next."""

    def __init__(self, out: Path, dry: bool, budgets: dict[str, float]):
        import torch

        self.out, self.dry, self.budgets = out, dry, budgets
        self.device = torch.device("cpu" if dry else "cuda")
        self.report = {"dry_run": dry, "device": self.device_name(), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "python": platform.python_version(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}}
        self.tiny_generator: Path | None = None
        self.s_per_iteration: float | None = None  # ltu-msg's fp32 figure, for identity's iteration count
        self.identity_run: Path | None = None

    def device_name(self) -> str:
        import torch

        if self.dry:
            return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores): dry run"
        return torch.cuda.get_device_name(0)

    def generator(self) -> str:
        """The generator a stage runs on: MobileStyleGAN, or in a dry run a tiny random DCGAN file."""
        if not self.dry:
            return MSG
        if self.tiny_generator is None:
            import torch

            from guide_ray.models.dcgan import _dcgan_net

            torch.manual_seed(0)
            self.tiny_generator = self.out.resolve() / "tiny_dcgan.pt"  # absolute: Ray Train workers run elsewhere
            torch.save({"netG_state_dict": {f"main.{k}": v for k, v in _dcgan_net(8, 4, 3).state_dict().items()}},
                       self.tiny_generator)
        return str(self.tiny_generator)

    def save(self) -> None:
        from guide_ray.run.files import atomic_write

        atomic_write(self.out / "gpu_check.json", lambda f: f.write(json.dumps(self.report, indent=2).encode()))
        atomic_write(self.out / "gpu_check.md", lambda f: f.write(markdown(self.report).encode()))

    def run(self, name: str, stage: Callable[["Check", float], dict]) -> None:
        from guide_ray.weights import WeightsError

        budget = self.budgets[name]
        print(f"[{name}] budget {budget:.0f} s", flush=True)
        t0 = time.perf_counter()
        record: dict = {"budget_s": budget}
        try:
            with hard_limit(1.5 * budget):
                record["figures"] = stage(self, budget)
            record["status"] = "dry" if self.dry else "measured"
        except Skipped as e:
            record.update(status="skipped", why=str(e))
        except ImportError as e:  # a package this machine lacks (a GPU image has no ray, mlflow, dlib: docs/gpu.md)
            record.update(status="skipped", why=f"not installed here: {e}")
        except WeightsError as e:  # a weight that did not travel (docs/gpu.md: what fits a call)
            record.update(status="skipped", why=str(e))
        except Exception as e:  # every failure is recorded; the next stage still runs
            record.update(status="failed", error=f"{type(e).__name__}: {e}",
                          traceback=traceback.format_exc(limit=-4))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        self.report["stages"][name] = record
        self.save()
        print(f"[{name}] {record['status']} in {record['seconds']} s: "
              f"{record.get('figures') or record.get('why') or record.get('error')}", flush=True)


# --- the stages ----------------------------------------------------------------------------------

def _max_diff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _timed(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Median seconds of ``fn``, after one warm-up call."""
    import statistics

    import torch

    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stage_kernels(check: Check, budget: float) -> dict:
    """Our compiled bias_act and upfirdn2d (and the modulated conv that uses them) against PyTorch."""
    import torch

    from guide_ray.models.nvidia import compiled, ops

    device, cuda = check.device, not check.dry
    figures: dict = {}
    if cuda:
        t = time.perf_counter()
        if not compiled.available():
            raise RuntimeError(f"the CUDA ops did not build: {compiled.failure()}")
        figures["build_s"] = round(time.perf_counter() - t, 1)
    shape = (2, 8, 16, 16) if check.dry else (4, 512, 64, 64)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(*shape, device=device, generator=g)
    bias = torch.randn(shape[1], device=device, generator=g)
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    w = torch.randn(shape[1], shape[1], 3, 3, device=device, generator=g)
    styles = torch.randn(shape[0], shape[1], device=device, generator=g)
    cases = {
        "bias_act_lrelu": lambda x: ops.bias_act(x, bias, act="lrelu"),
        "upsample2d": lambda x: ops.upsample2d(x, f),
        "modulated_conv2d_up": lambda x: ops.modulated_conv2d(x, w, styles, up=2, padding=1, resample_filter=f),
    }

    for name, op in cases.items():
        outputs = {}
        for path, fn in (("compiled", op), ("pytorch", compiled.without_kernels(op))):
            xi = x.clone().requires_grad_(True)
            y = fn(xi)
            (grad,) = torch.autograd.grad(y.square().sum(), [xi])
            outputs[path] = (y, grad)
        row = {"forward_max_diff": _max_diff(outputs["compiled"][0], outputs["pytorch"][0]),
               "grad_max_diff": _max_diff(outputs["compiled"][1], outputs["pytorch"][1])}
        if cuda:
            with torch.no_grad():
                fast, slow = _timed(lambda: op(x), 20, True), _timed(lambda: compiled.without_kernels(op)(x), 20, True)
            row.update(compiled_ms=round(1e3 * fast, 3), pytorch_ms=round(1e3 * slow, 3),
                       speedup=round(slow / fast, 2))
        figures[name] = row
    return figures


def stage_ltu_msg(check: Check, budget: float) -> dict:
    """The optimised LTU loop at the generator's resolution: fp32, TF32, bf16 perceptual."""
    import dataclasses

    import torch

    from guide_ray.config import load_config
    from guide_ray.core.inversion import random_source
    from guide_ray.models import load_generator, load_identity_net, load_perceptual
    from guide_ray.run.bench import time_loop

    generator = load_generator(check.generator(), check.device)
    cfg = load_config(overrides=TINY if check.dry else ["latent_pool=16"])
    w_u = random_source(generator, 0)
    # the two loss nets only (no ID metric, no face check): what a device call can carry (docs/gpu.md)
    perceptual = load_perceptual(cfg.perceptual_net, check.device)
    id_loss = load_identity_net(cfg.id_loss_net, check.device)
    iterations, warmup = (2, 1) if check.dry else (20, 2)
    figures: dict = {"generator": generator.name, "resolution": generator.resolution, "timed_iterations": iterations}
    modes = (("fp32", False, "fp32"), ("tf32", True, "fp32"), ("bf16", True, "bf16"))
    for mode, tf32, precision in modes:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        run_cfg = dataclasses.replace(cfg, perceptual_precision=precision)
        timing = time_loop(generator, w_u, run_cfg, id_loss, perceptual, "optimised", iterations, warmup)
        figures[mode] = {"s_per_iteration": round(timing.seconds_per_iteration, 4),
                         "peak_memory_mb": round(timing.peak_memory_mb), "setup_s": round(timing.setup_seconds, 1),
                         "minutes_per_1000_iterations": round(timing.seconds_per_iteration * 1000 / 60, 1),
                         "step0_total": timing.step0_losses["total"]}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    check.s_per_iteration = figures["fp32"]["s_per_iteration"]
    return figures


def stage_identity(check: Check, budget: float) -> dict:
    """One photo end to end at the paper's defaults, or as many iterations as the budget allows."""
    from guide_ray import weights
    from guide_ray.config import load_config
    from guide_ray.models import load_generator
    from guide_ray.run.identity import IdentitySpec, run_identity
    from guide_ray.run.networks import Networks

    overrides = list(TINY) if check.dry else ["evaluation.fid_samples=500"]  # 5000 is the fid stage's
    if not check.dry:
        # the inversion, UFO's face check, the pool and a 500-sample evaluation take ~60 s on a GPU
        s_it = check.s_per_iteration or 0.5
        iterations = max(10, min(1000, int((budget - 60) / s_it)))
        overrides.append(f"iterations={iterations}")
    cfg = load_config(overrides=overrides)
    if check.dry:
        spec = IdentitySpec("seed7", seed=7)
    else:
        root = weights.directory("openpeople") / "P001" / "assets"
        spec = IdentitySpec("P001", image=root / "studio_portrait.jpg", others=[root / "amateur_selfie.jpg"])
    generator = load_generator(check.generator(), check.device)
    out = check.out / "identity" / spec.id
    result = run_identity(generator, spec, cfg, Networks(cfg, check.device), out, overwrite=True, show_progress=False)
    check.identity_run = out
    m = result.metrics
    return {"identity": spec.id, "iterations": cfg.iterations, "paper_defaults": cfg.iterations == 1000,
            "verdict": result.verdict, "id": m.id, "id_others": m.id_others, "inversion_id": m.inversion_id,
            "face_kept": m.face_kept, "fid_pre": m.fid_pre, "fid_floor": m.fid_floor, "fid_samples": m.fid_samples,
            "timings": result.timings, "grid": str(out / "grid.png")}


def stage_fid(check: Check, budget: float) -> dict:
    """FID_pre of the identity's G_u with the paper's 5000 samples (a dry run: 8)."""
    import torch

    from guide_ray.core.evaluate import fid_scores
    from guide_ray.models import load_generator
    from guide_ray.models.fid import InceptionFeatures

    if check.identity_run is None or not (check.identity_run / "checkpoint.safetensors").is_file():
        raise Skipped("the identity stage left no G_u to measure")
    samples, batch = (8, 8) if check.dry else (5000, 32)
    g_s = load_generator(check.generator(), check.device)
    g_u = load_generator(check.generator(), check.device, checkpoint=check.identity_run / "checkpoint.safetensors")
    inception = InceptionFeatures(device=check.device)
    t = time.perf_counter()
    with torch.no_grad():
        fid = fid_scores(g_s, g_u, inception, samples, 123, batch)
    seconds = time.perf_counter() - t
    return {"samples": samples, "fid_pre": fid.fid_pre, "seconds": round(seconds, 1),
            "images_per_second": round(2 * samples / seconds, 1)}


def _fleet(check: Check, budget: float, extra: list[str], name: str) -> tuple[dict, Path]:
    """`python -m guide_ray.fleet` on two seeds in its own process (its own Ray), within the budget."""
    out = check.out / name
    ids = check.out / f"{name}.csv"
    ids.write_text("id,image,seed,others\ns1,,1,\ns2,,2,\n")
    overrides = TINY if check.dry else ["iterations=20", "checkpoint_every=10", "evaluation.fid_samples=64",
                                        "evaluation.reinversion=false", "latent_pool=8"]
    command = [sys.executable, "-m", "guide_ray.fleet", str(ids), "--generator", check.generator(), "--out", str(out),
               "--ray-address", "local", "--no-progress", *extra, *(a for o in overrides for a in ("--set", o))]
    t = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        raise StageTimeout(f"the fleet ran past its {budget:.0f} s") from None
    figures = {"exit_status": done.returncode, "seconds": round(time.perf_counter() - t, 1)}
    if done.returncode not in (0, 4):  # 4: finished, not every identity erased (20 steps erase nobody)
        raise RuntimeError(f"the fleet exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return figures, out


def stage_fleet(check: Check, budget: float) -> dict:
    gpus = "0" if check.dry else "0.5"
    figures, out = _fleet(check, budget, ["--workers", "2", "--gpus-per-worker", gpus], "fleet")
    results = sorted(out.glob("runs/parallel-*/*/result.json"))
    rows = [json.loads(p.read_text()) for p in results]
    figures["identities"] = {r["identity"]: {"status": r["status"], "total_s": r["timings"].get("total_s")}
                             for r in rows}
    if len(rows) != 2 or any(r["status"] != "finished" for r in rows):
        raise RuntimeError(f"expected 2 finished identities, got {figures['identities']}")
    return figures


def stage_joint(check: Check, budget: float) -> dict:
    gpus = "0" if check.dry else "1"
    figures, out = _fleet(check, budget, ["--mode", "joint", "--workers", "1", "--gpus-per-worker", gpus], "joint")
    joint = sorted(out.glob("runs/*/_joint/joint.json"))
    if not joint:
        raise RuntimeError(f"no joint.json under {out}/runs")
    record = json.loads(joint[-1].read_text())
    figures["joint"] = {k: record[k] for k in ("steps", "workers", "seconds", "status") if k in record}
    figures["checkpoint"] = str(next(joint[-1].parent.glob("*.safetensors"), None))
    return figures


STAGE_FNS = {"kernels": stage_kernels, "ltu-msg": stage_ltu_msg, "identity": stage_identity, "fid": stage_fid,
             "fleet": stage_fleet, "joint": stage_joint}


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "",
             f"torch {report['torch']}, CUDA {report['cuda']}, Python {report['python']}, started {report['started']}"
             + (" (dry run on CPU: no GPU figure)" if report["dry_run"] else ""), "",
             "| stage | status | seconds (budget) | figures |", "|---|---|---|---|"]
    for name, r in report["stages"].items():
        detail = r.get("figures") or r.get("why") or r.get("error") or ""
        text = json.dumps(detail, default=str) if isinstance(detail, dict) else str(detail)
        lines.append(f"| {name} | {r['status']} | {r['seconds']} ({r['budget_s']:.0f}) | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def parse_budgets(items: list[str], defaults: dict[str, float]) -> dict[str, float]:
    budgets = dict(defaults)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in STAGES:
            raise SystemExit(f"gpu_check: --budget expects STAGE=SECONDS with STAGE one of {', '.join(STAGES)}, "
                             f"got {item!r}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise SystemExit(f"gpu_check: --budget {item!r}: {value!r} is not a number of seconds") from None
    return budgets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where gpu_check.json, gpu_check.md and the stages' files go")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes (no GPU figure)")
    p.add_argument("--only", default=",".join(STAGES), help=f"stages to run, in order: {','.join(STAGES)}")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in STAGES]
    if unknown or not only:
        print(f"gpu_check: unknown stage {unknown[0] if unknown else '(none)'!r}; stages: {', '.join(STAGES)}")
        return 2
    budgets = parse_budgets(args.budget, DRY_BUDGET_S if args.dry_run else BUDGET_S)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine "
              "(docs/gpu.md), or add --dry-run to rehearse every stage on this CPU")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, budgets)
    check.save()
    for name in STAGES:
        if name in only:
            check.run(name, STAGE_FNS[name])
    failed = [n for n, r in check.report["stages"].items() if r["status"] == "failed"]
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
