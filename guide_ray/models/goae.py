"""The GOAE encoder for EG3D (Yuan et al., "Make Encoder Great Again in 3D GAN Inversion through
Geometry and Occlusion-Aware Encoding", ICCV 2023), the encoder GUIDE uses to invert photos: a
face image -> 14 W+ offsets from EG3D's ``w_avg``.

Written from the paper and from the structure of the official code (github.com/jiangyzy/GOAE,
``goae/training/goae.py`` ``GOAEncoder``, ``goae/models/swin_transformer.py``) so that its released
``encoder_FFHQ.pt`` loads: that file is the bare ``state_dict()`` of ``GOAEncoder`` (their
``Net.set_encoder`` calls ``E.load_state_dict(torch.load(E_ckpt))``), and every parameter and buffer
name here is theirs. Only the W+ encoder is needed for GUIDE; GOAE's second stage (AFA, which edits
EG3D's tri-plane features, ``afa_FFHQ.pt``) does not change the latent and is not implemented.

Backbone: Swin Transformer V2 (Liu et al., CVPR 2022) as configured by GOAE's ``swinv2.yaml``:
256x256 input, 4x4 patches, embedding 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), window 16
(clipped to the feature size, 8, in the last stage), pretrained windows (12, 12, 12, 6). Its blocks
use scaled cosine attention (logit scale clamped at log 100), a continuous position bias (an MLP
over log-spaced relative coordinates, 16 * sigmoid of it) and post-norm residuals.

Head: the last stage's normed tokens give the base latent, repeated over all 14 layers; the
features entering stage 4 give queries (3 coarse, 3 mid, 7 fine latents) that cross-attend to
the features entering stages 3, 2 and 1 (coarse, mid, fine keys and values, each coarser level
mapped up and added to the next). Layer 0 is the base latent alone:
offsets = base + [0, coarse (3), mid (3), fine (7)].

Input: images in [-1, 1] aligned as EG3D's training faces, resized to 256 px (GOAE's loader
resizes its 512 px crops with PIL's default bicubic filter, which the antialiased bicubic here follows).
Inference only: GOAE's dropout and stochastic depth act in training and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_WS = 14  # EG3D's W+ layers: 1 base-only + 3 coarse + 3 mid + 7 fine
QUERIES = {"coarse": 3, "mid": 3, "fine": 7}
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")


@dataclass(frozen=True)
class GOAEConfig:
    """The released encoder's configuration (GOAE's swinv2.yaml and infer_config.py)."""

    img_size: int = 256
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, int, int, int] = (2, 2, 18, 2)
    num_heads: tuple[int, int, int, int] = (4, 8, 16, 32)
    window_size: int = 16
    pretrained_window_sizes: tuple[int, int, int, int] = (12, 12, 12, 6)
    mlp_ratio: float = 4.0
    w_dim: int = 512
    mlp_layer: int = 2  # linear layers in each query / base mapper (infer_config --mlp_layer)
    cross_heads: int = 4

    def __post_init__(self):
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.pretrained_window_sizes) != 4:
            raise ValueError("GOAE's encoder reads the features entering each of 4 Swin stages: "
                             "depths, num_heads and pretrained_window_sizes need 4 entries each")
        if self.img_size % (self.patch_size * 16):
            raise ValueError(f"img_size {self.img_size} must be a multiple of 16 x patch_size ({self.patch_size}): "
                             f"three patch mergings must leave a grid of at least 2x2")
        for i, grid in enumerate(self.grids):
            window = min(grid, self.window_size)
            if grid % window:
                raise ValueError(f"stage {i}'s {grid}x{grid} grid is not a whole number of "
                                 f"{self.window_size}x{self.window_size} windows")
            if window < 2 and self.pretrained_window_sizes[i] < 2:
                raise ValueError(f"stage {i}: a window of 1 has no relative positions to encode")
        for i, heads in enumerate(self.num_heads):
            if self.dims[i] % heads:
                raise ValueError(f"stage {i}: {heads} heads do not divide its {self.dims[i]} channels")

    @property
    def grids(self) -> list[int]:
        """Token grid side of each stage: img_size / patch_size, halved by each patch merging."""
        return [self.img_size // self.patch_size // 2 ** i for i in range(4)]

    @property
    def dims(self) -> list[int]:
        return [self.embed_dim * 2 ** i for i in range(4)]

    @property
    def tokens(self) -> list[int]:
        return [g * g for g in self.grids]


def log_spaced_coords(window: int, pretrained_window: int) -> torch.Tensor:
    """Swin-V2's relative coordinates [1, 2w-1, 2w-1, (dy, dx)]: scaled to [-8, 8] by the
    (pretrained) window, then sign(t) * log2(1 + |t|) / log2(8)."""
    span = pretrained_window if pretrained_window > 0 else window
    d = torch.arange(-(window - 1), window, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)[None] / (span - 1) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w]: the row of the coords table holding each (query, key) token pair's offset."""
    yx = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = yx[:, :, None] - yx[:, None, :] + window - 1  # [2, N, N], each in [0, 2w - 2]
    return rel[0] * (2 * window - 1) + rel[1]


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * (H/w) * (W/w), w * w, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """The inverse of ``to_windows``."""
    c = x.shape[-1]
    x = x.view(-1, h // window, w // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """[nW, w*w, w*w]: 0 between tokens of the same region of the cyclically shifted map, -100
    between tokens that only share a window because the shift wrapped them around (Swin's mask)."""
    edges = [0, size - window, size - shift, size]  # regions along each axis
    label = torch.zeros(size, dtype=torch.long)
    for i in range(3):
        label[edges[i]:edges[i + 1]] = i
    region = (label[:, None] * 3 + label[None, :])[None, :, :, None].float()
    region = to_windows(region, window).squeeze(-1)  # [nW, w*w]
    return (region[:, :, None] != region[:, None, :]).float() * -100.0


class WindowAttention(nn.Module):
    """Swin-V2 multi-head self-attention inside a window: cosine similarity times a learned,
    clamped per-head scale, plus a continuous relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, pretrained_window: int):
        super().__init__()
        self.num_heads = num_heads
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.register_buffer("relative_coords_table", log_spaced_coords(window, pretrained_window))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))  # keys get no bias
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """[heads, N, N]: 16 * sigmoid(cpb_mlp(offset of key from query))."""
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        n = self.relative_position_index.shape[0]
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B * nW, N, C]; mask [nW, N, N] added to the logits, or None."""
        bw, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale + self.position_bias()
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(bw, -1, n, n)
        out = logits.softmax(-1) @ v  # [B * nW, heads, N, C / heads]
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each added back after its LayerNorm (res-post-norm)."""

    def __init__(self, dim: int, grid: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
                 pretrained_window: int):
        super().__init__()
        if grid <= window:  # one window covers the map: nothing to shift
            window, shift = grid, 0
        self.grid, self.window, self.shift = grid, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, pretrained_window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(grid, window, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, grid * grid, C]."""
        b, _, c = x.shape
        g, w, s = self.grid, self.window, self.shift
        y = x.view(b, g, g, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = from_windows(self.attn(to_windows(y, w), self.attn_mask), w, g, g)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.norm1(y.reshape(b, g * g, c))
        return x + self.norm2(self.mlp(x))


class PatchMerging(nn.Module):
    """Each 2x2 group of tokens -> one token: concatenated (top-left, bottom-left, top-right,
    bottom-right), linearly reduced from 4C to 2C channels, then LayerNorm."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.norm(self.reduction(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, config: GOAEConfig, i: int):
        super().__init__()
        dim, grid, window = config.dims[i], config.grids[i], config.window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, config.num_heads[i], window, 0 if j % 2 == 0 else window // 2, config.mlp_ratio,
                      config.pretrained_window_sizes[i])
            for j in range(config.depths[i]))
        self.downsample = PatchMerging(dim, grid) if i < 3 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinBackbone(nn.Module):
    """Swin-V2 without a classifier; returns the features GOAE's head reads."""

    def __init__(self, config: GOAEConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.layers = nn.ModuleList(SwinStage(config, i) for i in range(4))
        self.norm = nn.LayerNorm(config.dims[3])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, 3, S, S] -> 'base' [B, C4, T4] (last stage, normed) and the features entering
        stage 4 ('query', [B, C4, T4]), 3 ('coarse'), 2 ('mid') and 1 ('fine'), [B, T, C]."""
        x = self.patch_embed(x)
        entering = []
        for layer in self.layers:
            entering.append(x)
            x = layer(x)
        fine, mid, coarse, query = entering
        return {"base": self.norm(x).transpose(1, 2), "query": query.transpose(1, 2),
                "coarse": coarse, "mid": mid, "fine": fine}


def mlp(dims: list[int], act_last: bool = False) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.01) between them, and after the last one when ``act_last``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(dims)):
        layers += [nn.Linear(a, b)] + ([nn.LeakyReLU()] if act_last or i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


class CrossAttention(nn.Module):
    """Latent queries attend to feature tokens (DETR's decoder layer without self-attention):
    t = LN(q + MHA(q, kv, kv)); t + linear2(relu(linear1(t))). Both norms are affine-free."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = queries + self.multihead_attn(queries, tokens, tokens, need_weights=False)[0]
        t = F.layer_norm(t, t.shape[-1:])
        return t + self.linear2(F.relu(self.linear1(t)))


class GOAEEncoder(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> W+ offsets from EG3D's w_avg, [B, 14, w_dim]
    (a ``LatentEncoder``); parameter names are those of GOAE's ``GOAEncoder``."""

    num_ws = NUM_WS

    def __init__(self, config: GOAEConfig = GOAEConfig()):
        super().__init__()
        self.config = c = config
        e, w, t, layers = c.embed_dim, c.w_dim, c.tokens, c.mlp_layer
        self.swin_model = SwinBackbone(c)
        # Base / query mappers (see _latents): spatial T4 -> k latents, channel C4 -> w_dim.
        self.mapper_base_spatial = mlp([t[3]] * layers + [1])
        self.mapper_base_channel = mlp([c.dims[3]] * layers + [w])
        for level, count in QUERIES.items():
            setattr(self, f"mapper_query_spatial_{level}", mlp([t[3]] * layers + [count]))
            setattr(self, f"mapper_query_channel_{level}", mlp([c.dims[3]] * layers + [w]))
        # Keys/values: each level's channels to w_dim, plus the coarser level's tokens mapped up.
        # Released sizes: 512 -> 512; 256 -> 512; 128 -> 256 -> 512; tokens 256 -> 512 -> 1024;
        # 1024 -> 2048 -> 4096 (hidden widths are twice the inputs).
        self.mapper_coarse_channel = mlp([c.dims[2], w], act_last=True)
        self.mapper_mid_channel = mlp([c.dims[1], w], act_last=True)
        self.mapper_fine_channel = mlp([e, 2 * e, w], act_last=True)
        self.mapper_coarse_to_mid_spatial = mlp([t[2], 2 * t[2], t[1]], act_last=True)
        self.mapper_mid_to_fine_spatial = mlp([t[1], 2 * t[1], t[0]], act_last=True)
        for level in QUERIES:
            setattr(self, f"cross_att_{level}", CrossAttention(w, c.cross_heads, 2 * w))

    @staticmethod
    def _latents(tokens: torch.Tensor, spatial: nn.Module, channel: nn.Module) -> torch.Tensor:
        """tokens [B, C4, T4] -> [B, k, w_dim]: ``spatial`` maps the T4 tokens of each channel to k,
        the channel's max over tokens is added, ``channel`` maps C4 to w_dim."""
        return channel(spatial(tokens).mT + tokens.amax(-1)[:, None])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, img_size, img_size] in [-1, 1] -> [B, 14, w_dim]."""
        f = self.swin_model(x)
        base = self._latents(f["base"], self.mapper_base_spatial, self.mapper_base_channel)  # [B, 1, w_dim]
        kv_coarse = self.mapper_coarse_channel(f["coarse"])
        kv_mid = self.mapper_mid_channel(f["mid"]) + self.mapper_coarse_to_mid_spatial(kv_coarse.mT).mT
        kv_fine = self.mapper_fine_channel(f["fine"]) + self.mapper_mid_to_fine_spatial(kv_mid.mT).mT
        deltas = [torch.zeros_like(base)]
        for level, kv in (("coarse", kv_coarse), ("mid", kv_mid), ("fine", kv_fine)):
            queries = self._latents(f["query"], getattr(self, f"mapper_query_spatial_{level}"),
                                    getattr(self, f"mapper_query_channel_{level}"))
            deltas.append(getattr(self, f"cross_att_{level}")(queries, kv))
        return base + torch.cat(deltas, 1)

    def for_generator(self, generator) -> "GOAEEncoder":
        """The LatentEncoder for ``generator``: GOAE's offsets are already from EG3D's w_avg."""
        if (generator.num_ws, generator.w_dim) != (self.num_ws, self.config.w_dim):
            raise ValueError(f"GOAE gives {self.num_ws} x {self.config.w_dim} latents; {generator.name} takes "
                             f"{generator.num_ws} x {generator.w_dim} (GOAE inverts into EG3D)")
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"GOAE encodes square RGB images [B, 3, S, S], got {tuple(images.shape)}")
        size = self.config.img_size
        x = images.to(self.swin_model.patch_embed.proj.weight)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return self.encode(x)


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def load_goae(path: str | Path, device: str | torch.device = "cpu", config: GOAEConfig = GOAEConfig(),
              state: dict | None = None) -> GOAEEncoder:
    """GOAE's encoder checkpoint (``encoder_FFHQ.pt``: the bare state dict of their ``GOAEncoder``)
    as an eval-mode, frozen ``GOAEEncoder``. Every learned tensor must be present with its shape and
    nothing else may be; the buffers Swin derives from the configuration (position tables, shift
    masks) may be absent, and where present must equal the ones ``config`` gives."""
    path = Path(path).expanduser()
    if state is None:  # else: the file's contents, already read
        if not path.is_file():
            raise FileNotFoundError(f"GOAE encoder checkpoint {path} does not exist (GOAE's encoder_FFHQ.pt is expected)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(state, dict) or not any(str(k).startswith("swin_model.") for k in state):
        raise ValueError(f"{path} is not a GOAE encoder state dict (no 'swin_model.*' tensors); "
                         f"GOAE's encoder_FFHQ.pt is expected")
    encoder = GOAEEncoder(config)
    expected = encoder.state_dict()
    for key in [k for k in state if _is_derived(k) and k in expected]:
        if state[key].shape != expected[key].shape or not torch.allclose(state[key].float(), expected[key].float()):
            raise ValueError(f"{path}: {key} differs from the one {config} gives; the checkpoint was trained "
                             f"with another window or image size: pass its GOAEConfig")
    state = {**{k: v for k, v in expected.items() if _is_derived(k)}, **state}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not match GOAE's encoder with {config}: {e}") from e
    return encoder.eval().requires_grad_(False).to(device)
