"""GUIDE's equations and the LTU loop on tiny models, against hand-computed values."""

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from guide_ray.config import ConfigError, GuideConfig, config_hash, load_config
from guide_ray.core.losses import adjacent_deltas
from guide_ray.core.ltu import LatentSampler, Problem, select_trainable, unlearn
from guide_ray.core.ufo import SHRINK_FACTOR, SHRINK_STEPS, distance_scale, face_target, typical_distance, ufo_target
from tests.tiny import TinyGenerator, TinyIdentity, TinyPerceptual


def test_eq3_ufo_target_by_hand():
    w_avg = torch.tensor([1.0, 0.0])
    w_u = torch.tensor([[[4.0, 4.0], [1.0, 0.0]]])  # w_id = [[3, 4], [0, 0]]: whole-tensor norm 5
    w_t = ufo_target(w_u, w_avg, d=10.0)
    torch.testing.assert_close(w_t, torch.tensor([[[1 - 6.0, -8.0], [1.0, 0.0]]]))
    torch.testing.assert_close(ufo_target(w_u, w_avg, 0.0), w_avg.expand_as(w_u))  # d = 0: the average
    half = ufo_target(w_u, w_avg, -2.5)  # d < 0 interpolates: halfway to w_u
    torch.testing.assert_close(half, torch.tensor([[[2.5, 2.0], [1.0, 0.0]]]))


def test_eq3_norm_is_over_the_whole_latent_not_per_layer():
    w_avg = torch.zeros(2)
    w_u = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # per-layer norms 3 and 4, whole norm 5
    w_t = ufo_target(w_u, w_avg, 5.0)
    torch.testing.assert_close(w_t, -w_u)


def test_w_geometry_extrapolates_only_the_w_part_of_a_w_plus_latent():
    w_avg = torch.zeros(2)
    w_u = torch.tensor([[[3.0, 1.0], [1.0, -1.0]]])  # W part (mean over layers) [2, 0]; per-layer deviations ±[1, 1]
    w_t = ufo_target(w_u, w_avg, 2 * math.sqrt(2), "w")  # whole norm of the repeated W part: 2 sqrt(2)
    torch.testing.assert_close(w_t, torch.tensor([[[-2.0, 0.0], [-2.0, 0.0]]]))  # a W latent: every layer equal
    w = torch.tensor([[[3.0, 1.0], [3.0, 1.0]]])  # a W latent: "w" is Eq. 3 as written
    torch.testing.assert_close(ufo_target(w, w_avg, 1.5, "w"), ufo_target(w, w_avg, 1.5, "w+"))


def test_sphere_geometry_by_hand_stays_on_the_shell_and_moves_away_from_the_source():
    w_avg = torch.tensor([2.0, 0.0])
    w_u = torch.tensor([[[2.0, 2.0]]])  # w_id = [0, 2], orthogonal to w_avg: the great circle leads to -y
    quarter = ufo_target(w_u, w_avg, 2 * math.sqrt(2), "sphere")  # chord r*sqrt(2): a quarter turn
    torch.testing.assert_close(quarter, torch.tensor([[[0.0, -2.0]]]))
    torch.testing.assert_close(ufo_target(w_u, w_avg, 0.0, "sphere"), w_avg.expand_as(w_u))
    torch.testing.assert_close(ufo_target(w_u, w_avg, 10.0, "sphere"), -w_avg.expand_as(w_u))  # capped at the antipode
    torch.manual_seed(0)
    w_avg = torch.randn(100)
    w_u = torch.randn(4, 1, 100) * 1.3
    for d in (1.0, 5.0, 11.4):
        w_t = ufo_target(w_u, w_avg, d, "sphere")
        torch.testing.assert_close(w_t.flatten(1).norm(dim=1), w_avg.norm().expand(4))  # on the shell
        torch.testing.assert_close((w_t - w_avg).flatten(1).norm(dim=1), torch.full((4,), d))  # chord d
        away = F.cosine_similarity((w_t - w_avg).flatten(1), (w_u - w_avg).flatten(1))
        assert (away < 0).all()
    with pytest.raises(ValueError, match="geometry must be one of"):
        ufo_target(w_u, w_avg, 1.0, "flat")


