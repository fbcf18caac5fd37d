import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image, ImageFilter

from guide_ray import weights
from guide_ray.images import save_png
from guide_ray.models.fid import (FeatureStats, InceptionFeatures, fid, frechet_distance,
                                  legacy_bilinear_matrix, stats_of_folder)
from guide_ray import cli
from tests.helpers import require_weights

N_IMAGES, SIZE = 64, 128


@pytest.fixture(scope="module")
def net():
    require_weights("fid-inception")
    return InceptionFeatures(device="cpu")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """64 real-ish 128 px images: random crops (with flips) of the openpeople portraits and selfies."""
    require_weights("openpeople")
    root = weights.directory("openpeople")
    sources = []
    for person in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for name in ("studio_portrait.jpg", "amateur_selfie.jpg"):
            with Image.open(root / person / "assets" / name) as im:
                im.draft("RGB", (im.width // 4, im.height // 4))  # fast JPEG decode at 1/4 scale
                sources.append(im.convert("RGB"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        im = sources[i % len(sources)]
        side = int(min(im.size) * rng.uniform(0.4, 0.8))
        x0, y0 = rng.integers(0, im.width - side + 1), rng.integers(0, im.height - side + 1)
        crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((SIZE, SIZE), Image.BICUBIC)
        out.append(np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop))
    return np.stack(out)


def blurred(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images])


@pytest.fixture(scope="module")
def stats(net, photos) -> dict[float, FeatureStats]:
    """FID statistics of the photos sharp (radius 0) and blurred more and more."""
    return {r: FeatureStats.from_features(net.features_of(blurred(photos, r) if r else photos)) for r in (0, 1, 3)}


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero(stats):
    s = stats[0]
    assert s.n == N_IMAGES and s.mu.shape == (2048,) and s.sigma.shape == (2048, 2048)
    assert abs(s.fid(s)) < 1e-6
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-6


@pytest.mark.slow
def test_fid_grows_as_one_set_is_blurred_more(stats):
    mild, strong = stats[0].fid(stats[1]), stats[0].fid(stats[3])
    assert 1 < mild < strong, (mild, strong)
    assert stats[1].fid(stats[0]) == pytest.approx(mild, rel=1e-9)


@pytest.mark.slow
def test_npz_round_trip_gives_the_same_fid(stats, tmp_path):
    a = FeatureStats.load(stats[0].save(tmp_path / "a.npz"))
    b = FeatureStats.load(stats[3].save(tmp_path / "sub" / "b.npz"))
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(z.files) == ["mu", "n", "sigma"]
    assert a.n == N_IMAGES and np.array_equal(a.mu, stats[0].mu) and np.array_equal(a.sigma, stats[0].sigma)
    assert a.fid(b) == pytest.approx(stats[0].fid(stats[3]), rel=1e-9)
    assert fid(tmp_path / "a.npz", tmp_path / "sub" / "b.npz") == pytest.approx(a.fid(b), rel=1e-9)


@pytest.mark.slow
def test_folder_statistics_and_cli(net, photos, stats, tmp_path, capsys):
    folder = tmp_path / "images"
    for i, im in enumerate(photos[:8]):
        save_png(im, folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    from_folder = stats_of_folder(folder, net)
    direct = FeatureStats.from_features(net.features_of(photos[:8]))
    assert from_folder.n == 8
    np.testing.assert_allclose(from_folder.mu, direct.mu, atol=1e-9)
    np.testing.assert_allclose(from_folder.sigma, direct.sigma, atol=1e-9)

    stats[0].save(tmp_path / "ref.npz")
    assert cli.main(["fid", str(folder), str(tmp_path / "ref.npz"), "--save-stats", str(tmp_path / "folder.npz")]) == 0
    printed = capsys.readouterr().out
    assert f"FID: {from_folder.fid(stats[0]):.6f}" in printed
    saved = FeatureStats.load(tmp_path / "folder.npz")
    np.testing.assert_allclose(saved.mu, from_folder.mu, atol=1e-9)

    assert cli.main(["fid", str(tmp_path / "folder.npz"), str(tmp_path / "ref.npz")]) == 0  # npz only: no network
    assert f"FID: {saved.fid(stats[0]):.6f}" in capsys.readouterr().out
    assert cli.main(["fid", str(tmp_path / "nowhere"), str(tmp_path / "ref.npz")]) == 2


def test_preprocessing_follows_fid_helper(net):
    lo, hi = InceptionFeatures.NET_RANGE
    assert (lo, hi) == (-1.0, 0.9921875)
    ends = torch.tensor([-1.5, -1.0, 1.0, 1.5]).view(1, 1, 1, 4).expand(1, 3, 299, 4).repeat(1, 1, 1, 75)[..., :299]
    x = net.preprocess(ends)
    assert x.shape == (1, 3, 299, 299)
    assert x[0, 0, 0, :4].tolist() == [lo, lo, hi, hi]  # 299 px: no resize, no 8-bit rounding
    # Other sizes are rounded to 8-bit levels, then resized: a flat image stays flat.
    flat = net.preprocess(torch.full((2, 3, 64, 80), 0.3))
    level = round(0.65 * 255) / 255
    assert flat.shape == (2, 3, 299, 299)
    torch.testing.assert_close(flat, torch.full_like(flat, level * (hi - lo) + lo))


def test_resize_is_tf1_legacy_bilinear():
    # Output j samples input j * n_in / n_out, clamped at the border (no half-pixel centres).
    torch.testing.assert_close(legacy_bilinear_matrix(2, 4, dtype=torch.float64),
                               torch.tensor([[1, 0], [0.5, 0.5], [0, 1], [0, 1]], dtype=torch.float64))
    torch.testing.assert_close(legacy_bilinear_matrix(4, 2, dtype=torch.float64),
                               torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float64))
    assert torch.equal(legacy_bilinear_matrix(5, 5), torch.eye(5))


@pytest.mark.slow
def test_features_of_batches_mixed_inputs(net, photos):
    x = torch.from_numpy(photos[:3]).permute(0, 3, 1, 2).float() / 127.5 - 1
    whole = net.features_of(x, batch_size=2)
    mixed = net.features_of([photos[0], x[1], photos[2:3]], batch_size=2)
    assert whole.shape == (3, 2048) and whole.dtype == np.float64
    np.testing.assert_allclose(mixed, whole, atol=1e-4)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, abs=1e-12)
    # Diagonal and, rotated into a shared eigenbasis, commuting: sum of (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 5 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, abs=1e-10)
    # Non-commuting 2x2: M = S1 S2 has tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1, s2 = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    expected = np.trace(s1 + s2) - 2 * np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [200, 9])  # full rank, and singular (fewer samples than dimensions)
def test_frechet_distance_matches_scipy_sqrtm(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 16)) @ rng.normal(size=(16, 16)), rng.normal(1, 2, size=(n, 16))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    mu1, mu2 = x.mean(0), y.mean(0)
    root = scipy.linalg.sqrtm(s1 @ s2)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7)
    # from features: n = 9 < 16 factors sigma by the centred samples themselves, n = 200 by eigh
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    assert a.fid(b) == pytest.approx(reference, rel=1e-7) and abs(a.fid(a)) < 1e-9
    assert a.fid(FeatureStats(a.mu, a.sigma, a.n)) == pytest.approx(0, abs=1e-7)  # the two factors agree


