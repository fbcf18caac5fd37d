"""A sweep trial: one configuration on every identity of the sweep, advanced together and reported
to Tune every ``report_every`` iterations, evaluated in full at the end."""

from __future__ import annotations

import time

from .spec import Sweep


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_trial(params: dict, *, sweep: Sweep, identities: list, sources: dict) -> None:
    """One configuration on every identity; reports every ``report_every`` iterations, then in full."""
    import ray
    import torch
    from ray import tune

    from ..core.evaluate import evaluate_run, identity_similarity
    from ..core.ltu import Unlearning
    from ..run.identity import inversion_view, training_view
    from ..run.networks import Networks
    from ..core.verdict import judge
    from ..models import load_generator

    started_at = time.time()
    cpus = int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)) or 1
    torch.set_num_threads(max(1, cpus))
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    cfg = sweep.config(params)
    nets = Networks(cfg, device)
    runs = []
    for spec in identities:
        src = sources[spec.id].to(device)
        generator = training_view(load_generator(sweep.generator, device), cfg)  # ASHA's progress at its resolution
        runs.append((spec.id, src, Unlearning(generator, src.w_u, cfg, nets.id_loss, nets.perceptual,
                                              face_check=nets.faces)))
    g_s, terms = runs[0][2].problem.g_s, runs[0][2].problem.terms
    with torch.no_grad():  # the preservation proxy's latents and their frozen perceptual features
        rng = torch.Generator().manual_seed(cfg.evaluation.fid_seed + 1)
        proxy_ws = g_s.mapping(torch.randn(sweep.proxy_samples, g_s.z_dim, generator=rng).to(g_s.device))
        proxy_before = terms.perceptual_features(g_s.synthesis(proxy_ws))

    def progress(step: int) -> dict:
        with torch.no_grad():  # an identity whose G_u(w_u) is no longer a face counts as not forgotten (1)
            ids = [float(identity_similarity(nets.id_metric, run.problem.g_s, run.generator, src.w_u,
                                             cfg.evaluation.id_views)[0])
                   if nets.faces.is_face(float(nets.faces(run.generator.synthesis(src.w_u))[0])) else 1.0
                   for _, src, run in runs]
            drift = [float(terms.perceptual_distance(terms.perceptual_features(run.generator.synthesis(proxy_ws)),
                                                     proxy_before).mean()) for _, _, run in runs]
        id_now, drift_now = sum(ids) / len(ids), sum(drift) / len(drift)
        return {"step": step, "id_now": id_now, "drift": drift_now,
                "progress_score": id_now + sweep.drift_weight * drift_now, "started_at": started_at}

    blocks = list(range(sweep.report_every, cfg.iterations, sweep.report_every)) + [cfg.iterations]
    for until in blocks[:-1]:
        for _, _, run in runs:
            run.advance(until)
        tune.report(progress(until))
    final = {}
    diverged = erased = 0
    unlearning, fids, id_values, other_values = [], [], [], []
    for (ident, src, run), spec in zip(runs, identities):
        run.advance(cfg.iterations)
        ltu = run.finish()
        diverged += ltu.status == "diverged"
        photo = spec.image is not None
        m = evaluate_run(ltu.g_s.full, run.generator.full, src.w_u, ltu.w_t, src.w_others, src.source_image, cfg,
                         nets, photo, g_u_fit=inversion_view(run.generator.full, cfg))
        verdict = judge(m, photo, nets.thresholds).verdict
        erased += verdict == "erased"
        id_values.append(m["id"])
        if "id_others" in m:
            other_values.append(m["id_others"])
        unlearning.append(unlearning_of(m, verdict))
        fids.append(m["fid_pre"])
        final.update({f"id_{ident}": m["id"], f"fid_pre_{ident}": m["fid_pre"], f"face_kept_{ident}": m["face_kept"],
                      f"verdict_{ident}": verdict})
    objectives = {"unlearning": _mean(unlearning), "preservation": _mean(fids)}
    objectives["score"] = objectives["unlearning"] + sweep.fid_weight * objectives["preservation"]
    tune.report({**progress(cfg.iterations), **final, **objectives, "id": _mean(id_values),
                 "id_others": _mean(other_values), "fid_pre": _mean(fids), "diverged": diverged,
                 "erased": erased, "identities": len(runs), "seconds": time.time() - started_at})


def unlearning_of(metrics: dict, verdict: str) -> float:
    """One identity's share of the unlearning objective: mean(ID, ID_others) (ID for a seed) when it
    was erased, 1 (the worst a cosine similarity can be for this purpose) when it was not."""
    if verdict != "erased":
        return 1.0
    return (metrics["id"] + metrics["id_others"]) / 2 if "id_others" in metrics else metrics["id"]


def invert_all(sweep: Sweep, identities: list) -> dict:
    """Each identity's latents in G_s (photos inverted once, shared by every trial)."""
    from ..run.identity import invert_identity
    from ..run.networks import Networks
    from ..models import load_generator

    cfg = sweep.config()
    generator = load_generator(sweep.generator)
    nets = Networks(cfg, generator.device)
    return {spec.id: invert_identity(generator, spec, cfg, nets, show_progress=False).to("cpu") for spec in identities}
