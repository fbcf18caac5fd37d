"""An erasure audit of one run folder: core.audit's attacks on G_u and, the same way, on G_s.

Reads RUN_DIR (result.json, latents.pt, the checkpoint result.json names) and writes only to the
audit folder: audit.json (every attack's numbers, G_u beside G_s, the calibrated levels and the
outcome), audit.html (one page: per attack the photo, the best attacked images, the IDs) and those
images as PNGs in images/.

Outcome of an attack on G_u: ``recovered`` when its ID reaches the same-person level (a stranger
reaches it at most 1% of the time: run.calibration), ``resisted`` below the different-person level,
``ambiguous`` between. The identity is ``recoverable`` when an attack recovers it; it ``survives``
only when every attack resisted AND G_u still draws faces (a generator that draws nothing would
resist every attack); else ``ambiguous`` (or ``not_audited`` when the run's own verdict was not
``erased``: there was no erasure to attack).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..config import AuditConfig
from ..core import audit as attacks
from ..core.evaluate import face_scores
from ..core.inversion import project
from ..core.ufo import distance_scale
from ..images import save_png, to_uint8
from ..models import load_generator
from ..weights import WeightsError
from .calibration import Calibration
from .files import write_json
from .folder import AUDIT, RunFolder, RunFolderError
from .identity import inversion_view
from .networks import Networks

OUTCOMES = ("recovered", "ambiguous", "resisted")
LABEL = {"g_u": "G_u", "g_s": "G_s"}
# the number each attack is judged by: the attacker keeps the best it found
ATTACK_VALUES = {"reinversion": "best_id", "probe_w_u": "max_id", "probe_reinversion": "max_id", "relearning": "best_id"}
FACE_SAMPLES = 8  # random latents whose G_s image is a face: are they still faces in G_u?


class AuditError(RunFolderError):
    """The audit cannot be run as asked; the message names what is wrong."""


def image_uri(img: torch.Tensor) -> str:
    """A PNG data URI of one image [1, 3, H, W] in [-1, 1] (the HTML page holds its images)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(img)[0]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def outcome(value: float, levels: Calibration) -> str:
    if value >= levels.same_person_level:
        return "recovered"
    return "resisted" if value < levels.different_person_level else "ambiguous"


