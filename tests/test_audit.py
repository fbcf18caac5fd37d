"""The erasure audit (guide-ray audit): attacks on G_u beside G_s, calibrated levels, a verdict that
a wrecked generator cannot pass, and run folders it refuses without touching them.

Unit tests first (levels, the audit's verdict, folders it refuses); then a real GUIDE run on the
DCGAN (seed 9, erased) audited, and the same folder with G_s's own tensors as its checkpoint (an
"erasure" that changed nothing), which the audit must call recoverable.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guide_ray import cli
from guide_ray.config import ConfigError, load_audit_config, load_config
from guide_ray.models.checkpoint import metadata_json, save_trainable
from guide_ray.run.audit import ATTACK_VALUES, audit_run, default_out, judge_audit
from guide_ray.run.folder import CHECKPOINT, JOINT, RunFolder, RunFolderError
from guide_ray.run.calibration import FALSE_ACCEPT, levels_from
from tests.helpers import require_weights

# small attacks for tests: 3 restarts of 60 steps, 16 probe latents, relearning measured after 5 and 20 steps
AUDIT = ["random_starts=1", "projector_steps=60", "probe_samples=16", "relearn_steps=[5,20]", "elsewhere_samples=4"]


def test_levels_from_picks_the_lowest_line_that_strangers_reach_at_most_one_percent_of_the_time():
    rng = np.random.default_rng(0)
    different, same = rng.normal(0.2, 0.1, 720), rng.normal(0.7, 0.1, 60)
    c = levels_from("m", same, different, 40, 10)
    assert c.different_person_level == pytest.approx(different.mean())
    assert c.same_person_far <= FALSE_ACCEPT and c.same_person_far == (different >= c.same_person_level).mean()
    # one step lower and more strangers than allowed reach it
    lower = np.sort(different)[-int(FALSE_ACCEPT * 720) - 1]
    assert (different >= lower).mean() > FALSE_ACCEPT and lower < c.same_person_level
    assert c.same_person_tar == (same >= c.same_person_level).mean() and c.same_person_tar > 0.9
    assert 0.4 < c.different_person_far < 0.6  # the mean of a symmetric distribution: about half reach it
    assert c.false_accept(c.same_person_level) == c.same_person_far and c.false_accept(-1.0) == 1.0
    assert c.false_accept(float(different.max()) + 1e-6) == 0.0


def test_the_calibration_cache_is_keyed_by_what_the_levels_depend_on(monkeypatch):
    from guide_ray.run import calibration

    key = calibration.calibration_key("facenet-vggface2")
    assert calibration.calibration_key("dlib-resnet34") != key
    monkeypatch.setattr(calibration, "FALSE_ACCEPT", 0.05)
    assert calibration.calibration_key("facenet-vggface2") != key
    monkeypatch.setattr(calibration, "FALSE_ACCEPT", FALSE_ACCEPT)
    monkeypatch.setattr(calibration, "PHOTOS", ("studio_portrait",))
    assert calibration.calibration_key("facenet-vggface2") != key


def test_the_verdict_reads_the_calibration_the_audit_reads(monkeypatch):
    """Networks holds one Calibration: the verdict's ID level is its different-person level, and the
    audit takes ``nets.calibration`` (the audit test below checks that both land in the files)."""
    require_weights("facenet-vggface2", "openpeople", "dlib-landmarks5")
    from guide_ray.run import networks

    made = []
    real = networks.cached_calibration
    monkeypatch.setattr(networks, "cached_calibration", lambda *a: made.append(real(*a)) or made[-1])
    nets = networks.Networks(load_config(None, []), "cpu")
    assert nets.thresholds.id_level == nets.calibration.different_person_level
    assert nets.calibration is made[0] and len(made) == 1 and nets.levels_used() == made[0].levels()
    given = networks.Networks(load_config(None, ["evaluation.id_threshold=0.3"]), "cpu")
    assert given.thresholds.id_level == 0.3 and given.levels_used() is None


def _report(run_verdict="erased", g_u=0.1, g_s=0.9, faces=(1.0,) * 9):
    return {"run_verdict": run_verdict,
            "attacks": {**{a: {"g_u": {k: g_u}, "g_s": {k: g_s}} for a, k in ATTACK_VALUES.items()},
                        "face_scores": {"g_u": list(faces), "g_s": [1.0] * 9}}}


LEVELS = levels_from("m", np.array([0.7, 0.8]), np.linspace(0.0, 0.5, 200), 4, 2)  # same level ~0.5, different 0.25


@pytest.mark.parametrize("report,verdict", [
    (_report(), "survives"),
    (_report(g_u=0.95), "recoverable"),
    (_report(g_u=0.35), "ambiguous"),  # between the levels
    # a generator that draws nothing resists every attack: not a survival
    (_report(faces=(0.0,) * 9), "ambiguous"),
    (_report(run_verdict="face_destroyed"), "not_audited"),
    (_report(run_verdict="not_erased", g_u=0.95), "not_audited"),
])
def test_the_audit_verdict_cannot_be_passed_by_a_wrecked_generator(report, verdict):
    judged = judge_audit(report, LEVELS, face_threshold=0.8, face_kept_min=0.75)
    assert judged["audit_verdict"] == verdict and judged["audit_reason"]
    assert judged["recoverable"] == (report["attacks"]["reinversion"]["g_u"]["best_id"] >= LEVELS.same_person_level)


def test_audit_settings_are_checked_with_the_key_named():
    assert load_audit_config(["relearn_steps=[10, 50]"]).relearn_steps == [10, 50]
    for bad, key in [("relearn_steps=[0]", "relearn_steps"), ("relearn_steps=5", "relearn_steps"),
                     ("probe_samples=0", "probe_samples"), ("restarts=3", "restarts")]:
        with pytest.raises(ConfigError, match=key):
            load_audit_config([bad])


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_run(folder: Path, generator="dcgan-digiface64", trained_from="dcgan-digiface64", **change) -> Path:
    """A run folder as run_identity writes it, with tensors of no real run: enough for RunFolder's checks."""
    folder.mkdir(parents=True)
    checkpoint = save_trainable(folder / "checkpoint.safetensors", {"main.0.weight": torch.zeros(1)}, trained_from,
                                metadata_json({"identity": "s9"}))
    result = {"identity": "s9", "status": "finished", "generator": generator, "checkpoint": str(checkpoint),
              "config": {}, "config_hash": "x", "verdict": "erased", "source": {"image": None, "seed": 9, "others": []},
              **change}
    (folder / "result.json").write_text(json.dumps(result))
    torch.save({"w_u": torch.zeros(1, 1, 100), "w_t": torch.zeros(1, 1, 100), "w_others": None}, folder / "latents.pt")
    return folder