def test_a_target_that_is_no_face_shrinks_d_until_it_is():
    w_avg = torch.zeros(3)
    w_u = torch.tensor([[[4.0, 0.0, 0.0]]])
    far = lambda w_t: 1.0 if float(w_t.norm()) <= 3.0 else 0.0  # "a face" within distance 3 of the average
    target = face_target(w_u, w_avg, 5.0, "w+", far, threshold=0.5)
    expected = 5.0 * SHRINK_FACTOR ** 2  # 5 -> 3.75 -> 2.81: the first within 3
    assert (target.d, target.tries, target.face_score) == (pytest.approx(expected), 3, 1.0)
    torch.testing.assert_close(target.w_t, ufo_target(w_u, w_avg, expected, "w+"))
    nowhere = face_target(w_u, w_avg, 5.0, "w+", lambda w_t: 0.0, threshold=0.5)
    assert nowhere.d == 0.0 and nowhere.tries == SHRINK_STEPS + 2 and nowhere.face_score == 0.0
    unchecked = face_target(w_u, w_avg, 5.0, "w+", None, threshold=0.5)
    assert unchecked.d == 5.0 and unchecked.face_score is None and unchecked.tries == 0

    def broken(w_t):
        raise RuntimeError("no detector")

    failed = face_target(w_u, w_avg, 5.0, "w+", broken, threshold=0.5)  # kept at d, unchecked, and said so
    assert failed.d == 5.0 and failed.face_score is None and failed.error == "RuntimeError: no detector"


def test_the_problem_checks_its_target_with_the_frozen_generator():
    cfg = load_config(overrides=["distance_units=absolute", "d=2.0", "latent_pool=4"])
    g = TinyGenerator()
    w_u = g.mapping(g.z_from_seed(1))
    seen = []

    class Faces:
        threshold = 0.5

        def __call__(self, images):
            seen.append(images)
            return torch.tensor([0.0 if len(seen) == 1 else 1.0])  # the first target is no face

    problem = Problem(g, w_u, cfg, TinyIdentity(), TinyPerceptual(), Faces())
    assert problem.target.d == pytest.approx(2.0 * SHRINK_FACTOR) and problem.target.tries == 2
    torch.testing.assert_close(seen[-1], problem.g_s.synthesis(problem.w_t))
    off = load_config(overrides=["distance_units=absolute", "d=2.0", "latent_pool=4", "target_face_check=false"])
    assert Problem(g, w_u, off, TinyIdentity(), TinyPerceptual(), Faces()).target.d == 2.0