def attack_generator(g, run: RunFolder, photo: torch.Tensor, others: list[torch.Tensor], nets: Networks,
                     cfg: AuditConfig, say: Callable[[str], None]) -> tuple[dict, dict]:
    """Every attack on ``g``: (numbers for audit.json, images for the page)."""
    rc = run.cfg
    w_u = run.latents["w_u"].to(g.device)

    def embed(images):
        return nets.id_metric.embed_generated(images, g.ffhq_box)

    with torch.no_grad():
        photo_embedding = embed(photo)
        other_embeddings = [embed(o) for o in others]
    g_fit = inversion_view(g, rc)
    reinv = attacks.reinversion_attack(g_fit, photo, photo_embedding, embed, nets.perceptual, rc.inversion, cfg,
                                       nets.encoder_for(g_fit), say, id_net=nets.id_loss)
    if g_fit is not g:  # judged on the full generator's image, as the evaluation
        with torch.no_grad():
            reinv.best_image = g.synthesis(reinv.best_ws)
            reinv.best_id = float(attacks.similarity(embed, photo_embedding, reinv.best_image)[0])
    radius = (cfg.probe_radius if cfg.probe_radius is not None else rc.alpha_max) * distance_scale(g, rc.distance_units)
    probes = [attacks.neighbourhood_probe(g, centre, name, photo_embedding, embed, radius, cfg.probe_samples, cfg.seed)
              for centre, name in ((w_u, "w_u"), (reinv.best_ws, "reinversion"))]
    say(f"neighbourhood probe: max ID {probes[0].max_id:.3f} around w_u, {probes[1].max_id:.3f} around the re-inversion")

    def elsewhere(tuned):
        """The person away from the pivot: each other photo inverted into ``tuned`` (its ID to that photo),
        or for a seed, w_u and neighbours of it (their ID to G_s(w_u))."""
        if others:
            settings = dataclasses.replace(rc.inversion, steps=cfg.projector_steps or rc.inversion.steps)
            fits = [project(inversion_view(tuned, rc), o, nets.perceptual, settings, id_net=nets.id_loss) for o in others]
            with torch.no_grad():
                images = torch.cat([tuned.synthesis(f.ws) for f in fits])
                ids = torch.stack([attacks.similarity(embed, e, images[i:i + 1])[0]
                                   for i, e in enumerate(other_embeddings)])
            return images, ids
        probe = attacks.neighbourhood_probe(tuned, w_u, "w_u", photo_embedding, embed, radius,
                                            cfg.elsewhere_samples, cfg.seed + 1)
        with torch.no_grad():
            at_w_u = tuned.synthesis(w_u)
            ids = torch.stack([attacks.similarity(embed, photo_embedding, at_w_u)[0], torch.tensor(probe.max_id)])
        return torch.cat([at_w_u, probe.best_image]), ids

    relearn = attacks.relearning_attack(g, photo, reinv.best_ws, photo_embedding, embed, nets.perceptual,
                                        rc.inversion, cfg, elsewhere, rc.trainable, say)
    with torch.no_grad():
        z = torch.randn(FACE_SAMPLES, g.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        ws = torch.cat([w_u, g.mapping(z.to(g.device))])
    faces, error = face_scores(nets, g, ws)
    numbers = {
        "reinversion": {"best_id": reinv.best_id, "best": asdict(reinv.best),
                        "restarts": [asdict(r) for r in reinv.restarts]},
        **{f"probe_{p.around}": {"max_id": p.max_id, "p95_id": p.p95_id, "mean_id": p.mean_id, "samples": p.samples}
           for p in probes},
        "relearning": {"lr": relearn.lr, "elsewhere": "other photos, inverted" if others else "w_u and its neighbours",
                       "curve": [{k: v for k, v in asdict(pt).items() if k != "image"} for pt in relearn.curve],
                       "best_id": max(pt.id_elsewhere for pt in relearn.curve)},
        "face_scores": faces, "face_check_error": error,
    }
    images = {"reinversion": reinv.best_image, **{f"probe_{p.around}": p.best_image for p in probes},
              **{f"relearning_{pt.steps}": pt.image for pt in relearn.curve}}
    return numbers, images


def default_out(run_dir: str | Path) -> Path:
    """Where an audit of RUN_DIR goes by default: _audit/ID beside it (no identity is named _audit)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / AUDIT / run_dir.name


def audit_run(run_dir: str | Path, out: str | Path, cfg: AuditConfig = AuditConfig(), device=None,
              generator: str | None = None, say: Callable[[str], None] = print) -> dict:
    """Audit RUN_DIR's erasure; write audit.json and audit.html to ``out`` (never into RUN_DIR)."""
    run = RunFolder(run_dir, generator)
    out = Path(out)
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise AuditError(f"the audit's folder {out} is inside the run folder {run.path}: an audit changes nothing there")
    t0 = time.perf_counter()
    try:
        g_s = load_generator(run.spec, device)
    except WeightsError as e:
        raise AuditError(f"{run.path} is a run of generator {run.generator!r}, which cannot be loaded by that name "
                         f"({e}): pass the generator's file or folder (--generator)") from None
    if g_s.name != run.generator:
        raise AuditError(f"{run.path} is a run of generator {run.generator!r}, not {g_s.name!r} ({run.spec})")
    g_u = load_generator(run.spec, device, checkpoint=run.checkpoint)
    nets = Networks(run.cfg, g_s.device)
    levels = nets.calibration
    photo, others = run.source_images(g_s)
    report: dict = {"identity": run.identity, "generator": run.generator, "run_dir": str(run.path.resolve()),
                    "checkpoint": str(run.checkpoint.resolve()), "config_hash": run.result["config_hash"],
                    "run_verdict": run.result.get("verdict"), "source": run.result["source"],
                    "audit_config": asdict(cfg), "calibration": levels.to_dict(), "attack_values": ATTACK_VALUES,
                    "attacks": {}}
    pictures = {}
    for name, g in (("g_u", g_u), ("g_s", g_s)):
        say(f"{run.identity}: attacking {LABEL[name]}" + (" (the reference)" if name == "g_s" else ""))
        numbers, pictures[name] = attack_generator(g, run, photo, others, nets, cfg, say)
        for attack, values in numbers.items():
            report["attacks"].setdefault(attack, {})[name] = values
    report.update(judge_audit(report, levels, nets.thresholds.face, run.cfg.evaluation.face_kept_min))
    report["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    save_png(to_uint8(photo)[0], out / "images" / "photo.png")
    for g, images in pictures.items():
        for name, image in images.items():
            save_png(to_uint8(image)[0], out / "images" / f"{g}_{name}.png")
    write_json(out / "audit.json", report)
    (out / "audit.html").write_text(audit_page(report, photo, pictures))
    return report


def judge_audit(report: dict, levels: Calibration, face_threshold: float, face_kept_min: float) -> dict:
    """Each attack's outcome on G_u (and on G_s, the reference), and the identity's audit verdict."""
    outcomes = {a: {g: outcome(report["attacks"][a][g][key], levels) for g in ("g_u", "g_s")}
                for a, key in ATTACK_VALUES.items()}
    false_accepts = {a: {g: levels.false_accept(report["attacks"][a][g][key]) for g in ("g_u", "g_s")}
                     for a, key in ATTACK_VALUES.items()}
    faces = report["attacks"]["face_scores"]["g_u"]
    kept = sum(v >= face_threshold for v in faces) / len(faces)
    broken = [a for a, o in outcomes.items() if o["g_u"] == "recovered"]
    if report["run_verdict"] != "erased":
        verdict = "not_audited"
        reason = f"the run's verdict is {report['run_verdict']}: there was no erasure to attack"
    elif broken:
        verdict, reason = "recoverable", f"recovered by {', '.join(broken)}"
    elif kept < face_kept_min:
        verdict, reason = "ambiguous", f"only {kept:.0%} of G_u's images of w_u and {FACE_SAMPLES} random latents are faces"
    elif all(o["g_u"] == "resisted" for o in outcomes.values()):
        verdict, reason = "survives", "every attack stayed below the different-person level"
    else:
        verdict = "ambiguous"
        reason = "between the levels: " + ", ".join(a for a, o in outcomes.items() if o["g_u"] == "ambiguous")
    if verdict == "not_audited" and broken:
        reason += f"; recovered by {', '.join(broken)}"
    return {"outcomes": outcomes, "false_accepts": false_accepts, "broken_by": broken, "faces_kept": kept, "audit_verdict": verdict,
            "audit_reason": reason, "recoverable": bool(broken)}


def audit_page(report: dict, photo: torch.Tensor, pictures: dict[str, dict[str, torch.Tensor]]) -> str:
    """One HTML page: the levels, then per attack the photo, G_u's and G_s's best images and their IDs."""
    lv = report["calibration"]

    def img(t, label):
        return f'<figure><img src="{image_uri(t)}" width="160"><figcaption>{html.escape(label)}</figcaption></figure>'

    rows = []
    for attack, key in ATTACK_VALUES.items():
        a, o = report["attacks"][attack], report["outcomes"][attack]
        shots = [img(photo, "photo")]
        names = [attack] if attack != "relearning" else [f"relearning_{pt['steps']}" for pt in a["g_u"]["curve"]]
        for name in names:
            for g in ("g_u", "g_s"):
                shots.append(img(pictures[g][name], f"{LABEL[g]} {name}"))
        curve = ""
        if attack == "relearning":
            curve = "<br>" + "; ".join(
                f"k={u['steps']}: G_u {u['id_elsewhere']:.3f} (pivot {u['id_pivot']:.3f}), G_s {s['id_elsewhere']:.3f}"
                for u, s in zip(a["g_u"]["curve"], a["g_s"]["curve"]))
        far = report["false_accepts"][attack]
        rows.append(f"<h3>{html.escape(attack)}: G_u {a['g_u'][key]:.3f} ({o['g_u']}; strangers reach it "
                    f"{far['g_u']:.0%}), G_s {a['g_s'][key]:.3f} ({o['g_s']}; {far['g_s']:.0%})</h3><p>{curve}</p>"
                    f"<div class=\"row\">{''.join(shots)}</div>")
    title = f"Erasure audit: {report['identity']} on {report['generator']}"
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px} .row{display:flex;flex-wrap:wrap;gap:6px}"
            " figure{margin:0;font-size:12px;text-align:center}</style></head><body>\n"
            f"<h2>{html.escape(title)}: {report['audit_verdict']}</h2><p>{html.escape(report['audit_reason'])}. "
            f"Run verdict: {html.escape(str(report['run_verdict']))}; run folder {html.escape(report['run_dir'])}.</p>"
            f"<p>ID = {html.escape(lv['metric'])} cosine similarity to the photo. Same-person level "
            f"{lv['same_person_level']:.3f} (false accepts {lv['same_person_far']:.1%}, true accepts "
            f"{lv['same_person_tar']:.1%}); different-person level {lv['different_person_level']:.3f} (false accepts "
            f"{lv['different_person_far']:.1%}); on openpeople, {lv['persons']} people, {lv['photos']} photos. "
            "recovered: at or above the same-person level; resisted: below the different-person level.</p>\n"
            + "\n".join(rows) + "\n</body></html>\n")
