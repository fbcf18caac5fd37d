"""Registered generators as MLflow Models: a fleet on the tiny generator registers each unlearned
generator as a pyfunc model that mlflow.pyfunc.load_model("models:/NAME@ALIAS") renders; `guide-ray
sample --generator models:/...` draws the same images; a fleet starts from a registered version
(its workers load it, its versions hold its tensors); nothing of it reaches beyond this machine."""

import ipaddress
import socket
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors import safe_open

from guide_ray import cli, fleet
from guide_ray.config import load_config, to_dict
from guide_ray.fleet.worker import IdentityWorker
from guide_ray.mlflow_model import render_seeds, resolve_generator, seeds_of, sha256
from guide_ray.models import load_generator
from guide_ray.models.checkpoint import save_trainable
from guide_ray.run.ids import read_ids
from guide_ray.tracking import model_name
from tests.helpers import NETS, require_weights

pytestmark = pytest.mark.slow  # one shared fleet, ~1 minute on 2 cores

# a few iterations at a high learning rate: the unlearned generator draws visibly other images
# (and none of the evaluation the verdict does not need here: re-inversion, random face samples, the ID level)
QUICK = ["iterations=2", "checkpoint_every=2", "lr=0.01", "evaluation.fid_samples=8", "evaluation.fid_batch=8",
         "inversion.steps=2", "latent_pool=2", "evaluation.face_samples=0", "evaluation.reinversion=false",
         "evaluation.id_threshold=0.232"]
SEEDS = [1, 2]


def _local(host) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in ("localhost", socket.gethostname(), "")
    return address.is_loopback or address.is_private or address.is_unspecified


@pytest.fixture(scope="module")
def offline():
    """Every TCP connection and name lookup beyond this machine is refused and recorded."""
    attempts, connect, getaddrinfo = [], socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.type == socket.SOCK_STREAM and isinstance(address, tuple) and not _local(address[0]):
            attempts.append(address)
            raise OSError(f"test_mlflow_model: no network beyond this machine ({address})")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(host.decode() if isinstance(host, bytes) else host):
            attempts.append(host)
            raise socket.gaierror(f"test_mlflow_model: no name lookups beyond this machine ({host})")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo


@pytest.fixture(scope="module")
def fleets(tmp_path_factory, tiny_generator, offline):
    """One parallel fleet erasing seed identity s1 from the tiny generator (store: OUT/mlflow.db), its
    version promoted to alias "approved"."""
    import ray

    require_weights(*NETS)
    root = tmp_path_factory.mktemp("mlflow_model")
    out = root / "out"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    name = model_name(str(tiny_generator))
    (root / "ids.csv").write_text("id,image,seed,others\ns1,,1,\n")
    quick = [a for s in QUICK for a in ("--set", s)]
    args = [str(root / "ids.csv"), "--generator", str(tiny_generator), "--out", str(out), "--no-progress", *quick]
    ray.init(address="local", include_dashboard=False, num_cpus=2)
    try:
        assert fleet.main(args) == fleet.NOT_ALL_ERASED  # the tiny random generator draws no face
        client = MlflowClient(tracking_uri=uri)
        (first,) = client.search_model_versions(f"name = '{name}'")
        client.set_registered_model_alias(name, "approved", first.version)
    finally:
        ray.shutdown()
    yield {"uri": uri, "name": name, "out": out, "root": root, "args": args, "generator": tiny_generator,
           "first": first, "client": client}


def _approved(fleets) -> tuple[np.ndarray, np.ndarray]:
    """The base generator's images of SEEDS, and those of the base with the approved run's checkpoint."""
    base = load_generator(str(fleets["generator"]), "cpu")
    run_dir = Path(pq.read_table(fleets["out"] / "ledger.parquet").to_pylist()[0]["run_dir"])
    unlearned = load_generator(str(fleets["generator"]), "cpu", checkpoint=run_dir / "checkpoint.safetensors")
    return render_seeds(base, SEEDS), render_seeds(unlearned, SEEDS)


