"""IR / IR-SE face-recognition backbones (pSp's model_ir_se50.pth, CurricularFace_Backbone.pth) and
pSp / e4e encoders, from checkpoints built here in the published layouts (the real key names and
nesting, random weights, tiny widths where the architecture allows), saved as the originals save them,
loaded through our loaders, and compared with a functional forward written below from the raw tensors."""

import argparse
import math
import os
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from guide_ray.config import load_config
from guide_ray.core.inversion import LatentEncoder, encode
from guide_ray.models.identity import LANDMARKS5, arcface_box, load_identity_net, mtcnn_photo_chip
from guide_ray.models.irse import load_backbone
from guide_ray.models.psp import load_psp_encoder
from guide_ray.weights import WeightsError

IR_SE50 = dict(stem=64, depths=(64, 128, 256, 512), units=(3, 4, 14, 3))


# ---------------------------------------------------------------- checkpoints in the published layouts

def _bn(sd, prefix, c, gen, affine=True):
    if affine:
        sd[prefix + "weight"] = torch.rand(c, generator=gen) * 0.4 + 0.8
        sd[prefix + "bias"] = torch.randn(c, generator=gen) * 0.1
    sd[prefix + "running_mean"] = torch.randn(c, generator=gen) * 0.1
    sd[prefix + "running_var"] = torch.rand(c, generator=gen) + 0.5
    sd[prefix + "num_batches_tracked"] = torch.tensor(0)


def _conv(shape, gen, gain=0.7):
    return torch.randn(shape, generator=gen) * gain / math.sqrt(math.prod(shape[1:]))


def unit_plan(stem, depths, units):
    """(in_channels, depth, stride) per body unit: TreB1eN's get_blocks (stride 2 opens each stage)."""
    plan, prev = [], stem
    for depth, n in zip(depths, units):
        plan += [(prev, depth, 2)] + [(depth, depth, 1)] * (n - 1)
        prev = depth
    return plan


