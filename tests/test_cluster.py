"""cluster/ and jobs/runtime_env.yaml: the files that take guide_ray to a Ray cluster are valid for the
tools that read them (the autoscaler's JSON schema, Ray's CLI, runtime_env parser and packager, the
fields KubeRay needs), agree with one another, and name files, generators and options that exist.
local-head.sh starts a real head through `make head` in a shell without the venv, and the submit
command it prints runs a fleet there as printed; its flags for other settings and its `stop`, which
must leave every other Ray on the machine alone, are checked against stubs."""

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import jsonschema
import pytest
import ray
import yaml

from guide_ray import fleet, weights
from guide_ray.config import apply_override, load_config
from guide_ray.models import GENERATORS
from guide_ray.ray_session import worker_env
from guide_ray.run.ids import read_ids
from tests.helpers import NETS, free_port, require_weights
from tests.test_fleet import check_records, ledger_rows

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RUNTIME_ENV = ROOT / "jobs" / "runtime_env.yaml"
SCRIPT = CLUSTER / "local-head.sh"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def ray_cli(argv: list[str]) -> None:
    """Parse ``ray ARGV`` with Ray's own click CLI (nothing runs): an unknown command or option fails."""
    from ray.scripts.scripts import cli

    command, args, path = cli, list(argv), ["ray"]
    while hasattr(command, "get_command"):  # groups: `ray job submit`
        name = args.pop(0)
        sub = command.get_command(None, name)
        assert sub is not None, f"`{' '.join(path)}` has no command {name!r}"
        command, path = sub, path + [name]
    command.make_context(" ".join(path), args)


def fleet_parser() -> argparse.ArgumentParser:
    """The argument parser `python -m guide_ray.fleet` builds (caught before it parses anything)."""
    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), pytest.raises(Caught) as caught:
        fleet.main([])
    return caught.value.args[0]


def check_fleet_command(argv: list[str]) -> None:
    """ARGV after `python -m guide_ray.fleet`: options the fleet's own parser accepts, a CSV of the
    repo that validates, a known generator, a config that loads, an absolute --out (a job's working
    dir is a temporary copy)."""
    try:
        args = fleet_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"python -m guide_ray.fleet refuses {argv}")
    require_weights("openpeople")  # the CSVs name photos of the pulled openpeople weight
    specs, problems = read_ids(ROOT / args.ids)
    assert specs and not problems
    assert args.generator in GENERATORS, f"unknown generator in {argv}"
    load_config(args.config and str(ROOT / args.config), args.set, args.preset)
    assert re.match(r"(/|\$PWD/)", args.out), f"--out must be absolute in {argv}"


def commands(text: str) -> list[list[str]]:
    """The shell commands of a text: continuation lines joined, comments dropped, split at ; && || | & ( )."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, current = True, []
        for token in lexer:
            if set(token) <= set("();|&"):
                found.append(current)
                current = []
            else:
                current.append(token)
        found.append(current)
    return [c for c in found if c]


def stub_python(folder: Path, python: str) -> None:
    (folder / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
    (folder / "python").chmod(0o755)


def run_script(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run local-head.sh with a stub `ray` that logs 'RAY_AUTH_MODE|its arguments' per call (beside it,
    the suite's python: the script checks that RAY's environment has the project)."""
    stub, log = tmp_path / "ray", tmp_path / "ray.log"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s|%s\\n" "${RAY_AUTH_MODE-unset}" "$*" >> "$STUB_LOG"\n')
    stub.chmod(0o755)
    if not (tmp_path / "python").exists():
        stub_python(tmp_path, sys.executable)
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # e.g. the suite's RAY_AUTH_MODE
    proc = subprocess.run(["bash", str(SCRIPT), *args], env={**base, "RAY": str(stub), "STUB_LOG": str(log), **env},
                          capture_output=True, text=True, timeout=30)
    return proc, (log.read_text().splitlines() if log.exists() else [])