def test_eq5_adjacent_deltas_by_hand():
    w_u = torch.tensor([[[0.0, 0.0]]])
    w_r = torch.tensor([[[3.0, 4.0]], [[0.0, -2.0]]])
    deltas = adjacent_deltas(w_u, w_r, torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(deltas, torch.tensor([[[6.0, 8.0]], [[0.0, -1.0]]]))


def test_sampler_alpha_is_uniform_up_to_alpha_max_and_the_pools_are_their_own_draws():
    g = TinyGenerator()
    w_u = g.mapping(g.z_from_seed(0))
    sampler = LatentSampler(g, w_u, n_adj=2, n_global=2, alpha_max=3.0, pool=500, seed=0)
    # Eq. 5's |delta| is alpha: uniform on [0, alpha_max] (Kolmogorov-Smirnov against U(0, 3))
    norms = sampler.pool_deltas.flatten(1).norm(dim=1)
    assert scipy.stats.kstest(norms.numpy() / 3.0, "uniform").pvalue > 0.01
    assert scipy.stats.kstest(norms.numpy() / 2.0, "uniform").pvalue < 1e-6  # the test tells another range
    # the neighbours' w_r and the global latents are separate draws of the seeded generator, in that order
    with torch.no_grad():
        rng = torch.Generator().manual_seed(0)
        w_r = g.mapping(torch.randn(500, g.z_dim, generator=rng))
        alpha = torch.rand(500, generator=rng) * 3.0
        w_global = g.mapping(torch.randn(500, g.z_dim, generator=rng))
    torch.testing.assert_close(sampler.pool_deltas, adjacent_deltas(w_u, w_r, alpha))
    torch.testing.assert_close(sampler.pool_global, w_global)
    draw = sampler.draw()
    assert draw.deltas.shape == (2, 2, 6) and draw.w_global.shape == (2, 2, 6)


@pytest.fixture
def problem_parts():
    cfg = load_config(overrides=["distance_units=absolute", "d=2.0", "alpha_max=1.0", "latent_pool=8",
                                 "lambda_l2=0.5", "lambda_per=2.0", "lambda_id=0.3", "lambda_adj=0.7", "lambda_global=1.5"])
    g = TinyGenerator()
    w_u = g.mapping(g.z_from_seed(1))
    return cfg, g, w_u, TinyIdentity(), TinyPerceptual()


def test_loss_composition_by_hand(problem_parts):
    """Eq. 4, 7, 8, 9 recomputed from the formulas on the same draws."""
    cfg, g, w_u, ident, per = problem_parts
    select_trainable(g, cfg.trainable)
    problem = Problem(g, w_u, cfg, ident, per)
    draw = problem.sampler.draw()
    got = problem.step_optimised(draw)

    w_t = problem.w_t
    torch.testing.assert_close(w_t, ufo_target(w_u, g.w_avg, 2.0))
    g_s = problem.g_s

    def local(ws_u, ws_t):
        a, b = g.synthesis(ws_u), g_s.synthesis(ws_t)
        l2 = F.mse_loss(a, b)
        p = per(a, b).mean()
        i = 1 - F.cosine_similarity(ident.embed_generated(a), ident.embed_generated(b)).mean()
        return 0.5 * l2 + 2.0 * p + 0.3 * i, (l2, p, i)

    l_local, (l2, p, i) = local(w_u, w_t)
    l_adj = sum(local(w_u + d[None], w_t + d[None])[0] for d in draw.deltas) / len(draw.deltas)
    l_glob = sum(per(g.synthesis(w[None]), g_s.synthesis(w[None])).mean() for w in draw.w_global) / len(draw.w_global)
    expected = l_local + 0.7 * l_adj + 1.5 * l_glob
    torch.testing.assert_close(got["total"], expected)
    for key, value in (("l2", l2), ("per", p), ("id", i), ("local", l_local)):
        torch.testing.assert_close(got[key].squeeze(), value)
    assert float(l_glob.detach()) == 0.0  # G_u = G_s before the first update


def test_straightforward_and_optimised_loops_agree(problem_parts):
    cfg, g, w_u, ident, per = problem_parts
    select_trainable(g, cfg.trainable)
    problem = Problem(g, w_u, cfg, ident, per)
    with torch.no_grad():  # move G_u away from G_s so that every term is non-zero
        for p in g.synthesis_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draw = problem.sampler.draw()
    a, b = problem.step_optimised(draw), problem.step_straightforward(draw)
    assert a.keys() == b.keys() and float(a["global"].detach().mean()) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bf16_perceptual_agrees_with_fp32_and_really_runs_in_bf16(problem_parts, monkeypatch):
    """perceptual_precision=bf16: the same step's losses and gradients as fp32 within bf16's rounding,
    and the perceptual convolutions do run in bfloat16 (autocast is on), in float32 without."""
    import dataclasses

    cfg, g, w_u, ident, per = problem_parts
    seen = []
    forward = per.conv.forward
    def recorded(x):
        y = forward(x)
        seen.append(y.dtype)  # autocast casts inside the convolution: its output says which precision ran
        return y

    monkeypatch.setattr(per.conv, "forward", recorded)

    def step(precision):
        generator = TinyGenerator()
        params = select_trainable(generator, cfg.trainable)
        problem = Problem(generator, w_u, dataclasses.replace(cfg, perceptual_precision=precision), ident, per)
        with torch.no_grad():  # every term non-zero, the same perturbation for both
            torch.manual_seed(3)
            for _, p in params:
                p.add_(0.05 * torch.randn_like(p))
        seen.clear()
        losses = problem.step_optimised(problem.sampler.draw())
        losses["total"].backward()
        return losses.floats(), torch.cat([p.grad.flatten() for _, p in params]), set(seen)

    fp32, grad32, dtypes32 = step("fp32")
    bf16, grad16, dtypes16 = step("bf16")
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}
    assert fp32["global"] > 0
    for key in fp32:
        assert bf16[key] == pytest.approx(fp32[key], rel=3e-2, abs=1e-3), key
    assert F.cosine_similarity(grad32, grad16, dim=0) > 0.99


