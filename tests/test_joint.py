"""Joint unlearning (core/joint.py) on tiny models: Eq. 9 averaged over identities, the schedule and
the ranks' shares, global latents outside every neighbourhood, distinct targets, and DDP on 2 CPU
processes giving the one-process parameters."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from guide_ray.config import GuideConfig
from guide_ray.core.joint import JointProblem, JointUnlearning, batch_of, distinct_targets
from guide_ray.core.losses import total_loss
from guide_ray.core.ufo import FaceTarget
from tests.helpers import free_port
from tests.tiny import TinyGenerator, TinyIdentity, TinyPerceptual

CFG = dict(latent_pool=6, n_adj=2, n_global=2, distance_units="absolute", d=2.0, alpha_max=1.0, lr=1e-2,
           iterations=4, checkpoint_every=2)


def sources(g, n: int) -> list[torch.Tensor]:
    with torch.no_grad():
        return [g.mapping(torch.randn(1, g.z_dim, generator=torch.Generator().manual_seed(100 + i))) for i in range(n)]


def test_the_schedule_is_round_robin_and_the_ranks_share_each_batch():
    assert [batch_of(s, 5, 2) for s in range(4)] == [[0, 1], [2, 3], [4, 0], [1, 2]]
    g = TinyGenerator()
    w_us = sources(g, 4)
    cfg = GuideConfig(**CFG)
    whole = JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=4)
    halves = [JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=4, rank=r, world=2)
              for r in (0, 1)]
    for step in range(3):
        ids, glob = whole.share(step)
        parts = [h.share(step) for h in halves]
        assert sorted(parts[0][0] + parts[1][0]) == sorted(ids)
        assert sorted(torch.cat([p[1] for p in parts]).tolist()) == sorted(glob.tolist())
    with pytest.raises(ValueError, match="multiples of the 2 workers"):
        JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=3, rank=0, world=2)
    with pytest.raises(ValueError, match="identities_per_step must be in 1..4"):
        JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=5)


def test_one_identity_is_eq9_and_many_average_it():
    """N = 1: the step's loss is Eq. 9 of the identity's own pairs; N = 3 all in one step: the mean of
    the three identities' (L_local + λ_adj L_adj), plus λ_global L_global over the step's global latents."""
    g = TinyGenerator()
    w_us = sources(g, 3)
    cfg = GuideConfig(**CFG, lambda_adj=0.5, lambda_global=2.0)
    joint = JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=3)
    losses = joint(0)
    local, adj = losses["local"], losses["adj"].view(3, 2)
    expected = (local + 0.5 * adj.mean(1)).mean() + 2.0 * losses["global"].mean()
    torch.testing.assert_close(losses["total"], expected)
    single = JointProblem(g, w_us[:1], cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=1)
    one = single(0)
    torch.testing.assert_close(one["total"], total_loss(one["local"], one["adj"], one["global"], cfg))
    # the terms are the pairs they name: the local pair is G_u(w_u) against the frozen G_s(w_t)
    with torch.no_grad():
        image_u, image_t = g.synthesis(w_us[0]), single.g_s.synthesis(single.targets[0].w_t)
    per = TinyPerceptual()(image_u, image_t)
    torch.testing.assert_close(one["per"], per)


def test_global_latents_stay_out_of_every_identitys_neighbourhood():
    g = TinyGenerator()
    w_us = sources(g, 4)
    cfg = GuideConfig(**{**CFG, "alpha_max": 1.5, "latent_pool": 16})
    joint = JointProblem(g, w_us, cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=2)
    gaps = torch.cdist(joint.global_pool.flatten(1), torch.cat(w_us).flatten(1))
    assert len(joint.global_pool) == 16 and (gaps > 1.5).all()
    # with nothing far enough, the pool cannot be filled: an error, not neighbours passed off as global
    with pytest.raises(ValueError, match="outside every identity's neighbourhood"):
        JointProblem(g, w_us, GuideConfig(**{**CFG, "alpha_max": 1e3}), TinyIdentity(), TinyPerceptual(),
                     identities_per_step=2)


def test_targets_of_one_person_are_reaimed_apart():
    """Two identities whose targets are one person (here: the same latent) get targets that are not."""
    embed = lambda w: w.flatten(1)[:, :3]  # noqa: E731 - an 'identity' that reads the latent
    same = torch.tensor([[[1.0, 0.0, 0.0]]])
    other = torch.tensor([[[0.0, 1.0, 0.0]]])
    targets = [FaceTarget(same, "w", 1.0, None, 0), FaceTarget(same.clone(), "w", 1.0, None, 0)]
    calls = []

    def reaim(j, clash):
        calls.append((j, clash))
        return FaceTarget(other, "w", 1.0, None, 0)

    fixed, clashes = distinct_targets(targets, embed, 0.5, reaim)
    assert calls == [(1, [0])] and clashes == [[], []] and torch.equal(fixed[1].w_t, other)
    stuck, clashes = distinct_targets(targets, embed, 0.5, lambda j, clash: FaceTarget(same, "w", 1.0, None, 0))
    assert clashes == [[], [0]]  # re-aiming did not help: recorded, not hidden
    # on the tiny generator, twice the same source: the second target is made orthogonal, a different image
    g = TinyGenerator()
    w = sources(g, 1)[0]
    ident = TinyIdentity()
    joint = JointProblem(g, [w, w.clone()], GuideConfig(**CFG), ident, TinyPerceptual(), identities_per_step=2,
                         distinct=(ident.embed_generated, 0.99))
    a, b = (torch.nn.functional.normalize(ident.embed_generated(joint.g_s.synthesis(t.w_t)), dim=-1)
            for t in joint.targets)
    assert float((a * b).sum()) < 0.99 and joint.clashes == [[], []]


def _train(rank: int, world: int, port: int, steps: int, queue) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    g = TinyGenerator()
    cfg = GuideConfig(**{**CFG, "iterations": steps, "n_global": 2})
    run = JointUnlearning(g, sources(g, 4), cfg, TinyIdentity(), TinyPerceptual(), identities_per_step=4,
                          rank=rank, world=world, wrap=DistributedDataParallel if world > 1 else (lambda m: m))
    run.advance(steps)
    if rank == 0:
        queue.put({n: p.detach().numpy().copy() for n, p in g.named_parameters()})  # numpy: pickled whole
    if world > 1:
        dist.destroy_process_group()


def test_two_ddp_workers_give_the_parameters_of_one_on_the_same_batches():
    """Each of 2 gloo workers computes half of every step (2 of the 4 identities, 1 of the 2 global
    latents); DDP's gradient average is then the one-worker gradient, and the weights agree."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    one = ctx.Process(target=_train, args=(0, 1, 0, 5, queue))
    one.start()
    alone = queue.get(timeout=120)
    one.join()
    port = free_port()
    workers = [ctx.Process(target=_train, args=(r, 2, port, 5, queue)) for r in (0, 1)]
    for w in workers:
        w.start()
    together = queue.get(timeout=120)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    start = {n: p.detach().numpy() for n, p in TinyGenerator().named_parameters()}
    moved = [n for n in alone if not np.array_equal(alone[n], start[n])]
    assert moved  # the synthesis layers trained
    for name in alone:
        np.testing.assert_allclose(together[name], alone[name], rtol=1e-5, atol=1e-6, err_msg=name)