def test_local_head_script_passes_its_defaults_and_settings_to_ray(tmp_path):
    """What the real head (below) does not exercise: the default ports, auth disabled, the sizes, status."""
    proc, calls = run_script(tmp_path, "start", RAY_AUTH_MODE="disabled", RAY_HEAD_NUM_CPUS="3",
                             RAY_HEAD_NUM_GPUS="1", RAY_HEAD_TEMP_DIR="/tmp/rh")
    assert proc.returncode == 0 and len(calls) == 1, proc.stderr
    mode, start = calls[0].split("|")
    argv = start.split()
    assert mode == "disabled" and argv[:2] == ["start", "--head"]
    assert {"--port=6379", "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--dashboard-agent-listen-port=52365",
            "--num-cpus=3", "--num-gpus=1", "--temp-dir=/tmp/rh"} <= set(argv)
    ray_cli(argv)
    assert "export RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=disabled" in proc.stdout

    proc, calls = run_script(tmp_path, "start")  # token auth: a token must exist before the head starts
    assert proc.returncode == 0 and [c.split("|")[0] for c in calls] == ["token", "token"]
    assert calls[0] == "token|get-auth-token --generate"
    ray_cli(calls[0].split("|")[1].split())
    proc, calls = run_script(tmp_path, "status", RAY_HEAD_PORT="7001")
    assert calls == ["token|status --address=127.0.0.1:7001"]
    ray_cli(calls[0].split("|")[1].split())
    # RAY's environment must have the project: the head's jobs run with its python.
    stub_python(tmp_path, shutil.which("python3", path="/usr/bin:/bin") or "/nonexistent")
    proc, calls = run_script(tmp_path, "start")
    assert proc.returncode == 2 and "cannot import guide_ray and torch" in proc.stderr and calls == []


def test_local_head_stop_stops_its_own_session_and_nothing_else(tmp_path):
    """`stop` finds the GCS on RAY_HEAD_PORT and ends the processes that name its session dir and their
    children, and the processes that name its address; another head's (another port) keep running.
    Stand-ins: bash scripts named like Ray's processes, with Ray's arguments, each with a child `sleep`."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("gcs_server", "raylet", "client_server"):
        (fake / name).write_text('#!/usr/bin/env bash\nsleep 300 & echo $! > "$PIDFILE"\nwait\n')
        (fake / name).chmod(0o755)
    mine, other = free_port(), free_port()
    while other == mine:
        other = free_port()

    def spawn(name, tag, *args):
        pidfile = tmp_path / f"{tag}.child"
        proc = subprocess.Popen([str(fake / name), *args], env={**os.environ, "PIDFILE": str(pidfile)},
                                start_new_session=True)
        return proc, pidfile

    procs = {}
    for tag, port, session in (("", mine, "session_a"), ("other_", other, "session_b")):
        procs |= {
            f"{tag}gcs": spawn("gcs_server", f"{tag}gcs", "--node-ip-address=127.0.0.1", f"--gcs_server_port={port}",
                               f"--session-dir=/tmp/fake/{session}"),
            f"{tag}raylet": spawn("raylet", f"{tag}raylet", f"--raylet_socket_name=/tmp/fake/{session}/sockets/raylet"),
            # Ray's client server names only the GCS address, and `ray start`, its parent, has exited
            f"{tag}client": spawn("client_server", f"{tag}client", f"--address=127.0.0.1:{port}", "--port=10001"),
        }

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    try:
        for tag, (_, pidfile) in procs.items():
            deadline = time.time() + 10
            while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
                time.sleep(0.05)
        children = {tag: int(pidfile.read_text()) for tag, (_, pidfile) in procs.items()}
        proc, calls = run_script(tmp_path, "stop", RAY_HEAD_PORT=str(mine))
        assert proc.returncode == 0 and calls == [], proc.stderr
        assert f"Stopped the Ray head on port {mine} (6 processes)" in proc.stdout
        for tag, (p, _) in procs.items():
            ours = not tag.startswith("other")
            if ours:
                p.wait(timeout=10)
            assert alive(p.pid) != ours and alive(children[tag]) != ours, tag
        proc, _ = run_script(tmp_path, "stop", RAY_HEAD_PORT=str(mine))  # nothing left there: a note, not an error
        assert proc.returncode == 0 and f"no Ray head of yours with its GCS on port {mine}" in proc.stdout
    finally:
        for p, pidfile in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            if pidfile.exists() and pidfile.read_text().strip() and alive(int(pidfile.read_text())):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


# Seconds per identity on 2 CPU cores: two steps, the cheaper ID metric (the loss's dlib net, already
# loaded), no adjacency, global or re-inversion terms, FID on 4 samples; and verdict thresholds by which
# every image is a face and any ID below 1 another person, so the random generator "erases" and the
# job succeeds (a fleet that erases nothing exits non-zero: that path is test_fleet.py's).
FAST_AND_ERASED = ["iterations=2", "checkpoint_every=1", "latent_pool=2", "lr=0.01", "use_adjacency=false",
                   "use_global=false", "target_face_check=false", "id_metric_net=dlib-resnet34",
                   "evaluation.fid_samples=4", "evaluation.fid_batch=4", "evaluation.face_samples=0",
                   "evaluation.reinversion=false", "evaluation.face_threshold=-1", "evaluation.id_threshold=1.0"]


def shell_without_venv() -> dict[str, str]:
    """This process's environment as a shell with no virtualenv activated has it: no VIRTUAL_ENV, no
    venv on PATH, none of the suite's Ray or MLflow settings (the weights cache kept)."""
    venv_bins = {str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin")}
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("RAY_", "MLFLOW_"))}
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                  if p and os.path.abspath(p) not in venv_bins)
    env["GUIDE_RAY_CACHE"] = str(weights.cache_dir())
    return env