def test_rehearsal_is_eq4_between_g_u_and_g_s_of_earlier_identities_in_both_loops(problem_parts):
    cfg, g, w_u, ident, per = problem_parts
    cfg.rehearsal, cfg.rehearse_per_step = 0.4, 2
    earlier = torch.cat([g.mapping(g.z_from_seed(s)) for s in (5, 6, 7)])
    select_trainable(g, cfg.trainable)
    problem = Problem(g, w_u, cfg, ident, per, rehearse=earlier)
    with torch.no_grad():
        for p in g.synthesis_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draw = problem.sampler.draw()
    a, b = problem.step_optimised(draw), problem.step_straightforward(draw)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    chosen = earlier[draw.rehearse_index]
    assert len(chosen) == 2
    with torch.no_grad():
        x, y = g.synthesis(chosen), problem.g_s.synthesis(chosen)
        eq4 = (0.5 * (x - y).square().flatten(1).mean(1) + 2.0 * per(x, y)
               + 0.3 * (1 - F.cosine_similarity(ident.embed_generated(x), ident.embed_generated(y))))
    torch.testing.assert_close(a["rehearse"].detach(), eq4)
    without = {k: v for k, v in a.items() if k not in ("rehearse", "total")}
    torch.testing.assert_close(a["total"], problem.total(without) + 0.4 * eq4.mean())


def test_rehearsal_holds_earlier_identities_to_their_faces(problem_parts):
    """Unlearning one identity with and without rehearsing three others: with it, their images move less."""
    cfg, _, w_u, ident, per = problem_parts
    cfg.iterations, cfg.lr, cfg.rehearse_per_step = 60, 3e-3, 3
    g0 = TinyGenerator()
    earlier = torch.cat([g0.mapping(g0.z_from_seed(s)) for s in (5, 6, 7)])

    def drift(rehearsal):
        cfg.rehearsal = rehearsal
        g = TinyGenerator()
        result = unlearn(g, w_u, cfg, ident, per, rehearse=earlier)
        with torch.no_grad():
            return float((g.synthesis(earlier) - result.g_s.synthesis(earlier)).square().mean())

    free, held = drift(0.0), drift(5.0)
    assert held < 0.5 * free, (held, free)


@pytest.mark.parametrize("preset,keys", [("baseline", {"l2", "per", "id", "local", "total"}),
                                         ("adjacency", {"l2", "per", "id", "local", "adj", "total"})])
def test_presets_switch_terms(preset, keys):
    cfg = load_config(preset=preset, overrides=["latent_pool=4"])
    g = TinyGenerator()
    w_u = g.mapping(g.z_from_seed(1))
    problem = Problem(g, w_u, cfg, TinyIdentity(), TinyPerceptual())
    assert set(problem.step_optimised(problem.sampler.draw())) == keys
    if preset == "baseline":
        torch.testing.assert_close(problem.w_t, g.w_avg.expand_as(w_u))


def test_only_the_chosen_parameters_change(problem_parts):
    cfg, g, w_u, ident, per = problem_parts
    cfg.iterations, cfg.lr, cfg.trainable = 5, 1e-2, r"synthesis_net\.1\.weight"
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    result = unlearn(g, w_u, cfg, ident, per)
    assert result.trainable == ["synthesis_net.1.weight"]
    for name, p in g.named_parameters():
        assert torch.equal(p, before[name]) == (name != "synthesis_net.1.weight"), name
    for name, p in result.g_s.named_parameters():  # the frozen copy is the original
        assert torch.equal(p, before[name])
    with pytest.raises(ValueError, match="matches no parameter"):
        unlearn(g, w_u, GuideConfig(trainable="nothing_like_this"), ident, per)


def test_unlearning_moves_g_u_of_w_u_to_the_target(problem_parts):
    cfg, g, w_u, ident, per = problem_parts
    cfg.iterations, cfg.lr = 150, 3e-3
    result = unlearn(g, w_u, cfg, ident, per)
    with torch.no_grad():
        before = F.mse_loss(result.g_s.synthesis(w_u), result.g_s.synthesis(result.w_t))
        after = F.mse_loss(g.synthesis(w_u), result.g_s.synthesis(result.w_t))
    assert after < 0.2 * before
    assert result.history[-1]["total"] < 0.5 * result.history[0]["total"]


