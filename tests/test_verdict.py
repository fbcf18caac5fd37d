"""The verdict cannot be satisfied by destroying the generator, nor claim a person it never drew.

Unit tests of core.verdict.judge, then the real networks: the face check tells the old demo's smear
from a face, a generator whose output is constant after "unlearning" is face_destroyed, a photo
the DCGAN cannot represent is not_represented, and a face detector that fails gives a verdict.
"""

import json

import pytest
import torch

from guide_ray.config import load_config
from guide_ray.core.evaluate import evaluate_run
from guide_ray.run.identity import IdentitySpec, run_identity
from guide_ray.run.networks import Networks
from guide_ray.core.ufo import distance_scale, ufo_target
from guide_ray.core.verdict import Thresholds, judge
from guide_ray.models import load_generator
from guide_ray.models.face_check import FaceCheck
from guide_ray.results import Metrics
from tests.helpers import require_weights

T = Thresholds(id_level=0.23, face=0.8, face_kept_min=1.0, face_detector="dlib-mmod")
GOOD = {"id": 0.05, "inversion_id": 0.6, "face_after": 1.02, "face_kept": 1.0}


def metrics(**values) -> Metrics:
    """Metrics with ``values``; the ones the verdict does not read are filled in."""
    return Metrics(**{"id_target": 0.0, "face_source": 1.0, "face_target": 1.0, "fid_pre": 0.0, "fid_samples": 0,
                      **values})


@pytest.mark.parametrize("change,photo,verdict", [
    ({}, True, "erased"),
    ({"id": 0.4}, True, "not_erased"),
    ({"inversion_id": 0.19}, True, "not_represented"),  # checked first: nothing else is meaningful then
    ({"inversion_id": 0.19, "face_after": -1.0}, True, "not_represented"),
    ({"inversion_id": 0.19}, False, "erased"),  # a seed is represented by construction
    ({"face_after": 0.7}, True, "face_destroyed"),  # ID 0.05, but G_u(w_u) is no face
    ({"face_kept": 0.75}, True, "face_destroyed"),  # one of the other after-images is no face
    ({"id": -0.2, "face_after": -1.0, "face_kept": 0.0}, False, "face_destroyed"),
])
def test_judge(change, photo, verdict):
    v = judge(metrics(**{**GOOD, **change}), photo, T)
    assert v.verdict == verdict
    assert v.thresholds == T and v.represented == (verdict != "not_represented")
    assert v.to_dict()["thresholds"]["id_level"] == 0.23 and v.reason


def test_a_failed_face_detector_is_named_in_the_verdict():
    v = judge(metrics(**{**GOOD, "face_after": -1.0, "face_check_error": "RuntimeError: boom"}), True, T)
    assert v.verdict == "face_destroyed" and "face detector failed: RuntimeError: boom" in v.reason


# --- with the real networks -------------------------------------------------------------------

