"""Parity of guide_ray.models.nvidia with NVIDIA's own code, for anyone who has NVIDIA's repo.

    python benchmarks/nvidia_parity.py --nvidia-repo path/to/stylegan2-ada-pytorch
    python benchmarks/nvidia_parity.py --nvidia-repo path/to/stylegan3     # or eg3d/eg3d

NVIDIA's code is imported from that checkout at run time (none of it is in this repository), on
CPU, where its custom ops run their reference PyTorch paths. Tiny random networks (NVIDIA's
initialisation plus noise on every tensor) are compared:
  1. ops: upfirdn2d (+ up/downsample2d, filter2d) / conv2d_resample / bias_act against NVIDIA's;
  2. networks: NVIDIA's Generator vs ours with the same state dict (mapping with truncation,
     synthesis fused and unfused), for the 'skip', 'orig' and 'resnet' architectures, with and
     without a label;
  3. pickles: a snapshot pickled by NVIDIA's persistence (G, D, G_ema, AugmentPipe, EasyDict
     options) loaded by our safe reader; then modified and exported by us, and loaded back by
     NVIDIA's ``legacy.load_network_pkl`` (its G_ema must compute our output; D, G and the
     augmentation pipe must come back unchanged).
Prints max |diff| for each and exits 1 if any exceeds --tol.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
import tempfile
from pathlib import Path

import torch

from guide_ray.models.nvidia import ops, pickle_io


def perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and "resample_filter" not in name:
                t.add_(torch.randn(t.shape, generator=g) * 0.3)
    return module.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_ops(nv_upfirdn2d, nv_conv2d_resample, nv_bias_act) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 7, generator=g)
    f = ops.setup_filter(torch.rand(4, generator=g))
    f2 = torch.rand(3, 5, generator=g)
    worst = {"upfirdn2d": 0.0, "conv2d_resample": 0.0, "bias_act": 0.0}
    for up, down, pad, flip, filt in [(1, 1, 1, False, f), (2, 1, [2, 1, 2, 1], True, f), (1, 2, [1, 2, 0, 1], False, f2),
                                      (2, 2, [0, -1, 1, 0], True, f2), (3, 1, [1, 2, 3, 0], False, f2)]:
        worst["upfirdn2d"] = max(worst["upfirdn2d"], max_diff(
            ops.upfirdn2d(x, filt, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3),
            nv_upfirdn2d.upfirdn2d(x, filt, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3)))
    for ours, theirs, factor in ((ops.upsample2d, nv_upfirdn2d.upsample2d, "up"),
                                 (ops.downsample2d, nv_upfirdn2d.downsample2d, "down")):
        worst["upfirdn2d"] = max(worst["upfirdn2d"], max_diff(ours(x, f, **{factor: 2}, padding=[1, 0, 0, 2]),
                                                              theirs(x, f, **{factor: 2}, padding=[1, 0, 0, 2])))
    worst["upfirdn2d"] = max(worst["upfirdn2d"], max_diff(ops.filter2d(x, f2, padding=1, gain=2),
                                                          nv_upfirdn2d.filter2d(x, f2, padding=1, gain=2)))
    for up, down, groups, flip_w, k in [(1, 1, 1, True, 3), (2, 1, 1, False, 3), (2, 1, 2, True, 3), (1, 2, 1, True, 3),
                                        (1, 2, 2, False, 1), (2, 1, 1, True, 1), (2, 2, 1, True, 3), (1, 1, 2, False, 1)]:
        w = torch.randn(6, 4 // groups, k, k, generator=g)
        worst["conv2d_resample"] = max(worst["conv2d_resample"], max_diff(
            ops.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_w),
            nv_conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, groups=groups,
                                               flip_weight=flip_w)))
    b = torch.randn(4, generator=g)
    for act in ops.activation_funcs:
        for clamp in (None, 0.5):
            worst["bias_act"] = max(worst["bias_act"], max_diff(
                ops.bias_act(x * 3, b, act=act, clamp=clamp), nv_bias_act.bias_act(x * 3, b, act=act, clamp=clamp)))
    return worst


def generator_kwargs(flavour: str, c_dim: int, architecture: str) -> dict:
    synthesis = dict(channel_base=256, channel_max=16, conv_clamp=256, architecture=architecture)
    base = dict(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=3))
    return {**base, "synthesis_kwargs": synthesis} if flavour == "training.networks" else {**base, **synthesis}


def check_networks(nv, nvidia_name: str) -> dict[str, float]:
    worst = {"mapping": 0.0, "synthesis fused": 0.0, "synthesis unfused": 0.0}
    for i, (architecture, c_dim) in enumerate([("skip", 0), ("orig", 3), ("resnet", 0), ("skip", 5)]):
        kwargs = generator_kwargs(nvidia_name.rpartition(".")[0], c_dim, architecture)
        torch.manual_seed(i)
        theirs = perturb(nv.Generator(**copy.deepcopy(kwargs)), seed=i)
        ours = pickle_io.build_network(nvidia_name, **kwargs).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        z, c = torch.randn(3, 16), torch.randn(3, c_dim)
        with torch.no_grad():
            for psi, cutoff in ((1, None), (0.6, None), (0.6, 3)):
                worst["mapping"] = max(worst["mapping"], max_diff(
                    ours.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff),
                    theirs.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)))
            ws = theirs.mapping(z, c, truncation_psi=0.8)
            for fused in (True, False):
                key = f"synthesis {'fused' if fused else 'unfused'}"
                worst[key] = max(worst[key], max_diff(
                    ours.synthesis(ws, noise_mode="const", fused_modconv=fused),
                    theirs.synthesis(ws, noise_mode="const", fused_modconv=fused, force_fp32=True)))
    return worst


def check_pickles(nv, dnnlib, legacy, augment, nvidia_name: str, folder: Path) -> dict[str, float]:
    kwargs = generator_kwargs(nvidia_name.rpartition(".")[0], 0, "skip")
    torch.manual_seed(10)
    G_ema = perturb(nv.Generator(**copy.deepcopy(kwargs)), seed=10).requires_grad_(False)
    G = perturb(nv.Generator(**copy.deepcopy(kwargs)), seed=11)
    D = nv.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
                               contrast=1, lumaflip=1, hue=1, saturation=1)
    snapshot = folder / "network-snapshot-000000.pkl"
    with open(snapshot, "wb") as f:
        pickle.dump(dict(G=G, D=D, G_ema=G_ema, augment_pipe=pipe,
                         training_set_kwargs=dnnlib.EasyDict(path="ffhq.zip", xflip=True, resolution=32)), f)

    ours = pickle_io.load_network_pickle(snapshot)
    z, c = torch.randn(4, 16), torch.zeros(4, 0)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["safe load: G_ema image"] = max_diff(ours(z, c, truncation_psi=0.7, noise_mode="const"),
                                                 G_ema(z, c, truncation_psi=0.7, noise_mode="const", force_fp32=True))
        for p in ours.synthesis.parameters():
            p.mul_(1.05)
    exported = pickle_io.export_network_pickle(snapshot, ours, folder / "exported.pkl")
    with open(exported, "rb") as f:
        back = legacy.load_network_pkl(f)
    with torch.no_grad():
        out["export -> legacy.load_network_pkl: G_ema image"] = max_diff(
            back["G_ema"](z, c, truncation_psi=0.7, noise_mode="const", force_fp32=True),
            ours(z, c, truncation_psi=0.7, noise_mode="const"))
    for key, original in (("G", G), ("D", D), ("augment_pipe", pipe)):
        sd, new = original.state_dict(), back[key].state_dict()
        if set(sd) != set(new):
            raise AssertionError(f"exported {key} has other tensors than the original")
        out[f"export: {key} unchanged"] = max((max_diff(new[k], v) for k, v in sd.items()), default=0.0)
    if back["training_set_kwargs"] != dict(path="ffhq.zip", xflip=True, resolution=32):
        raise AssertionError(f"training_set_kwargs changed: {back['training_set_kwargs']}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvidia-repo", required=True, type=Path,
                   help="a checkout of NVlabs/stylegan2-ada-pytorch, NVlabs/stylegan3, or the eg3d/ folder of NVlabs/eg3d")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args(argv)
    repo = args.nvidia_repo.resolve()
    if (repo / "training" / "networks.py").exists():
        nvidia_name, module = "training.networks.Generator", "training.networks"
    elif (repo / "training" / "networks_stylegan2.py").exists():
        nvidia_name, module = "training.networks_stylegan2.Generator", "training.networks_stylegan2"
    else:
        p.error(f"{repo} has neither training/networks.py nor training/networks_stylegan2.py")
    sys.path.insert(0, str(repo))
    import importlib

    import dnnlib
    import legacy
    from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d
    from training import augment

    nv = importlib.import_module(module)
    results = {f"ops: {k}": v for k, v in check_ops(upfirdn2d, conv2d_resample, bias_act).items()}
    results.update({f"{nvidia_name}: {k}": v for k, v in check_networks(nv, nvidia_name).items()})
    with tempfile.TemporaryDirectory() as tmp:
        results.update(check_pickles(nv, dnnlib, legacy, augment, nvidia_name, Path(tmp)))
    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  max|diff| {v:.3e}{'  FAIL' if v > args.tol else ''}")
    return int(any(v > args.tol for v in results.values()))


if __name__ == "__main__":
    sys.exit(main())