@pytest.mark.parametrize("damage,message", [
    (lambda f: shutil.rmtree(f), "no such run folder"),
    (lambda f: (f / "result.json").unlink(), "missing result.json"),
    (lambda f: (f / "latents.pt").unlink(), "missing latents.pt"),
    (lambda f: (f / "checkpoint.safetensors").unlink(), "checkpoint.safetensors, is missing"),
])
def test_a_run_folder_missing_a_file_is_refused_with_the_file_named(tmp_path, damage, message):
    run = _fake_run(tmp_path / "run")
    damage(run)
    before = _fingerprint(run) if run.exists() else None
    with pytest.raises(RunFolderError, match=message):
        audit_run(run, tmp_path / "audit")
    assert not (tmp_path / "audit").exists() and (before is None or _fingerprint(run) == before)


@pytest.mark.parametrize("kind,message", [
    ("trained_from", "trained from generator 'tiny_dcgan', but .*names 'dcgan-digiface64'"),
    ("asked", "is a run of generator 'dcgan-digiface64', not 'mobilestylegan-ffhq1024'"),
    ("failed", "is a failed run without a checkpoint"),
    ("photo", "the run's photo .*nowhere.jpg is missing"),
])
def test_a_run_of_another_generator_or_without_an_erasure_is_refused(tmp_path, kind, message):
    change = {"failed": {"status": "failed", "checkpoint": None, "error": "boom"},
              "photo": {"source": {"image": str(tmp_path / "nowhere.jpg"), "seed": None, "others": []}}}.get(kind, {})
    run = _fake_run(tmp_path / "run", trained_from="tiny_dcgan" if kind == "trained_from" else "dcgan-digiface64",
                    **change)
    before = _fingerprint(run)
    with pytest.raises(RunFolderError, match=message):
        RunFolder(run, "mobilestylegan-ffhq1024" if kind == "asked" else None)
    assert _fingerprint(run) == before


def test_a_joint_identitys_folder_finds_the_joint_checkpoint(tmp_path):
    """A joint fleet's identity has no checkpoint of its own: result.json names runs/KEY/_joint's, relative
    to where the fleet ran; evaluate and audit (both RunFolder) find it beside the identity's folder."""
    runs = tmp_path / "moved" / "runs" / "KEY"
    run = _fake_run(runs / "s9", checkpoint=f"outputs/elsewhere/runs/KEY/{JOINT}/{CHECKPOINT}")
    (runs / JOINT).mkdir()
    (run / CHECKPOINT).rename(runs / JOINT / CHECKPOINT)
    assert RunFolder(run).checkpoint == runs / JOINT / CHECKPOINT
    (runs / JOINT / CHECKPOINT).unlink()
    with pytest.raises(RunFolderError, match=f"{JOINT}/{CHECKPOINT}, is missing"):
        RunFolder(run)


