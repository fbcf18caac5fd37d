"""GOAE's encoder: Swin-V2 pieces against direct computations, the head's wiring, the released
checkpoint's layout, and loading (tiny random checkpoints in the released file format)."""

import math

import pytest
import torch
import torch.nn.functional as F

from guide_ray.core.inversion import LatentEncoder
from guide_ray.models.goae import GOAEConfig, GOAEEncoder, PatchMerging, SwinBlock, load_goae

# Shifted windows in stages 0 and 1; pretrained windows other than, equal to and absent from the windows.
TINY = GOAEConfig(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                  window_size=4, pretrained_window_sizes=(3, 0, 4, 2), w_dim=16)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (GOAE initialises the post-norms to 0, which hides everything);
    some logit scales above Swin-V2's log(100) clamp."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 6)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return module.eval()


def direct_attention(attn, x, coords, span, allowed=None, masked=None):
    """Swin-V2 attention of tokens x [B, N, C] written out per head, with no windows: positions
    ``coords`` [N, 2] (row, col); ``allowed`` [N, N]: pairs that may attend at all; ``masked``:
    pairs whose logits get Swin's -100."""
    c = x.shape[-1]
    w = attn.qkv.weight
    q, k, v = x @ w[:c].T + attn.q_bias, x @ w[c:2 * c].T, x @ w[2 * c:].T + attn.v_bias
    rel = (coords[:, None, :] - coords[None, :, :]).float() / (span - 1) * 8
    rel = torch.sign(rel) * torch.log2(1 + rel.abs()) / 3  # log2(8) = 3
    bias = 16 * torch.sigmoid(attn.cpb_mlp(rel))  # [N, N, heads]
    heads = attn.num_heads
    d = c // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        cos = (qh / qh.norm(dim=-1, keepdim=True)) @ (kh / kh.norm(dim=-1, keepdim=True)).transpose(1, 2)
        logits = cos * math.exp(min(attn.logit_scale[h].item(), math.log(100))) + bias[..., h]
        if masked is not None:
            logits = logits - 100 * masked
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        outs.append(logits.softmax(-1) @ vh)
    return attn.proj(torch.cat(outs, -1))