def test_approved_version_loads_with_pyfunc_and_renders_the_unlearned_weights(fleets, monkeypatch):
    client, name, first = fleets["client"], fleets["name"], fleets["first"]
    run = client.get_run(first.run_id)
    assert first.source == run.info.artifact_uri + "/model"  # an MLflow Model logged into the identity's run
    assert first.tags["identities"] == "s1" and first.tags["base_generator"] == str(fleets["generator"])
    assert {"config_hash", "fleet_key", "all_erased", "checkpoint_uri", "id", "fid_pre"} <= set(first.tags)
    assert {a.path for a in client.list_artifacts(first.run_id, "model")} >= {"model/MLmodel", "model/artifacts"}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fleets["uri"])
    base, expected = _approved(fleets)
    model = mlflow.pyfunc.load_model(f"models:/{name}@approved")
    images = model.predict(pd.DataFrame({"seed": SEEDS}))
    assert images.dtype == np.uint8 and images.shape == (2, 64, 64, 3)
    assert np.array_equal(images, expected)  # the base generator with that run's checkpoint
    assert (images != base).mean() > 0.2  # not the base generator: the unlearned weights
    assert np.array_equal(model.predict({"seed": SEEDS}, params={"truncation": 1.0}), expected)
    assert np.array_equal(model.predict([{"seed": 2}]), expected[1:])
    assert np.array_equal(mlflow.pyfunc.load_model(f"models:/{name}/{first.version}").predict({"seed": SEEDS}),
                          expected)

    meta = model.metadata
    assert [s["name"] for s in meta.signature.inputs.to_dict()] == ["seed"]
    spec = meta.signature.outputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "uint8" and list(spec["shape"]) == [-1, 64, 64, 3]
    assert meta.signature.params.to_dict()[0]["name"] == "truncation"
    # the base generator reference and the pinned requirements (nothing was inferred online)
    found = resolve_generator(f"models:/{name}@approved", fleets["uri"], fleets["out"].parent / "resolved")
    assert found.base == str(fleets["generator"]) and found.pinned == f"models:/{name}/{first.version}"
    reference = found.reference
    assert reference["identities"] == ["s1"] and reference["resolution"] == 64
    assert reference["checkpoint_metadata"]["identity"] == "s1"
    assert reference["checkpoint_metadata"]["config_hash"] == first.tags["config_hash"]
    requirements = (found.checkpoint.parents[1] / "requirements.txt").read_text().split()
    assert all("==" in r for r in requirements) and any(r.startswith("guide_ray==") for r in requirements)