QUICK = ["evaluation.fid_samples=8", "evaluation.fid_batch=8", "evaluation.reinversion=false", "inversion.steps=4",
         "iterations=2", "latent_pool=4", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def nets():
    require_weights("dcgan-digiface64", "stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception",
                    "dlib-mmod", "mtcnn", "openpeople")
    return Networks(load_config(overrides=QUICK), "cpu")


def test_the_face_check_tells_the_old_demos_smear_from_a_face(dcgan, nets):
    """dcgan-digiface64 seed 7: Eq. 3 in a straight line (the old target, ||w_t|| ~ 20 against ~10 for
    the prior's samples) renders a smear of skin and hair; on the sphere it renders a face."""
    w_u = dcgan.mapping(dcgan.z_from_seed(7))
    d = 30 * distance_scale(dcgan, "eg3d")
    with torch.no_grad():
        source, line, sphere = (dcgan.synthesis(w) for w in (w_u, ufo_target(w_u, dcgan.w_avg, d, "w+"),
                                                             ufo_target(w_u, dcgan.w_avg, d, "sphere")))
    mmod = nets.faces
    assert mmod.name == "dlib-mmod" and mmod.threshold == 0.8
    scores = mmod(torch.cat([source, line, sphere]))
    assert mmod.is_face(scores[0]) and not mmod.is_face(scores[1]) and mmod.is_face(scores[2]), scores
    mtcnn = FaceCheck("mtcnn")  # lenient: the smear is "a face" to MTCNN, hence not the default
    assert mtcnn(line)[0] > mtcnn.threshold


def test_the_face_check_refuses_what_is_no_face(dcgan):
    with torch.no_grad():
        faces = dcgan(torch.randn(4, 100, generator=torch.Generator().manual_seed(1)))
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    flat, nan = torch.zeros(1, 3, 64, 64), torch.full((1, 3, 64, 64), float("nan"))
    for check in (FaceCheck("dlib-mmod"), FaceCheck("mtcnn")):
        scores = check(torch.cat([faces, noise, flat, nan]))
        assert all(check.is_face(s) for s in scores[:4]), (check.name, scores)
        assert not any(check.is_face(s) for s in scores[4:]), (check.name, scores)
        assert scores[-1] == check.no_face
    with pytest.raises(ValueError, match="face detector 'haar'"):
        FaceCheck("haar")


def _constant(generator):
    """A generator 'unlearned' by destruction: every output pixel the same, whatever the latent."""
    with torch.no_grad():
        for p in generator.synthesis_net.parameters():
            p.zero_()
    return generator


@pytest.mark.slow
def test_a_destroyed_generator_is_face_destroyed_never_erased(dcgan, nets):
    cfg = load_config(overrides=QUICK)
    w_u = dcgan.mapping(dcgan.z_from_seed(7))
    g_u = _constant(load_generator("dcgan-digiface64", "cpu"))
    with torch.no_grad():
        source = dcgan.synthesis(w_u)
        assert torch.unique(g_u.synthesis(w_u)).numel() == 1
    m = evaluate_run(dcgan, g_u, w_u, w_u, None, source, cfg, nets, photo=False)
    assert m.id < nets.thresholds.id_level  # by ID alone it would pass as erased
    verdict = judge(m, False, nets.thresholds)
    assert verdict.verdict == "face_destroyed" and m.face_kept == 0.0, (m, verdict)
    assert nets.faces.is_face(m.face_source)


class _KeepsOnlyTheSource(torch.nn.Module):
    """A generator 'unlearned' by destruction everywhere but at one latent: G_u(w_u) is a face
    (another one), every other latent gives a flat grey image."""

    def __init__(self, generator, w_u, w_face):
        super().__init__()
        self.g, self.w_u, self.w_face = generator, w_u, w_face

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.g, name)

    def synthesis(self, ws, c=None):
        at_source = (ws - self.w_u).flatten(1).norm(dim=1) < 1e-4
        face = self.g.synthesis(self.w_face.expand_as(ws))
        return torch.where(at_source.view(-1, 1, 1, 1), face, torch.zeros_like(face))

    def forward(self, z, c=None):
        return self.synthesis(self.mapping(z), c)


@pytest.mark.slow
def test_a_generator_wrecked_away_from_the_source_is_face_destroyed(dcgan, nets):
    cfg = load_config(overrides=QUICK + ["evaluation.face_samples=4"])
    w_u = dcgan.mapping(dcgan.z_from_seed(39))
    w_face = ufo_target(w_u, dcgan.w_avg, 30 * distance_scale(dcgan, "eg3d"), "sphere")  # a face, another person
    g_u = _KeepsOnlyTheSource(dcgan, w_u, w_face)
    with torch.no_grad():
        source = dcgan.synthesis(w_u)
    m = evaluate_run(dcgan, g_u, w_u, w_face, None, source, cfg, nets, photo=False)
    # by ID and G_u(w_u) alone it would pass as erased: another face where the source was
    assert m.id < nets.thresholds.id_level and nets.faces.is_face(m.face_after)
    assert any(nets.faces.is_face(v) for v in m.face_samples_before)
    assert not any(nets.faces.is_face(v) for v in m.face_samples_after)
    verdict = judge(m, False, nets.thresholds)
    assert verdict.verdict == "face_destroyed" and m.face_kept < 1, (m, verdict)


@pytest.mark.slow
def test_a_photo_the_generator_cannot_draw_is_not_represented(nets, tmp_path):
    from guide_ray import weights

    photo = weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"
    cfg = load_config(overrides=QUICK)
    result = run_identity(load_generator("dcgan-digiface64", "cpu"), IdentitySpec("P001", image=photo), cfg, nets,
                          tmp_path / "run", show_progress=False)
    assert result.metrics.inversion_id < nets.thresholds.id_level
    assert result.verdict == "not_represented" and not result.verdict_detail["represented"]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["verdict"] == "not_represented"
    assert saved["verdict_detail"]["thresholds"]["id_level"] == pytest.approx(nets.thresholds.id_level)


@pytest.mark.slow
def test_a_face_detector_failure_is_a_verdict_not_a_crash(nets, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = FaceCheck._score

    def fail_after_the_target(self, image):  # the target check and G_s(w_u), G_s(w_t) work; G_u(w_u) fails
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("detector crashed")
        return real(self, image)

    monkeypatch.setattr(FaceCheck, "_score", fail_after_the_target)
    result = run_identity(load_generator("dcgan-digiface64", "cpu"), IdentitySpec("s7", seed=7),
                          load_config(overrides=QUICK), nets, tmp_path / "run", show_progress=False)
    assert result.status == "finished" and result.verdict == "face_destroyed"
    assert "detector crashed" in result.metrics.face_check_error
    assert "face detector failed" in result.verdict_detail["reason"]