def direct_block(block, x, attended):
    """A res-post-norm block around an attention output."""
    x = x + F.layer_norm(attended, (x.shape[-1],), block.norm1.weight, block.norm1.bias)
    hidden = F.gelu(x @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return x + F.layer_norm(hidden, (x.shape[-1],), block.norm2.weight, block.norm2.bias)


def grid_coords(size: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).view(-1, 2)


def test_one_window_block_matches_direct_attention():
    torch.manual_seed(0)
    block = randomise(SwinBlock(dim=8, grid=4, num_heads=2, window=4, shift=0, mlp_ratio=2.0, pretrained_window=3))
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        expected = direct_block(block, x, direct_attention(block.attn, x, grid_coords(4), span=3))
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_shifted_window_block_matches_direct_attention():
    torch.manual_seed(1)
    size, window, shift = 8, 4, 2
    block = randomise(SwinBlock(dim=8, grid=size, num_heads=2, window=window, shift=shift, mlp_ratio=2.0,
                                pretrained_window=0), seed=1)
    assert block.attn_mask is not None
    x = torch.randn(2, size * size, 8)
    # In the map rolled up-left by the shift, tokens attend within their window; within a window,
    # tokens that the roll wrapped around (last `shift` rows / cols) and the others get -100.
    rolled = torch.roll(x.view(2, size, size, 8), (-shift, -shift), (1, 2)).reshape(2, -1, 8)
    pos = grid_coords(size)
    window_id = pos // window
    wrapped = pos >= size - shift
    allowed = (window_id[:, None] == window_id[None]).all(-1)
    masked = (wrapped[:, None] != wrapped[None]).any(-1).float()
    with torch.no_grad():
        attended = direct_attention(block.attn, rolled, pos, span=window, allowed=allowed, masked=masked)
        attended = torch.roll(attended.view(2, size, size, 8), (shift, shift), (1, 2)).reshape(2, -1, 8)
        torch.testing.assert_close(block(x), direct_block(block, x, attended), atol=1e-5, rtol=1e-5)
        block.shift = 0  # the same weights without the shift give another result: the test sees it
        assert (block(x) - direct_block(block, x, attended)).abs().max() > 1e-2


def test_patch_merging_matches_direct_computation():
    merge = randomise(PatchMerging(dim=3, grid=4))
    x = torch.randn(2, 16, 3)
    grid = x.view(2, 4, 4, 3)
    rows = []
    for i in range(2):
        for j in range(2):  # each 2x2 group as (top-left, bottom-left, top-right, bottom-right)
            rows.append(torch.cat([grid[:, 2 * i, 2 * j], grid[:, 2 * i + 1, 2 * j],
                                   grid[:, 2 * i, 2 * j + 1], grid[:, 2 * i + 1, 2 * j + 1]], -1))
    cat = torch.stack(rows, 1)
    expected = F.layer_norm(cat @ merge.reduction.weight.T, (6,), merge.norm.weight, merge.norm.bias)
    with torch.no_grad():
        torch.testing.assert_close(merge(x), expected, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    return randomise(GOAEEncoder(TINY), seed=2).requires_grad_(False)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1


def changed_rows(encoder, images, name):
    """Which of the 14 output rows move when the parameters under ``name`` are perturbed."""
    with torch.no_grad():
        before = encoder(images)
        saved = {k: p.clone() for k, p in encoder.named_parameters() if k.startswith(name)}
        for k, p in encoder.named_parameters():
            if k.startswith(name):
                p.add_(torch.randn_like(p))
        after = encoder(images)
        for k, p in encoder.named_parameters():
            if k in saved:
                p.copy_(saved[k])
    return [i for i in range(14) if (after[:, i] - before[:, i]).abs().max() > 1e-6]


def test_head_wiring(tiny, images):
    out = tiny(images)
    assert out.shape == (2, 14, 16) and isinstance(tiny, LatentEncoder)
    # GOAE: offsets = base (all rows) + [0, coarse x3, mid x3, fine x7]; kv_mid reads kv_coarse and
    # kv_fine reads kv_mid; the base reads the last stage, the queries the features entering it.
    assert changed_rows(tiny, images, "cross_att_coarse") == [1, 2, 3]
    assert changed_rows(tiny, images, "mapper_query_spatial_mid") == [4, 5, 6]
    assert changed_rows(tiny, images, "cross_att_fine") == list(range(7, 14))
    assert changed_rows(tiny, images, "mapper_mid_to_fine_spatial") == list(range(7, 14))
    assert changed_rows(tiny, images, "mapper_coarse_to_mid_spatial") == list(range(4, 14))
    assert changed_rows(tiny, images, "mapper_coarse_channel") == list(range(1, 14))
    assert changed_rows(tiny, images, "swin_model.layers.3") == list(range(14))  # the base only ...
    assert changed_rows(tiny, images, "swin_model.layers.2") == list(range(14))
    with torch.no_grad():  # ... and it is one latent for every row
        delta = torch.randn(16)
        tiny.mapper_base_channel[-1].bias.add_(delta)
        torch.testing.assert_close(tiny(images) - out, delta.expand(2, 14, 16), atol=1e-5, rtol=0)
        tiny.mapper_base_channel[-1].bias.sub_(delta)


def test_base_and_coarse_rows_match_direct_computation(tiny, images):
    seen = {}
    hooks = [tiny.swin_model.layers[i].register_forward_hook(
        lambda m, args, out, i=i: seen.__setitem__(i, (args[0], out))) for i in (2, 3)]
    try:
        out = tiny(images)
    finally:
        for h in hooks:
            h.remove()
    (coarse, _), (entering_last, last) = seen[2], seen[3]
    norm = tiny.swin_model.norm

    def latents(tokens, spatial, channel):  # tokens [B, T, C]: an MLP over T per channel, plus the max over T
        return channel(spatial(tokens.transpose(1, 2)).transpose(1, 2) + tokens.max(1).values[:, None])

    base = latents(F.layer_norm(last, (last.shape[-1],), norm.weight, norm.bias),
                   tiny.mapper_base_spatial, tiny.mapper_base_channel)
    torch.testing.assert_close(out[:, :1], base, atol=1e-5, rtol=1e-5)
    # Rows 1-3: the coarse queries (from the features entering the last stage) attend to the
    # coarse keys (the features entering stage 3), in DETR's decoder-layer arrangement.
    queries = latents(entering_last, tiny.mapper_query_spatial_coarse, tiny.mapper_query_channel_coarse)
    tokens = F.leaky_relu(coarse @ tiny.mapper_coarse_channel[0].weight.T + tiny.mapper_coarse_channel[0].bias)
    layer = tiny.cross_att_coarse
    mha = layer.multihead_attn
    w, b = mha.in_proj_weight, mha.in_proj_bias
    d = 16
    q, k, v = queries @ w[:d].T + b[:d], tokens @ w[d:2 * d].T + b[d:2 * d], tokens @ w[2 * d:].T + b[2 * d:]
    heads, hd = mha.num_heads, d // mha.num_heads
    attended = torch.cat([((q[..., h * hd:(h + 1) * hd] @ k[..., h * hd:(h + 1) * hd].transpose(1, 2)) / math.sqrt(hd))
                          .softmax(-1) @ v[..., h * hd:(h + 1) * hd] for h in range(heads)], -1)
    t = queries + attended @ mha.out_proj.weight.T + mha.out_proj.bias
    t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    t = t + torch.relu(t @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias
    torch.testing.assert_close(out[:, 1:4], base + t, atol=1e-5, rtol=1e-5)


def test_tiny_checkpoint_round_trip(tiny, images, tmp_path):
    path = tmp_path / "encoder_FFHQ.pt"
    torch.save(tiny.state_dict(), path)  # the released file's format: GOAEncoder's bare state dict
    loaded = load_goae(path, "cpu", TINY)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded(images), tiny(images))
    # Without the buffers Swin derives from the configuration, the file loads the same.
    derived = ("relative_coords_table", "relative_position_index", "attn_mask")
    torch.save({k: v for k, v in tiny.state_dict().items() if not k.endswith(derived)}, path)
    assert torch.equal(load_goae(path, "cpu", TINY)(images), tiny(images))
    # Inputs at another size are resized to the encoder's 32 px first.
    big = F.interpolate(images, size=(64, 64), mode="nearest")
    small = F.interpolate(big, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(loaded(big), loaded(small))
    with pytest.raises(ValueError, match=r"square RGB images \[B, 3, S, S\], got \(2, 3, 32, 16\)"):
        loaded(images[..., :16])


def test_wrong_files_are_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt does not exist"):
        load_goae(tmp_path / "nowhere.pt", config=TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        load_goae(junk, config=TINY)
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt is not a GOAE encoder state dict"):
        load_goae(other, config=TINY)
    state = tiny.state_dict()
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "cross_att_mid.linear2.bias"}, missing)
    with pytest.raises(ValueError, match=r"(?s)missing.pt does not match.*cross_att_mid.linear2.bias"):
        load_goae(missing, config=TINY)
    extra = tmp_path / "extra.pt"
    torch.save({**state, "afa.conv.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"(?s)Unexpected key.*afa.conv.weight"):
        load_goae(extra, config=TINY)
    saved = tmp_path / "encoder.pt"
    torch.save(state, saved)
    with pytest.raises(ValueError, match="another window or image size"):  # saved with window 4, read with 2
        load_goae(saved, config=GOAEConfig(**{**TINY.__dict__, "window_size": 2}))
    with pytest.raises(ValueError, match="not a whole number of 3x3 windows"):
        GOAEConfig(**{**TINY.__dict__, "window_size": 3})


def test_released_layout():
    """The released encoder_FFHQ.pt's tensors. Counts and shapes taken from GOAE's own GOAEncoder
    (goae/training/goae.py, swinv2.yaml, mlp_layer=2) built outside this repo: 545 tensors,
    111,218,822 parameters; its keys, shapes and derived buffers equal ours there."""
    with torch.device("meta"):
        encoder = GOAEEncoder(GOAEConfig())
    state = encoder.state_dict()
    assert len(state) == 545 and sum(p.numel() for p in encoder.parameters()) == 111_218_822
    shapes = {
        "swin_model.patch_embed.proj.weight": (128, 3, 4, 4),
        "swin_model.layers.0.blocks.1.attn_mask": (16, 256, 256),  # 64x64 tokens, 16x16 windows
        "swin_model.layers.2.blocks.17.attn.cpb_mlp.2.weight": (16, 512),
        "swin_model.layers.2.downsample.reduction.weight": (1024, 2048),
        "swin_model.layers.3.blocks.1.attn.relative_coords_table": (1, 15, 15, 2),  # window clipped to 8
        "swin_model.norm.weight": (1024,),
        "mapper_base_spatial.2.weight": (1, 64),
        "mapper_query_channel_fine.0.weight": (1024, 1024),
        "mapper_fine_channel.0.weight": (256, 128),
        "mapper_mid_to_fine_spatial.2.weight": (4096, 2048),
        "cross_att_fine.multihead_attn.in_proj_weight": (1536, 512),
        "cross_att_fine.linear1.weight": (1024, 512),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "swin_model.layers.2.blocks.1.attn_mask" not in state  # 16x16 tokens: one window, no shift


def test_load_encoder_tells_goae_from_psp_by_contents(tiny, tmp_path):
    """models.load_encoder (what cfg.inversion.encoder goes through) routes a GOAE state dict to
    load_goae (here the released config, which this tiny file does not fit: GOAE's own error) and
    binds GOAE only to a generator with its 14 x w_dim latents."""
    from types import SimpleNamespace

    from guide_ray.models import load_encoder
    from guide_ray.weights import WeightsError

    path = tmp_path / "encoder_FFHQ.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ValueError, match="encoder_FFHQ.pt: .* differs from the one .* gives"):
        load_encoder(path)
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match="other.pt is neither a GOAE encoder .* nor a pSp/e4e checkpoint"):
        load_encoder(other)
    eg3d_like = SimpleNamespace(name="eg3d", num_ws=14, w_dim=TINY.w_dim)
    assert tiny.for_generator(eg3d_like) is tiny
    with pytest.raises(ValueError, match="GOAE gives 14 x .* stylegan2 takes 18 x"):
        tiny.for_generator(SimpleNamespace(name="stylegan2", num_ws=18, w_dim=TINY.w_dim))
