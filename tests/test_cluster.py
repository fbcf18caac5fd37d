"""cluster/ and jobs/runtime_env.yaml: the files that take guide_ray to a Ray cluster are valid for the
tools that read them (the autoscaler's JSON schema, Ray's CLI, runtime_env parser and packager, the
fields KubeRay needs), agree with one another, and name files, generators and options that exist.
local-head.sh runs against a stub `ray` (a real `ray stop` would stop every Ray on the machine,
including the suite's `cluster` fixture); the real head is what that fixture starts."""

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import zipfile
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import jsonschema
import pytest
import ray
import yaml

from guide_ray import fleet
from guide_ray.core.config import load_config
from guide_ray.models import GENERATORS
from tests.conftest import require_weights

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
    specs, problems = fleet.read_ids(ROOT / args.ids)
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


def run_script(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run local-head.sh with a stub `ray` that logs 'RAY_AUTH_MODE|its arguments' per call."""
    stub, log = tmp_path / "ray", tmp_path / "ray.log"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s|%s\\n" "${RAY_AUTH_MODE-unset}" "$*" >> "$STUB_LOG"\n')
    stub.chmod(0o755)
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # e.g. the suite's RAY_AUTH_MODE
    proc = subprocess.run(["bash", str(SCRIPT), *args], env={**base, "RAY": str(stub), "STUB_LOG": str(log), **env},
                          capture_output=True, text=True, timeout=30)
    return proc, (log.read_text().splitlines() if log.exists() else [])


def test_local_head_script_starts_ray_with_the_dashboard_on_loopback_and_prints_how_to_submit(tmp_path):
    proc, calls = run_script(tmp_path, "start", RAY_HEAD_PORT="7001", RAY_DASHBOARD_PORT="7002",
                             RAY_AGENT_PORT="7003", RAY_HEAD_NUM_CPUS="3")
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == "token|get-auth-token --generate"  # a token must exist before a token-mode head starts
    mode, start = calls[1].split("|")
    assert mode == "token" and len(calls) == 2
    argv = start.split()
    assert argv[:2] == ["start", "--head"]
    for flag in ("--port=7001", "--dashboard-host=127.0.0.1", "--dashboard-port=7002",
                 "--dashboard-agent-listen-port=7003", "--num-cpus=3"):
        assert flag in argv
    ray_cli(argv)
    ray_cli(calls[0].split("|")[1].split())
    # It prints the address to export and a job submission that works as printed.
    assert "export RAY_ADDRESS=http://127.0.0.1:7002 RAY_AUTH_MODE=token" in proc.stdout
    shown = commands("\n".join(line for line in proc.stdout.splitlines() if line.startswith("    ")))
    submit = next(c for c in shown if c[1:3] == ["job", "submit"])
    assert submit[0] == str(tmp_path / "ray")
    ray_cli(submit[1:])
    check_fleet_command(submit[submit.index("guide_ray.fleet") + 1:])

    proc, calls = run_script(tmp_path, "start", RAY_AUTH_MODE="disabled")
    assert proc.returncode == 0 and len(calls) == 1
    assert calls[0].startswith("disabled|start --head")
    assert {"--port=6379", "--dashboard-port=8265", "--dashboard-agent-listen-port=52365"} <= set(calls[0].split())
    assert "RAY_AUTH_MODE=disabled" in proc.stdout

    assert run_script(tmp_path, "stop")[1] == ["token|stop"]
    proc, calls = run_script(tmp_path, "status", RAY_HEAD_PORT="7001")
    assert calls == ["token|status --address=127.0.0.1:7001"]
    ray_cli(calls[0].split("|")[1].split())


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
    assert set(fleet.worker_env()["env_vars"]) <= set(env["env_vars"])
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
    assert {"guide_ray/fleet.py", "jobs/demo/ids.csv", "jobs/configs/demo-cpu.yaml", "tracking/server.sh"} <= set(names)
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
        if argv[0] == "ray":
            ray_cli(argv[1:])
            checked["ray"] += 1
        if "guide_ray.fleet" in argv:
            check_fleet_command(argv[argv.index("guide_ray.fleet") + 1:])
            checked["fleet"] += 1
        if argv[0] == "make":
            assert argv[1] in targets, f"cluster/README.md: no make target {argv[1]}"
            checked["make"] += 1
    assert checked == {"ray": 8, "fleet": 3, "make": 2}, checked  # the checks saw every command