def ir_state(stem, depths, units, se, head=None, seed=0):
    """An IR / IR-SE state dict as TreB1eN's Backbone names it; head = (embedding, side, affine)."""
    gen, sd = torch.Generator().manual_seed(seed), OrderedDict()
    sd["input_layer.0.weight"] = _conv((stem, 3, 3, 3), gen)
    _bn(sd, "input_layer.1.", stem, gen)
    sd["input_layer.2.weight"] = torch.rand(stem, generator=gen) * 0.2 + 0.1
    for i, (cin, d, _) in enumerate(unit_plan(stem, depths, units)):
        p = f"body.{i}."
        if cin != d:
            sd[p + "shortcut_layer.0.weight"] = _conv((d, cin, 1, 1), gen)
            _bn(sd, p + "shortcut_layer.1.", d, gen)
        _bn(sd, p + "res_layer.0.", cin, gen)
        sd[p + "res_layer.1.weight"] = _conv((d, cin, 3, 3), gen)
        sd[p + "res_layer.2.weight"] = torch.rand(d, generator=gen) * 0.2 + 0.1
        sd[p + "res_layer.3.weight"] = _conv((d, d, 3, 3), gen)
        _bn(sd, p + "res_layer.4.", d, gen)
        if se:
            sd[p + "res_layer.5.fc1.weight"] = _conv((d // 16, d, 1, 1), gen, 1.0)
            sd[p + "res_layer.5.fc2.weight"] = _conv((d, d // 16, 1, 1), gen, 1.0)
    if head:
        emb, side, affine = head
        _bn(sd, "output_layer.0.", depths[-1], gen)
        sd["output_layer.3.weight"] = _conv((emb, depths[-1] * side * side), gen, 1.0)
        sd["output_layer.3.bias"] = torch.randn(emb, generator=gen) * 0.1
        _bn(sd, "output_layer.4.", emb, gen, affine)
    return sd


# ---------------------------------------------------------------- the independent functional forward

def bn(sd, p, x):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd.get(p + "weight"), sd.get(p + "bias"),
                        False, 0.0, 1e-5)


def ref_stages(sd, spec, se, x):
    """Each stage's output, unit by unit from the raw tensors."""
    x = F.prelu(bn(sd, "input_layer.1.", F.conv2d(x, sd["input_layer.0.weight"], padding=1)), sd["input_layer.2.weight"])
    outs, ends = [], set(np.cumsum(spec["units"]) - 1)
    for i, (cin, d, s) in enumerate(unit_plan(**spec)):
        p = f"body.{i}."
        if cin == d:
            short = x[:, :, ::s, ::s]
        else:
            short = bn(sd, p + "shortcut_layer.1.", F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=s))
        r = F.conv2d(bn(sd, p + "res_layer.0.", x), sd[p + "res_layer.1.weight"], padding=1)
        r = F.conv2d(F.prelu(r, sd[p + "res_layer.2.weight"]), sd[p + "res_layer.3.weight"], stride=s, padding=1)
        r = bn(sd, p + "res_layer.4.", r)
        if se:
            squeeze = F.relu(F.conv2d(r.mean(dim=(2, 3), keepdim=True), sd[p + "res_layer.5.fc1.weight"]))
            r = r * torch.sigmoid(F.conv2d(squeeze, sd[p + "res_layer.5.fc2.weight"]))
        x = r + short
        if i in ends:
            outs.append(x)
    return outs


def ref_embedding(sd, spec, se, x):
    x = bn(sd, "output_layer.0.", ref_stages(sd, spec, se, x)[-1]).flatten(1)
    x = bn(sd, "output_layer.4.", F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"]))
    return x / x.norm(dim=1, keepdim=True)


def equal_linear(sd, p, x):
    w = sd[p + "weight"]
    return F.linear(x, w / math.sqrt(w.shape[1]), sd[p + "bias"])


def ref_style(sd, p, x):
    i = 0
    while f"{p}convs.{i}.weight" in sd:
        x = F.leaky_relu(F.conv2d(x, sd[f"{p}convs.{i}.weight"], sd[f"{p}convs.{i}.bias"], stride=2, padding=1), 0.01)
        i += 2
    return equal_linear(sd, p + "linear.", x.flatten(1))


def ref_codes(sd, spec, kind, n_styles, x):
    """pSp's / e4e's encoder outputs ([B, n, w] or [B, w] for a W encoder) for 256 px inputs."""
    c1, c2, c3 = ref_stages(sd, spec, True, x)[-3:]

    def up_add(a, lateral, name):
        lat = F.conv2d(lateral, sd[name + ".weight"], sd[name + ".bias"])
        return F.interpolate(a, size=lat.shape[-2:], mode="bilinear", align_corners=True) + lat

    if kind in ("GradualStyleEncoder", "Encoder4Editing"):
        p2 = up_add(c3, c2, "latlayer1")
        p1 = up_add(p2, c1, "latlayer2")
        feats = [c3 if i < 3 else p2 if i < 7 else p1 for i in range(n_styles)]
        styles = [ref_style(sd, f"styles.{i}.", f) for i, f in enumerate(feats)]
        if kind == "GradualStyleEncoder":
            return torch.stack(styles, 1)
        return torch.stack([styles[0]] + [styles[0] + s for s in styles[1:]], 1)
    if kind == "BackboneEncoderUsingLastLayerIntoWPlus":
        x = F.adaptive_avg_pool2d(bn(sd, "output_layer_2.0.", c3), 7).flatten(1)
        x = F.linear(x, sd["output_layer_2.3.weight"], sd["output_layer_2.3.bias"])
        return equal_linear(sd, "linear.", x).view(x.shape[0], n_styles, -1)
    return equal_linear(sd, "linear.", c3.mean(dim=(2, 3)))  # W codes


# ---------------------------------------------------------------- IR-SE50 (pSp / GUIDE ID loss)

@pytest.fixture(scope="module")
def irse50(tmp_path_factory):
    """pSp's model_ir_se50.pth layout at its real size: Backbone(112, 50, 'ir_se'), affine BatchNorm1d,
    saved as torch.save(model.state_dict())."""
    sd = ir_state(**IR_SE50, se=True, head=(512, 7, True))
    path = tmp_path_factory.mktemp("irse") / "model_ir_se50.pth"
    torch.save(sd, path)
    return path, sd


def test_irse50_matches_functional_forward(irse50):
    path, sd = irse50
    net = load_backbone(path)
    assert (net.layout.name, net.layout.se, net.layout.affine, net.layout.input_size) == ("ir_se50", True, True, 112)
    assert sum(p.numel() for p in net.parameters()) > 43e6  # the real network, not a reduced one
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ours, ref = net(x), ref_embedding(sd, IR_SE50, True, x)
    assert ours.shape == (1, 512)
    assert torch.allclose(ours.norm(dim=1), torch.ones(1))
    assert (ours - ref).abs().max() < 1e-5
    x2 = x.flip(-1)
    with torch.no_grad():
        assert (net(x2) - ours).abs().max() > 1e-3  # the embedding depends on the input


def test_irse50_identity_net_uses_guides_crop_and_passes_gradients(irse50):
    path, sd = irse50
    net = load_identity_net(path)
    assert net.name == "arcface-ir_se50:model_ir_se50.pth" and net.chip_size == 112 and net.dim == 512
    # GUIDE's IDLoss.extract_feats on a 256 px image: x[:, :, 35:223, 32:220], AdaptiveAvgPool2d(112)
    img = F.interpolate(torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 2 - 1,
                        size=(256, 256), mode="bicubic", align_corners=False)
    guide = F.adaptive_avg_pool2d(img[:, :, 35:223, 32:220], 112)
    assert (net.generated_chip(img) - guide).abs().mean() < 0.015  # 0.007: bilinear vs box resampling
    shifted = img[:, :, 35 - 4:223 - 4, 32:220]  # 4 px off (0.12): the check tells crops apart
    assert (net.generated_chip(img) - F.adaptive_avg_pool2d(shifted, 112)).abs().mean() > 0.05
    with torch.no_grad():
        assert (net(guide) - ref_embedding(sd, IR_SE50, True, guide)).abs().max() < 1e-5

    gen_img = img.clone().requires_grad_(True)
    net.embed_generated(gen_img).sum().backward()
    assert gen_img.grad is not None and torch.isfinite(gen_img.grad).all() and gen_img.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())


# ---------------------------------------------------------------- IR-101 (CurricularFace, GUIDE ID metric)

CURRICULAR = dict(stem=8, depths=(8, 16, 24, 32), units=(3, 13, 30, 3))  # IR_101's units, tiny widths


@pytest.fixture(scope="module")
def curricular(tmp_path_factory):
    """CurricularFace_Backbone.pth's layout (IR_101(112): IR units, BatchNorm1d(affine=False)), tiny widths."""
    sd = ir_state(**CURRICULAR, se=False, head=(16, 7, False))
    path = tmp_path_factory.mktemp("cf") / "CurricularFace_Backbone.pth"
    torch.save(sd, path)
    return path, sd


def test_curricularface_layout_forward_and_conventions(curricular):
    path, sd = curricular
    net = load_identity_net(path)
    layout = net.net.layout
    assert (layout.name, layout.se, layout.affine, layout.stage_units) == ("ir101", False, False, (3, 13, 30, 3))
    assert net.name == "curricularface-ir101:CurricularFace_Backbone.pth" and net.dim == 16
    assert net.ffhq_box == arcface_box(LANDMARKS5, 112)  # MTCNN's 112 px reference points = ArcFace's template
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        assert (net(x) - ref_embedding(sd, CURRICULAR, False, x)).abs().max() < 1e-5

    assert net._photo_crop is mtcnn_photo_chip  # photos: MTCNN's 5 points, as the paper's metric (test_mtcnn.py)


def test_dataparallel_prefix_is_stripped(tmp_path):
    spec = dict(stem=16, depths=(16, 32, 48, 64), units=(1, 1, 1, 1))
    sd = ir_state(**spec, se=True, head=(8, 7, True), seed=7)
    torch.save(OrderedDict((f"module.{k}", v) for k, v in sd.items()), tmp_path / "dp.pth")
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert (load_backbone(tmp_path / "dp.pth")(x) - ref_embedding(sd, spec, True, x)).abs().max() < 1e-5


def test_wrong_backbone_files_are_named(tmp_path, curricular):
    path, sd = curricular
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(WeightsError, match=r"resnet\.pth.*not an IR/IR-SE.*input_layer\.0\.weight"):
        load_identity_net(other)

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in sd.items() if k != "body.5.res_layer.4.running_var"}, missing)
    with pytest.raises(WeightsError, match=r"missing\.pth.*body\.5\.res_layer\.4\.running_var"):
        load_identity_net(missing)

    bad = dict(sd)
    bad["body.4.res_layer.1.weight"] = torch.zeros(16, 9, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad\.pth.*body\.4\.res_layer\.1\.weight.*\[depth, 16, 3, 3\]"):
        load_identity_net(tmp_path / "bad.pth")

    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_identity_net(tmp_path / "absent.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"notes\.pth is not a readable torch checkpoint"):
        load_identity_net(tmp_path / "notes.pth")


class _Payload:
    """An object whose unpickling would create a folder: a stand-in for malicious pickled code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def test_arbitrary_pickles_are_refused(tmp_path):
    marker = tmp_path / "created_by_unpickling"
    torch.save({"input_layer.0.weight": torch.zeros(1), "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil\.pth: refused to load.*os\.makedirs"):
        load_identity_net(tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil\.pth: refused to load"):
        load_psp_encoder(tmp_path / "evil.pth")
    assert not marker.exists()


# ---------------------------------------------------------------- pSp / e4e encoders

ENC = dict(stem=16, depths=(16, 24, 32, 48), units=(1, 2, 2, 1))  # IR-SE body, tiny widths
W_DIM, SIZE, N_STYLES = 8, 32, 8  # a 32 px generator: 2 * log2(32) - 2 = 8 styles (3 coarse, 4 middle, 1 fine)


def encoder_state(kind, seed=0):
    """The encoder.* tensors of a pSp / e4e checkpoint of ``kind`` (keys as its module names them)."""
    gen = torch.Generator().manual_seed(seed + 100)
    sd = ir_state(**ENC, se=True, seed=seed)
    c3 = ENC["depths"][-1]
    if kind in ("GradualStyleEncoder", "Encoder4Editing"):
        for i in range(N_STYLES):
            n_convs = 4 if i < 3 else 5 if i < 7 else 6  # log2 of 16, 32, 64
            for j in range(n_convs):
                sd[f"styles.{i}.convs.{2 * j}.weight"] = _conv((W_DIM, c3 if j == 0 else W_DIM, 3, 3), gen, 1.2)
                sd[f"styles.{i}.convs.{2 * j}.bias"] = torch.randn(W_DIM, generator=gen) * 0.1
            sd[f"styles.{i}.linear.weight"] = torch.randn(W_DIM, W_DIM, generator=gen)
            sd[f"styles.{i}.linear.bias"] = torch.randn(W_DIM, generator=gen) * 0.1
        for name, cin in (("latlayer1", ENC["depths"][2]), ("latlayer2", ENC["depths"][1])):
            sd[f"{name}.weight"] = _conv((c3, cin, 1, 1), gen)
            sd[f"{name}.bias"] = torch.randn(c3, generator=gen) * 0.1
    elif kind == "BackboneEncoderUsingLastLayerIntoWPlus":
        _bn(sd, "output_layer_2.0.", c3, gen)
        sd["output_layer_2.3.weight"] = _conv((W_DIM, c3 * 49), gen, 1.0)
        sd["output_layer_2.3.bias"] = torch.randn(W_DIM, generator=gen) * 0.1
        sd["linear.weight"] = torch.randn(W_DIM * N_STYLES, W_DIM, generator=gen)
        sd["linear.bias"] = torch.randn(W_DIM * N_STYLES, generator=gen) * 0.1
    else:
        sd["linear.weight"] = torch.randn(W_DIM, c3, generator=gen)
        sd["linear.bias"] = torch.randn(W_DIM, generator=gen) * 0.1
    return sd


def save_checkpoint(path, kind, enc_sd, latent_avg=None, namespace=False, **opts):
    """As pSp's / e4e's Coach.__get_save_dict: {'state_dict': net.state_dict(), 'opts': vars(opts), 'latent_avg'}."""
    state = OrderedDict((f"encoder.{k}", v) for k, v in enc_sd.items())
    state["decoder.style.1.weight"] = torch.randn(W_DIM, W_DIM)  # the generator's tensors: not ours to load
    size_key = "stylegan_size" if kind in ("Encoder4Editing", "SingleStyleCodeEncoder") else "output_size"
    options = {"encoder_type": kind, size_key: SIZE, "input_nc": 3, "start_from_latent_avg": latent_avg is not None,
               "learn_in_w": kind == "BackboneEncoderUsingLastLayerIntoW", "device": "cuda:0", **opts}
    ckpt = {"state_dict": state, "opts": argparse.Namespace(**options) if namespace else options}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return path


def stub_generator(num_ws=N_STYLES, w_dim=W_DIM):
    """What encode() and for_generator() read of a Generator."""
    return SimpleNamespace(name="stub", num_ws=num_ws, w_dim=w_dim, device=torch.device("cpu"),
                           w_avg=torch.randn(w_dim, generator=torch.Generator().manual_seed(11)))


def pil_resize_256(images):
    """pSp's transforms.Resize((256, 256)): PIL's bilinear resize (antialiased when shrinking), per channel."""
    return torch.from_numpy(np.stack([[np.asarray(Image.fromarray(c.numpy(), mode="F").resize((256, 256), Image.BILINEAR))
                                       for c in img] for img in images]))


KINDS = ["GradualStyleEncoder", "Encoder4Editing", "BackboneEncoderUsingLastLayerIntoW", "SingleStyleCodeEncoder",
         "BackboneEncoderUsingLastLayerIntoWPlus"]


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_latents_match_functional_forward(tmp_path, kind):
    sd = encoder_state(kind)
    w_code = kind in ("BackboneEncoderUsingLastLayerIntoW", "SingleStyleCodeEncoder")
    # pSp's W encoder keeps a [512] latent_avg; the others repeat it per style
    latent_avg = torch.randn(W_DIM) if kind == "BackboneEncoderUsingLastLayerIntoW" else torch.randn(N_STYLES, W_DIM)
    path = save_checkpoint(tmp_path / "enc.pt", kind, sd, latent_avg, namespace=kind == "Encoder4Editing")
    enc = load_psp_encoder(path)
    assert (enc.n_styles, enc.w_dim, enc.start_from_latent_avg) == (N_STYLES, W_DIM, True)

    images = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(6)) * 2 - 1
    x256 = pil_resize_256(images)
    with torch.no_grad():
        ref = ref_codes(sd, ENC, kind, N_STYLES, x256)
    if w_code:
        ref = ref[:, None].expand(-1, N_STYLES, -1)
    ref_latents = ref + latent_avg  # pSp.forward: codes + latent_avg (start_from_latent_avg)
    with torch.no_grad():
        codes = enc.codes(images)
    assert codes.shape == (2, N_STYLES, W_DIM)
    assert (codes - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
    assert (codes[0] - codes[1]).abs().max() > 1e-3  # different images, different codes
    if kind == "Encoder4Editing":
        assert (codes[:, 1:] - codes[:, :1]).abs().max() > 1e-3  # the deltas are applied

    gen = stub_generator()
    encoder = enc.for_generator(gen)
    assert isinstance(encoder, LatentEncoder)
    ws = encode(gen, encoder, images)  # w_avg + offsets
    assert (gen.w_avg - latent_avg).abs().max() > 0.1  # the generator's w_avg is not pSp's latent_avg ...
    assert (ws - ref_latents).abs().max() < 1e-4 * max(1.0, float(ref_latents.abs().max()))  # ... yet ws is pSp's


def test_encoder_without_latent_avg(tmp_path):
    sd = encoder_state("GradualStyleEncoder", seed=1)
    gen = stub_generator()
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        ref = ref_codes(sd, ENC, "GradualStyleEncoder", N_STYLES, images)
    # start_from_latent_avg off: the codes are the latents
    enc = load_psp_encoder(save_checkpoint(tmp_path / "a.pt", "GradualStyleEncoder", sd))
    assert not enc.start_from_latent_avg
    assert (encode(gen, enc.for_generator(gen), images) - ref).abs().max() < 1e-4
    # on but none stored (e4e then uses its decoder's mean latent): the generator's w_avg stands in
    enc = load_psp_encoder(save_checkpoint(tmp_path / "b.pt", "GradualStyleEncoder", sd, start_from_latent_avg=True))
    assert (encode(gen, enc.for_generator(gen), images) - (ref + gen.w_avg)).abs().max() < 1e-4


def test_encoder_errors_name_the_file(tmp_path, curricular):
    sd = encoder_state("GradualStyleEncoder")
    avg = torch.randn(N_STYLES, W_DIM)
    with pytest.raises(WeightsError, match=r"x\.pt: encoder_type 'ResNetEncoder' is not one of"):
        load_psp_encoder(save_checkpoint(tmp_path / "x.pt", "ResNetEncoder", sd, avg))
    with pytest.raises(WeightsError, match=r"y\.pt: 8 style blocks, but a 1024 px generator has 18"):
        load_psp_encoder(save_checkpoint(tmp_path / "y.pt", "GradualStyleEncoder", sd, avg, output_size=1024))
    gray = dict(sd, **{"input_layer.0.weight": torch.randn(ENC["stem"], 1, 3, 3)})
    with pytest.raises(WeightsError, match=r"z\.pt: the encoder takes 1-channel inputs"):
        load_psp_encoder(save_checkpoint(tmp_path / "z.pt", "GradualStyleEncoder", gray, avg, input_nc=1))
    with pytest.raises(WeightsError, match=r"v\.pt: latent_avg has shape \(3, 8\)"):
        load_psp_encoder(save_checkpoint(tmp_path / "v.pt", "GradualStyleEncoder", sd, torch.randn(3, W_DIM)))
    with pytest.raises(WeightsError, match=r"CurricularFace_Backbone\.pth is not a pSp/e4e checkpoint"):
        load_psp_encoder(curricular[0])
    with pytest.raises(WeightsError, match=r"is a pSp/e4e encoder checkpoint, not a face-recognition backbone"):
        load_identity_net(save_checkpoint(tmp_path / "w.pth", "GradualStyleEncoder", sd, avg))

    enc = load_psp_encoder(save_checkpoint(tmp_path / "ok.pt", "GradualStyleEncoder", sd, avg))
    with pytest.raises(WeightsError, match=r"ok\.pt predicts 8 x 8 latents, but generator 'stub' takes 18 x 8"):
        enc.for_generator(stub_generator(num_ws=18))


def test_encoder_is_selected_by_config(tmp_path):
    from guide_ray.models import load_encoder
    from guide_ray.models.psp import PSPEncoder

    path = save_checkpoint(tmp_path / "psp_ffhq_encode.pt", "GradualStyleEncoder", encoder_state("GradualStyleEncoder"),
                           torch.randn(N_STYLES, W_DIM))
    assert isinstance(load_encoder(path), PSPEncoder)  # what the pipeline's Networks loads
    cfg = load_config(overrides=[f"inversion.encoder={tmp_path / 'psp_ffhq_encode.pt'}"])
    assert cfg.inversion.encoder == str(tmp_path / "psp_ffhq_encode.pt")
    assert load_config().inversion.encoder is None