def test_sample_renders_a_registered_generator(fleets, tmp_path, monkeypatch, capsys):
    _, expected = _approved(fleets)
    name = fleets["name"]
    out = tmp_path / "approved"
    assert cli.main(["sample", "--generator", f"models:/{name}@approved", "--seeds", "1,2", "--out", str(out),
                     "--tracking-uri", fleets["uri"], "--device", "cpu"]) == 0
    for seed, image in zip(SEEDS, expected):
        assert np.array_equal(np.asarray(Image.open(out / f"seed{seed:04d}.png").convert("RGB")), image)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fleets["uri"])  # the store found through the environment
    assert cli.main(["sample", "--generator", f"models:/{name}/{fleets['first'].version}", "--seeds", "2",
                     "--out", str(tmp_path / "v1"), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "v1" / "seed0002.png").convert("RGB")), expected[1])
    capsys.readouterr()

    # a name that is not registered; an alias that is not set; --checkpoint beside a registered generator
    for generator, extra, words in (
            ("models:/guide_ray-nobody@approved", [], ["models:/guide_ray-nobody@approved", "'guide_ray-nobody'"]),
            (f"models:/{name}@rejected", [], [f"models:/{name}@rejected", "rejected"]),
            (f"models:/{name}@approved", ["--checkpoint", "c.safetensors"], ["--checkpoint c.safetensors",
                                                                              f"--generator models:/{name}@approved"])):
        code = cli.main(["sample", "--generator", generator, *extra, "--seeds", "1", "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert all(w in err for w in words), err
    assert not (tmp_path / "x").exists()


def _floats(generator, seeds=SEEDS) -> torch.Tensor:
    with torch.no_grad():
        return generator(torch.cat([generator.z_from_seed(s) for s in seeds]))


def test_a_fleet_starts_from_a_registered_version(fleets, monkeypatch):
    """The driver resolves models:/NAME@ALIAS before Ray starts; its workers load the base generator
    with the version's checkpoint (the generator erased from and its pristine copy); a version it
    registers holds the starting tensors under its run's own. (Ray and the networks are left out
    here: a full fleet from a registered version is the same fleet as the one of the fixture.)"""
    client, name, first, root = fleets["client"], fleets["name"], fleets["first"], fleets["root"]
    (root / "ids2.csv").write_text("id,image,seed,others\ns2,,2,\n")
    cfg = load_config(None, QUICK)
    started = fleet.Fleet(read_ids(root / "ids2.csv")[0], cfg, f"models:/{name}@approved", "parallel", root / "out2",
                          fleets["uri"], 0, 1.0, show_progress=False)
    start = client.download_artifacts(first.run_id, "model/artifacts/checkpoint.safetensors", str(root / "approved"))
    assert started.generator == str(fleets["generator"]) and sha256(started.checkpoint) == sha256(start)
    assert Path(started.checkpoint).parent == root / "out2" / "start"  # where the workers read it
    # the key: the base generator, the starting checkpoint's digest, the config
    assert started.fleet_key == f"parallel-{Path(fleets['generator']).name}+{sha256(start)[:8]}-{started.cfg_hash}"
    assert started.start["pinned"] == f"models:/{name}/{first.version}"  # the alias, pinned
    assert started.model_name == name

    monkeypatch.setattr("guide_ray.run.networks.Networks", lambda cfg, device: None)  # the generators only
    worker = IdentityWorker(started.generator, to_dict(cfg), "cpu", None, started.checkpoint)
    approved = load_generator(str(fleets["generator"]), "cpu", checkpoint=start)
    assert torch.equal(_floats(worker.generator), _floats(approved))
    assert torch.equal(_floats(worker.original), _floats(approved))

    # a run of that fleet trained one tensor: its version is the approved generator with that tensor changed
    run_dir = root / "out2" / "runs" / started.fleet_key / "s2"
    tensor = next(n for n, _ in approved.named_parameters())
    changed = {tensor: dict(approved.named_parameters())[tensor].detach() * 0.5}
    save_trainable(run_dir / "checkpoint.safetensors", changed, approved.name, {"identity": "s2"})
    run_id = client.create_run(started.tracker.experiment_id, tags={"identity": "s2"}).info.run_id
    row = {"checkpoint_uri": (run_dir / "checkpoint.safetensors").as_uri(), "mlflow_run_id": run_id,
           "run_dir": str(run_dir)}
    started._register(row, ["s2"], {"id": 0.5}, {"s2": "face_destroyed"})
    (version,) = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    assert version.tags["start_generator"] == f"models:/{name}/{first.version}"
    assert version.tags["start_uri"] == f"models:/{name}@approved" and version.tags["identities"] == "s2"
    found = resolve_generator(f"models:/{name}/{version.version}", fleets["uri"], root / "resolved")
    with safe_open(str(found.checkpoint), framework="pt") as f:
        assert f.metadata()["start_checkpoint_sha256"] == sha256(start) and f.metadata()["identity"] == "s2"
    with torch.no_grad():
        dict(approved.named_parameters())[tensor].copy_(changed[tensor])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fleets["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    assert np.array_equal(model.predict({"seed": SEEDS}), render_seeds(approved, SEEDS))
    client.delete_model_version(name, version.version)  # the next test counts the fixture's fleet's versions


def test_a_resumed_fleet_registers_nothing_new(fleets, capsys):
    client, name = fleets["client"], fleets["name"]
    before = sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))
    assert fleet.main(fleets["args"]) == fleet.NOT_ALL_ERASED  # every identity is done: no Ray, no run
    assert "1 identities already finished, 0 to run" in capsys.readouterr().err
    assert sorted(v.version for v in client.search_model_versions(f"name = '{name}'")) == before


def test_nothing_reached_beyond_this_machine(fleets, offline):
    assert offline == []


@pytest.mark.parametrize("given,seeds", [(pd.DataFrame({"seed": [3, 1]}), [3, 1]), ({"seed": [5]}, [5]),
                                         ({"seed": 7}, [7]), ([2, 4], [2, 4]), (np.array([[9]]), [9])])
def test_seeds_of(given, seeds):
    assert seeds_of(given) == seeds


@pytest.mark.parametrize("given", [pd.DataFrame({"z": [1], "w": [2]}), {"z": [1]}, [1.5], [-1], [True], ["1"]])
def test_seeds_of_refuses(given):
    with pytest.raises(ValueError):
        seeds_of(given)