def test_official_guides_feature_npy_gives_its_statistics(tmp_path):
    """ΔFID_real's reference as the official GUIDE ships it: an .npy of [N, 2048] Inception features."""
    feats = np.random.default_rng(0).normal(size=(40, 2048)).astype(np.float32)
    np.save(tmp_path / "ffhq_real_feat.npy", feats)
    loaded = FeatureStats.load(tmp_path / "ffhq_real_feat.npy")
    assert loaded.n == 40
    np.testing.assert_allclose(loaded.mu, feats.astype(np.float64).mean(0))
    np.testing.assert_allclose(loaded.sigma, np.cov(feats.astype(np.float64), rowvar=False), atol=1e-12)
    np.save(tmp_path / "wrong.npy", feats[:, :100])
    with pytest.raises(ValueError, match=r"wrong.npy: not Inception features .*\[40, 100\]"):
        FeatureStats.load(tmp_path / "wrong.npy")


def test_the_fid_floor_is_two_sets_of_one_generator_and_is_cached(tmp_path, monkeypatch):
    """The floor: FID between two disjoint same-N sets of G_s samples, > 0 at small N; an unchanged
    generator's FID_pre (the same latents) lies within it, a wrecked one's far above; the sets are
    computed once per machine (a second Networks reads them from the cache, no Inception call)."""
    import copy

    from guide_ray.config import load_config
    from guide_ray.core import evaluate
    from guide_ray.models import load_generator
    from guide_ray.run import networks

    require_weights("dcgan-digiface64", "fid-inception", "stlpips-vgg", "dlib-resnet34", "facenet-vggface2")
    g_s = load_generator("dcgan-digiface64", "cpu")
    fingerprint, n, seed = evaluate.generator_fingerprint(g_s), 24, 123
    nets, again = networks.Networks(load_config(), "cpu"), networks.Networks(load_config(), "cpu")
    again._inception = nets.inception
    monkeypatch.setattr(networks.weights, "cache_dir", lambda: tmp_path)  # the weights are loaded: only the sets go there
    before = nets.pretrained_stats(g_s, fingerprint, n, seed, 8)
    floor = before.fid(nets.pretrained_stats(g_s, fingerprint, n, evaluate.floor_seed(seed), 8))
    assert floor > 0 and evaluate.floor_seed(seed) != seed
    unchanged = evaluate.fid_scores(g_s, copy.deepcopy(g_s), nets.inception, n, seed, 8, g_s_stats=before).fid_pre
    assert unchanged <= floor
    wrecked = copy.deepcopy(g_s)
    with torch.no_grad():
        for p in wrecked.synthesis_net.parameters():
            p.add_(torch.randn_like(p) * p.std() * 0.5)
    assert evaluate.fid_scores(g_s, wrecked, nets.inception, n, seed, 8, g_s_stats=before).fid_pre > 1.5 * floor
    assert len(list((tmp_path / "fid-features").glob("*.npy"))) == 2

    def no_inception(*args, **kwargs):
        raise AssertionError("the cached sets were computed again")

    monkeypatch.setattr(evaluate, "generator_features", no_inception)
    assert again.pretrained_stats(g_s, fingerprint, n, seed, 8).fid(
        again.pretrained_stats(g_s, fingerprint, n, evaluate.floor_seed(seed), 8)) == pytest.approx(floor)
