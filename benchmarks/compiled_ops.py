"""Our CUDA kernels (guide_ray.models.nvidia.compiled) against the pure-PyTorch ops (ops.py), side
by side on StyleGAN2-sized tensors (config-f, 1024x1024 generator and discriminator shapes).

    python benchmarks/compiled_ops.py --batch 4 --iters 50

Needs a CUDA GPU; the first run builds the extension (about a minute). Prints, per case and
pass (forward; forward + backward), the median time of each path, the speed-up (PyTorch time /
compiled time) and the max |difference| of the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch

from guide_ray.models.nvidia import compiled, ops


def _median_ms(fn: Callable[[], None], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cases(batch: int):
    """(name, make inputs, op name, kwargs): shapes of StyleGAN2 config-f at 1024x1024."""
    f = ops.setup_filter([1, 3, 3, 1], device="cuda")

    def act_in(c, r, dtype):
        return lambda: (torch.randn(batch, c, r, r, device="cuda", dtype=dtype) * 3,
                        torch.randn(c, device="cuda", dtype=dtype))

    def img_in(c, r, dtype):
        return lambda: (torch.randn(batch, c, r, r, device="cuda", dtype=dtype), f)

    up = dict(up=2, padding=[2, 1, 2, 1], gain=4)  # upsample2d with the 4-tap filter
    down = dict(down=2, padding=[1, 1, 1, 1])  # downsample2d
    return [
        ("mapping fc lrelu [B,512]", lambda: (torch.randn(batch, 512, device="cuda"),
                                              torch.randn(512, device="cuda")), "bias_act", dict(act="lrelu")),
        ("conv lrelu+clamp 512x64^2 fp32", act_in(512, 64, torch.float32), "bias_act",
         dict(act="lrelu", clamp=256)),
        ("conv lrelu+clamp 128x256^2 fp16", act_in(128, 256, torch.float16), "bias_act",
         dict(act="lrelu", clamp=256)),
        ("upsample 512x32^2 -> 64^2 fp32", img_in(512, 32, torch.float32), "upfirdn2d", up),
        ("upsample 64x256^2 -> 512^2 fp16", img_in(64, 256, torch.float16), "upfirdn2d", up),
        ("toRGB upsample 3x512^2 -> 1024^2", img_in(3, 512, torch.float32), "upfirdn2d", up),
        ("D downsample 128x256^2 -> 128^2 fp16", img_in(128, 256, torch.float16), "upfirdn2d", down),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("compiled_ops: no CUDA GPU here; nothing to compare", file=sys.stderr)
        return 1
    if not compiled.available():
        print(f"compiled_ops: the CUDA extension did not build: {compiled.failure()}", file=sys.stderr)
        return 1

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, "
          f"median of {args.iters} runs")
    print("| case | pass | PyTorch ms | compiled ms | speed-up | max abs diff |\n|---|---|---|---|---|---|")
    for name, make, op_name, kw in cases(args.batch):
        x, second = make()
        paths = {"pytorch": compiled.without_kernels(getattr(ops, op_name)), "compiled": getattr(compiled, op_name)}
        diff = (paths["pytorch"](x, second, **kw).float() - paths["compiled"](x, second, **kw).float()).abs().max()
        xg = x.clone().requires_grad_()
        dy = torch.randn_like(paths["compiled"](x, second, **kw))
        for pass_name in ("forward", "forward+backward"):
            ms = {}
            for path, fn in paths.items():
                if pass_name == "forward":
                    ms[path] = _median_ms(lambda: fn(x, second, **kw), args.iters, args.warmup)
                else:
                    ms[path] = _median_ms(lambda: torch.autograd.grad(fn(xg, second, **kw), xg, dy),
                                          args.iters, args.warmup)
            print(f"| {name} | {pass_name} | {ms['pytorch']:.3f} | {ms['compiled']:.3f} | "
                  f"{ms['pytorch'] / ms['compiled']:.2f}x | {diff.item():.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