def test_resume_continues_exactly(problem_parts):
    cfg, _, w_u, ident, per = problem_parts
    cfg.iterations, cfg.checkpoint_every, cfg.lr = 6, 3, 1e-2
    states = []
    straight = TinyGenerator()
    unlearn(straight, w_u, cfg, ident, per, on_checkpoint=lambda s: states.append(s))
    assert [s["step"] for s in states] == [3, 6, 6]
    resumed = TinyGenerator()
    result = unlearn(resumed, w_u, cfg, ident, per, resume=states[0])
    assert result.steps == 6 and result.resumed_from == 3
    assert len(result.history) == 6 and result.history[:3] == states[0]["history"]  # the whole run's losses
    assert result.seconds > states[0]["seconds"] > 0
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=n)


def test_non_finite_loss_stops_and_keeps_the_last_good_weights(problem_parts):
    cfg, g, w_u, ident, per = problem_parts
    cfg.iterations, cfg.checkpoint_every, cfg.lr = 10, 2, 1e-2

    class Poisoned(TinyPerceptual):
        calls = 0

        def distance(self, fa, fb):
            Poisoned.calls += 1
            d = super().distance(fa, fb)
            return d * math.nan if Poisoned.calls > 5 else d

    states = []
    result = unlearn(g, w_u, cfg, ident, Poisoned(), on_checkpoint=states.append)
    # distance() runs twice a step (unlearning pairs, global pairs): its 6th call is in step 2
    assert result.status == "diverged" and "nan at step 2" in result.message and "weights of step 2" in result.message
    assert states[-1]["step"] == 2
    for name, p in g.named_parameters():
        if name in result.trainable:
            torch.testing.assert_close(p, states[-1]["trainable"][name])


def test_distances_scale_with_the_generator():
    g = TinyGenerator()
    assert distance_scale(g, "absolute") == 1.0
    expected = typical_distance(g) / (9.84 * math.sqrt(14))
    assert distance_scale(g, "eg3d") == pytest.approx(expected)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lamda_id'"):
        load_config(overrides=["lamda_id=0.1"])
    with pytest.raises(ConfigError, match="iterations: expected an integer"):
        load_config(overrides=["iterations=many"])
    with pytest.raises(ConfigError, match="target: 'far' is not one of"):
        load_config(overrides=["target=far"])
    with pytest.raises(ConfigError, match="unknown config key 'inversion.stepz'"):
        load_config(overrides=["inversion.stepz=3"])
    with pytest.raises(ConfigError, match="lambda_id must be >= 0"):
        load_config(overrides=["lambda_id=-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2]\n")
    with pytest.raises(ConfigError, match="lr: expected a number"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("d: 20\ninversion:\n  steps: 50\n")
    cfg = load_config(good, ["lr=2e-4"])
    assert (cfg.d, cfg.inversion.steps, cfg.lr) == (20.0, 50, 2e-4)
    assert config_hash(cfg) != config_hash(GuideConfig()) and config_hash(cfg) == config_hash(load_config(good, ["lr=2e-4"]))


def test_the_run_hash_holds_the_settings_that_change_the_result_only(monkeypatch):
    """config_hash: a new field with a default leaves an existing config's hash (and so a fleet's
    resume) as it was, setting it changes the hash, checkpointing more often does not; the defaults
    are those this HASH_VERSION hashed against (a changed default must bump it)."""
    import dataclasses
    import json
    from pathlib import Path

    from guide_ray import config as config_module

    preset = load_config("jobs/configs/mobilestylegan-cpu.yaml")
    before = config_hash(preset)
    assert config_hash(dataclasses.replace(preset, checkpoint_every=7)) == before
    assert config_hash(dataclasses.replace(preset, lr=preset.lr * 2)) != before
    extended = dataclasses.make_dataclass("Extended", [("new_knob", float, dataclasses.field(default=0.5))],
                                          bases=(GuideConfig,))
    monkeypatch.setattr(config_module, "GuideConfig", extended)
    as_extended = extended(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(GuideConfig)})
    assert config_hash(as_extended) == before
    assert config_hash(dataclasses.replace(as_extended, new_knob=0.7)) != before
    monkeypatch.undo()
    pinned = json.loads(Path(f"tests/oracles/config_defaults_v{config_module.HASH_VERSION}.json").read_text())
    now = dict(config_module._flatten(config_module.to_dict(GuideConfig())))
    assert {k: now.get(k) for k in pinned} == pinned, "a default changed: bump config.HASH_VERSION"
