"""One identity end to end on the real DCGAN: files, checkpoints, resume, refusals, CLI errors."""

import json
import math

import pytest
import torch

from guide_ray import cli
from guide_ray.config import load_config
from guide_ray.run.identity import IdentitySpec, RunExists, run_identity
from guide_ray.run.networks import Networks
from guide_ray.models import load_generator
from tests.helpers import require_weights

# the run's mechanics on the real DCGAN: a few steps, FID on one batch, two random face samples, the
# FaceNet different-person level given (its measurement is test_verdict.py's)
QUICK = ["iterations=4", "checkpoint_every=2", "evaluation.fid_samples=8", "evaluation.fid_batch=8",
         "inversion.steps=4", "latent_pool=8", "evaluation.face_samples=2", "evaluation.id_threshold=0.232"]


@pytest.fixture(scope="module")
def nets():
    require_weights("dcgan-digiface64", "stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception")
    return Networks(load_config(overrides=QUICK), "cpu")


def dcgan():
    return load_generator("dcgan-digiface64", "cpu")


@pytest.mark.slow
def test_a_run_writes_its_files_and_its_checkpoint_reloads(nets, tmp_path, capsys):
    cfg = load_config(overrides=QUICK)
    g = dcgan()
    result = run_identity(g, IdentitySpec("s7", seed=7), cfg, nets, tmp_path / "run", show_progress=False)
    assert result.status == "finished" and result.steps == 4
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["config"]["iterations"] == 4 and len(saved["config_hash"]) == 12
    for key in ("id", "id_target", "reinversion_id", "inversion_id", "fid_pre", "fid_floor"):
        assert math.isfinite(saved["metrics"][key]), key
    m = saved["metrics"]
    assert m["fid_floor"] > 0 and m["fid_pre_ratio"] == pytest.approx(m["fid_pre"] / m["fid_floor"])
    assert saved["latents"]["d_effective"] == pytest.approx(30 * saved["latents"]["distance_scale"])
    assert not (tmp_path / "run" / "state.pt").exists()
    assert (tmp_path / "run" / "grid.png").stat().st_size > 1000
    # the checkpoint rebuilds G_u anywhere a generator is accepted
    reloaded = load_generator("dcgan-digiface64", "cpu", checkpoint=tmp_path / "run" / "checkpoint.safetensors")
    z = torch.randn(2, 100)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(z), g(z))
        assert not torch.allclose(dcgan()(z), g(z))
    # `evaluate` recomputes the same ID from the files
    assert cli.main(["evaluate", str(tmp_path / "run"), "--device", "cpu"]) == 0
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["id"] == pytest.approx(saved["metrics"]["id"], abs=1e-5)
    # a finished run is not overwritten by accident
    with pytest.raises(RunExists, match="already holds a finished run"):
        run_identity(dcgan(), IdentitySpec("s7", seed=7), cfg, nets, tmp_path / "run", show_progress=False)


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(nets, tmp_path, monkeypatch):
    cfg = load_config(overrides=QUICK + ["evaluation.reinversion=false"])
    whole = dcgan()
    run_identity(whole, IdentitySpec("s3", seed=3), cfg, nets, tmp_path / "whole", show_progress=False)

    import guide_ray.core.ltu as ltu

    real_step = ltu.Problem.step_optimised
    calls = {"n": 0}

    def crash_at_step_3(self, draw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, draw)

    monkeypatch.setattr(ltu.Problem, "step_optimised", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_identity(dcgan(), IdentitySpec("s3", seed=3), cfg, nets, tmp_path / "cut", show_progress=False)
    assert (tmp_path / "cut" / "state.pt").exists() and not (tmp_path / "cut" / "result.json").exists()
    monkeypatch.setattr(ltu.Problem, "step_optimised", real_step)
    resumed = dcgan()
    result = run_identity(resumed, IdentitySpec("s3", seed=3), cfg, nets, tmp_path / "cut", show_progress=False)
    assert result.steps == 4
    whole_losses, cut_losses = (json.loads((tmp_path / d / "losses.json").read_text()) for d in ("whole", "cut"))
    assert [r["step"] for r in cut_losses] == [0, 1, 2, 3]  # the whole run's losses, not the last attempt's
    assert [r["total"] for r in cut_losses] == pytest.approx([r["total"] for r in whole_losses])
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
    other = load_config(overrides=QUICK + ["lr=0.5"])
    (tmp_path / "cut" / "result.json").unlink()
    torch.save({"config_hash": "somethingelse"}, tmp_path / "cut" / "state.pt")
    with pytest.raises(RunExists, match="another config"):
        run_identity(dcgan(), IdentitySpec("s3", seed=3), other, nets, tmp_path / "cut", show_progress=False)


@pytest.mark.slow
def test_a_diverging_run_keeps_the_last_good_weights(nets, tmp_path, monkeypatch):
    cfg = load_config(overrides=QUICK + ["iterations=6", "evaluation.reinversion=false"])
    real = nets.perceptual.distance
    calls = {"n": 0}

    def poisoned(fa, fb):
        calls["n"] += 1
        d = real(fa, fb)
        return d * math.inf if calls["n"] > 6 else d  # two calls a step: step 3 diverges

    monkeypatch.setattr(nets.perceptual, "distance", poisoned)
    result = run_identity(dcgan(), IdentitySpec("s5", seed=5), cfg, nets, tmp_path / "run", show_progress=False)
    assert result.status == "diverged" and "step 3" in result.message and "step 2" in result.message
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("args,message", [
    (["--seed", "1", "--set", "lamda=1"], "unknown config key 'lamda'"),
    (["--seed", "1", "--set", "iterations=1.5"], "iterations: expected an integer"),
    (["--seed", "1", "--generator", "stylegan9"], "neither a known name"),
    (["--image", "missing.jpg"], "missing.jpg: file not found"),
])
def test_unlearn_cli_bad_input(tmp_path, capsys, args, message):
    argv = ["unlearn", "--generator", "dcgan-digiface64", "--out", str(tmp_path / "o"), "--device", "cpu", *args]
    if "--generator" in args:
        argv = ["unlearn", "--out", str(tmp_path / "o"), "--device", "cpu", *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_unlearn_cli_photo_without_a_face(tmp_path, capsys):
    from PIL import Image

    wall = tmp_path / "wall.png"
    Image.new("RGB", (300, 300), (90, 120, 150)).save(wall)
    assert cli.main(["unlearn", "--generator", "dcgan-digiface64", "--image", str(wall), "--out",
                     str(tmp_path / "o"), "--device", "cpu", "--set", "inversion.steps=2"]) == 2
    err = capsys.readouterr().err
    assert f"no face found in {wall}" in err


def test_unlearn_cli_refuses_a_finished_run(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"status": "finished"}))
    assert cli.main(["unlearn", "--generator", "dcgan-digiface64", "--seed", "1", "--out", str(out),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--overwrite" in err


@pytest.mark.slow
def test_an_encoder_only_inversion_runs_end_to_end(nets, tmp_path, monkeypatch):
    """inversion.steps=0 with an encoder (the paper configs: GOAE's latent as is): the photo's latent
    is the encoder's, and the re-inversion into G_u also starts from (here: is) the encoder's latent."""
    from guide_ray import weights

    class ConstantOffsets:  # an encoder whose latent is w_avg + 0.3 for any photo
        def for_generator(self, g):
            return lambda images: torch.full((len(images), g.num_ws, g.w_dim), 0.3, device=images.device)

    monkeypatch.setattr(nets, "encoder", ConstantOffsets())
    cfg = load_config(overrides=QUICK + ["inversion.steps=0"])
    photo = weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"
    g = dcgan()
    result = run_identity(g, IdentitySpec("P001", image=photo), cfg, nets, tmp_path / "run", show_progress=False)
    assert result.status == "finished"
    w_u = torch.load(tmp_path / "run" / "latents.pt", weights_only=True)["w_u"]
    torch.testing.assert_close(w_u, (dcgan().w_avg + 0.3).expand_as(w_u))
    assert math.isfinite(result.metrics.reinversion_id)