@pytest.mark.slow
@pytest.mark.weights
def test_make_head_then_its_printed_submit_command_run_a_fleet_from_a_shell_without_the_venv(tiny_generator, tmp_path):
    """`make head` in a shell with no venv, then the submit command it prints, as printed, with only the
    demo fleet's arguments replaced: a CSV of one seed, the tiny generator, a quick config
    (FAST_AND_ERASED), an out dir here. The job succeeds; the identity's ledger row, MLflow run and
    files land."""
    require_weights(*NETS)
    shell = shell_without_venv()
    probe = subprocess.run(["bash", "-c", "python -c 'import guide_ray, torch'"], env=shell, capture_output=True)
    assert probe.returncode != 0, "this shell's python has the project: the test would not show the venv matters"
    ports = set()
    while len(ports) < 3:  # free ports and a temp dir of its own: other Rays on this machine are left alone
        ports.add(free_port())
    gcs, dash, agent = sorted(ports)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths under it have a length limit
    head_env = {**shell, "RAY_HEAD_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(dash), "RAY_AGENT_PORT": str(agent),
                "RAY_HEAD_NUM_CPUS": "2", "RAY_HEAD_TEMP_DIR": temp}
    tree: dict = {}
    for item in FAST_AND_ERASED:
        apply_override(tree, item)
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(tree))
    ids = tmp_path / "ids.csv"  # one seed: nothing to invert; many identities are test_fleet.py's
    ids.write_text("id,image,seed,others\ns9,,9,\n")
    out = tmp_path / "out"
    # -o: never reinstall into the suite's venv here (make test has just installed it)
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]
    try:
        started = subprocess.run([*make, "head"], cwd=ROOT, env=head_env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        printed = started.stdout.split("\nRay head on port ", 1)[1]
        block = "\n".join(line for line in printed.splitlines() if line.startswith("    ")) + "\n"
        cd, export, submit = commands(block)
        assert cd == ["cd", str(ROOT)] and export == ["export", f"RAY_ADDRESS=http://127.0.0.1:{dash}", "RAY_AUTH_MODE=token"]
        assert submit[0] == str(ROOT / ".venv" / "bin" / "ray")  # absolute: not on this shell's PATH
        ray_cli(submit[1:])
        entry = submit[submit.index("--") + 1:]
        assert entry[:3] == ["python", "-m", "guide_ray.fleet"]
        check_fleet_command(entry[3:])  # the demo as printed: a CSV, generator and config that exist
        for placeholder, value in [(" jobs/demo/ids.csv ", f" {shlex.quote(str(ids))} "),
                                   (" dcgan-digiface64 ", f" {shlex.quote(str(tiny_generator))} "),
                                   (" jobs/configs/demo-cpu.yaml ", f" {shlex.quote(str(config))} "),
                                   (shlex.quote(str(ROOT / "outputs" / "head-demo")), shlex.quote(str(out)))]:
            assert block.count(placeholder) == 1, placeholder
            block = block.replace(placeholder, value)
        done = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=shell, capture_output=True, text=True,
                              timeout=600)
        logs = done.stdout + done.stderr
        assert done.returncode == 0, logs[-5000:]
        assert "verdicts: 1 erased of 1 identities" in logs and f"ledger: {out / 'ledger.parquet'}" in logs, logs[-5000:]
        rows = check_records(out, ["s9"], "parallel")  # its ledger row and MLflow run, with metrics and files
        assert rows["s9"]["verdict"] == "erased" and len(ledger_rows(out)) == 1
        assert (Path(rows["s9"]["run_dir"]) / "result.json").exists()
    finally:
        stopped = subprocess.run([*make, "head-stop"], cwd=ROOT, env=head_env, capture_output=True, text=True,
                                 timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert stopped.returncode == 0 and f"Stopped the Ray head on port {gcs}" in stopped.stdout, stopped.stderr
    left = subprocess.run(["pgrep", "-f", f"gcs_server .*--gcs_server_port={gcs}( |$)"], capture_output=True)
    assert left.returncode == 1, left.stdout  # the head is gone


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "start|stop|status"),
    (("restart",), {}, "unknown command 'restart'"),
    (("start",), {"RAY_HEAD_PORT": "abc"}, "RAY_HEAD_PORT='abc' is not a TCP port"),
    (("start",), {"RAY_DASHBOARD_PORT": "70000"}, "RAY_DASHBOARD_PORT='70000' is not a TCP port"),
    (("start",), {"RAY_HEAD_PORT": "7001", "RAY_AGENT_PORT": "7001"}, "must differ (7001, 8265, 7001)"),
    (("start",), {"RAY_AUTH_MODE": "yes"}, "RAY_AUTH_MODE='yes': use token or disabled"),
    (("start",), {"RAY_HEAD_NUM_GPUS": "1.5"}, "RAY_HEAD_NUM_GPUS='1.5' is not a whole number"),
    (("status",), {"RAY": "/nonexistent/ray"}, "'/nonexistent/ray' not found"),
])
def test_local_head_script_refuses_bad_input_before_running_ray(tmp_path, args, env, message):
    proc, calls = run_script(tmp_path, *args, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert calls == []


def test_gpu_cloud_config_validates_against_rays_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / "gpu-cloud.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # The validation is real: copies with a fractional GPU count or a misspelt key are refused.
    fractional = copy.deepcopy(config)
    fractional["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5
    misspelt = {**copy.deepcopy(config), "head_node_typ": "head"}
    for broken in (fractional, misspelt):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    # What `ray up` does before it contacts AWS: merge the provider's defaults, check node types.
    validate_config(prepare_config(copy.deepcopy(config)))

    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] >= 1  # a fleet sees a GPU when it starts
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        for argv in commands(command):
            if argv[0] == "ray":
                ray_cli(argv[1:])
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "python -m guide_ray weights pull" in setup
    for local in config["file_mounts"].values():
        assert (ROOT / local).exists(), local
    cache = load(RUNTIME_ENV)["env_vars"]["GUIDE_RAY_CACHE"]
    assert f"--env GUIDE_RAY_CACHE={cache}" in config["docker"]["run_options"]
    assert f"--volume {cache}:{cache}" in config["docker"]["run_options"]
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_version()}-")
    # The head runs the MLflow server the jobs log to.
    uri = load(RUNTIME_ENV)["env_vars"]["MLFLOW_TRACKING_URI"]
    assert [c for c in config["head_start_ray_commands"] if "tracking/server.sh" in c and f"{uri}/health" in c]