def test_the_cli_names_what_is_missing_and_exits_2(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    (run / "latents.pt").unlink()
    for command in ("audit", "evaluate"):  # both read the folder through RunFolder
        assert cli.main([command, str(run)]) == 2
        assert "missing latents.pt" in capsys.readouterr().err
    assert cli.main(["audit", str(_fake_run(tmp_path / "ok")), "--out", str(tmp_path / "ok" / "inside")]) == 2
    assert "inside the run folder" in capsys.readouterr().err and not (tmp_path / "ok" / "inside").exists()
    assert default_out(run) == (tmp_path / "_audit" / "run").resolve()


# --- a real erasure, audited ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def erased_run(dcgan, tmp_path_factory):
    """GUIDE on the DCGAN, seed 9, 60 steps at lr 6e-4 (erased: ID ~0.05)."""
    import copy

    from guide_ray.run.identity import IdentitySpec, run_identity
    from guide_ray.run.networks import Networks

    require_weights("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "openpeople", "dlib-mmod")
    cfg = load_config(None, ["iterations=60", "lr=6e-4", "latent_pool=16", "evaluation.fid_samples=16",
                             "evaluation.reinversion=false"])
    out = tmp_path_factory.mktemp("audit") / "s9"
    result = run_identity(copy.deepcopy(dcgan), IdentitySpec("s9", seed=9), cfg, Networks(cfg, "cpu"), out,
                          show_progress=False)
    assert result.verdict == "erased", result.verdict_detail
    return out


@pytest.mark.slow
def test_the_audit_of_a_guide_run_reports_every_attack_on_g_u_beside_g_s(erased_run, tmp_path):
    before = _fingerprint(erased_run)
    report = audit_run(erased_run, tmp_path / "audit", load_audit_config(AUDIT), say=lambda _: None)
    assert _fingerprint(erased_run) == before  # nothing in the run folder changed
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["audit_verdict"] == report["audit_verdict"] and saved["identity"] == "s9"
    for attack, key in ATTACK_VALUES.items():
        for g in ("g_u", "g_s"):
            assert -1 <= saved["attacks"][attack][g][key] <= 1 + 1e-5, (attack, g)
            assert saved["outcomes"][attack][g] in ("recovered", "ambiguous", "resisted")
    assert len(saved["attacks"]["reinversion"]["g_u"]["restarts"]) == 3  # w_avg, mean of samples, random:0
    assert [p["steps"] for p in saved["attacks"]["relearning"]["g_u"]["curve"]] == [0, 5, 20]
    lv = saved["calibration"]
    assert lv["same_person_far"] <= FALSE_ACCEPT < lv["different_person_far"] and lv["photos"] >= 30
    # the run's verdict was judged by the audit's different-person level, and recorded it with its rates
    run_detail = json.loads((erased_run / "result.json").read_text())["verdict_detail"]
    assert run_detail["thresholds"]["id_level"] == lv["different_person_level"]
    assert run_detail["calibration"] == {k: v for k, v in lv.items() if k != "different_similarities"}
    # the reference: G_s still draws the person, so its re-inversion and its neighbourhood of w_u find them
    assert saved["outcomes"]["probe_w_u"]["g_s"] == "recovered"
    assert saved["attacks"]["probe_w_u"]["g_u"]["max_id"] < saved["attacks"]["probe_w_u"]["g_s"]["max_id"] - 0.2
    page = (tmp_path / "audit" / "audit.html").read_text()
    # the photo, G_u's and G_s's best image for each of three attacks; the photo and both after 0, 5, 20 steps
    assert page.count("data:image/png;base64,") == 3 * 3 + 1 + 2 * 3 and report["audit_verdict"] in page


@pytest.mark.slow
def test_the_audit_of_g_s_itself_reports_the_identity_recoverable(erased_run, dcgan, tmp_path):
    """The run's folder with G_s's own tensors as its checkpoint: an erasure that changed nothing."""
    run = tmp_path / "s9"
    shutil.copytree(erased_run, run)
    save_trainable(run / "checkpoint.safetensors", dict(dcgan.named_parameters()), dcgan.name)
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "checkpoint": str(run / "checkpoint.safetensors")}))
    report = audit_run(run, tmp_path / "audit", load_audit_config(AUDIT), say=lambda _: None)
    assert report["recoverable"] and report["audit_verdict"] == "recoverable"
    assert "probe_w_u" in report["broken_by"]
    assert report["attacks"]["probe_w_u"]["g_u"]["max_id"] == pytest.approx(
        report["attacks"]["probe_w_u"]["g_s"]["max_id"], abs=1e-4)  # G_u is G_s here