def ray_version() -> str:
    """The Ray version of the cluster images (the Dockerfile's base; all files must agree)."""
    match = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert match, "cluster/Dockerfile must build FROM rayproject/ray:VERSION-..."
    return match.group(1)


def test_kuberay_manifests_carry_what_a_raycluster_and_a_rayjob_need():
    (claim,) = yaml.safe_load_all((CLUSTER / "kuberay" / "storage.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (cluster,) = yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    (job,) = yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster") and cluster["metadata"]["name"]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_version()
    env_vars = load(RUNTIME_ENV)["env_vars"]

    images = set()
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings"
        ray_cli(["start", *(["--head"] if name == "head" else ["--address=head:6379"]),
                 *[f"--{k}={v}" for k, v in params.items()]])  # KubeRay turns them into `ray start` flags
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]  # KubeRay's Ray container is the first
        assert ray_container["image"] and ray_container["resources"]["limits"]
        declared = {v["name"] for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            images.add(c["image"])
            assert {m["name"] for m in c.get("volumeMounts", [])} <= declared, f"{name}/{c['name']}"
        env = {e["name"]: e["value"] for e in ray_container["env"]}
        assert env["GUIDE_RAY_CACHE"] == env_vars["GUIDE_RAY_CACHE"]
        mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
        assert env_vars["GUIDE_RAY_CACHE"] in mounts and "/mnt/shared" in mounts
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [claim["metadata"]["name"]]
        pull = [c for c in pod.get("initContainers", []) if "guide_ray weights pull" in " ".join(c["command"])]
        assert pull, f"{name}: no init container pulls the open weights"
    head = spec["headGroupSpec"]
    assert "dashboard-host" in head["rayStartParams"]
    head_env = {e["name"]: e["value"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert head_env["MLFLOW_TRACKING_URI"] == env_vars["MLFLOW_TRACKING_URI"]
    (mlflow,) = [c["command"] for c in head["template"]["spec"]["containers"] if "tracking/server.sh" in c.get("command", [])]
    uri = urlparse(env_vars["MLFLOW_TRACKING_URI"])  # the server beside the head is the one the jobs log to
    assert mlflow[mlflow.index("--host") + 1] == uri.hostname and mlflow[mlflow.index("--port") + 1] == str(uri.port)
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    g = gpu_groups[0]
    assert 1 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]

    run = job["spec"]
    argv = shlex.split(run["entrypoint"])
    assert argv[:3] == ["python", "-m", "guide_ray.fleet"]
    check_fleet_command(argv[3:])
    assert run["runtimeEnvYAML"] == RUNTIME_ENV.read_text(), "rayjob.yaml: copy jobs/runtime_env.yaml into runtimeEnvYAML"
    assert run["shutdownAfterJobFinishes"] is True and run["submissionMode"] in ("K8sJobMode", "HTTPMode")
    assert run["rayClusterSpec"] == spec, "rayjob.yaml's rayClusterSpec differs from raycluster.yaml's spec"
    # working_dir "." is the submitter's working directory: the image's WORKDIR, where the project is.
    submitter = run["submitterPodTemplate"]["spec"]["containers"][0]
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert submitter["workingDir"] == workdir and {submitter["image"]} == images and len(images) == 1


def test_runtime_env_is_valid_for_ray_and_keeps_the_upload_small(tmp_path, monkeypatch):
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv
    from ray._private.runtime_env.packaging import create_package

    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV))  # what `ray job submit --runtime-env` does
    RuntimeEnv(**env)
    assert env["working_dir"] == "." and "pip" not in env and "conda" not in env
    monkeypatch.setenv("GUIDE_RAY_CACHE", "/x")
    assert set(worker_env()["env_vars"]) <= set(env["env_vars"])
    assert {"GUIDE_RAY_CACHE", "MLFLOW_TRACKING_URI"} <= set(env["env_vars"])

    # The excludes alone (no .gitignore / .rayignore) keep generated and heavy folders out.
    tree = tmp_path / "tree"
    for rel in (".git/objects/pack", ".venv/lib/torch.so", ".venv-oracle/x", "outputs/demo/mlflow.db",
                "build/lib/x.py", "guide_ray.egg-info/PKG-INFO", "guide_ray/__pycache__/fleet.pyc",
                ".pytest_cache/v", ".ruff_cache/v", "guide_ray/fleet.py", "jobs/demo/ids.csv"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    create_package(str(tree), tmp_path / "tree.zip", include_gitignore=False, excludes=env["excludes"])
    assert sorted(zipfile.ZipFile(tmp_path / "tree.zip").namelist()) == ["guide_ray/fleet.py", "jobs/demo/ids.csv"]
    # The real checkout, as Ray would upload it: the project's files, a few MB.
    create_package(str(ROOT), tmp_path / "repo.zip", include_gitignore=True, excludes=env["excludes"])
    names = zipfile.ZipFile(tmp_path / "repo.zip").namelist()
    assert {"guide_ray/fleet/__init__.py", "jobs/demo/ids.csv", "jobs/configs/demo-cpu.yaml", "tracking/server.sh"} <= set(names)
    assert not [n for n in names if re.match(r"(\.git|\.venv|outputs)/", n)]
    assert (tmp_path / "repo.zip").stat().st_size < 10 * 2**20


def test_readme_commands_name_files_and_options_that_exist():
    text = (CLUSTER / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#:]+)\)", text):  # relative links
        assert (CLUSTER / link).exists(), f"cluster/README.md links to missing {link}"
    for path in re.findall(r"(?<![\w/.~$-])((?:cluster|jobs|tracking|guide_ray|tests)/[\w./-]*\w)", text):
        assert (ROOT / path).exists(), f"cluster/README.md names missing {path}"
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    checked = {"ray": 0, "fleet": 0, "make": 0}
    for argv in commands(blocks):
        if Path(argv[0]).name == "ray":  # ray, or a venv's by its path
            ray_cli(argv[1:])
            checked["ray"] += 1
        if "guide_ray.fleet" in argv:
            check_fleet_command(argv[argv.index("guide_ray.fleet") + 1:])
            checked["fleet"] += 1
        if argv[0] == "make":
            assert argv[1] in targets, f"cluster/README.md: no make target {argv[1]}"
            checked["make"] += 1
    assert checked == {"ray": 8, "fleet": 3, "make": 4}, checked  # the checks saw every command
