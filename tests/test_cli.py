"""The one CLI: its subcommands, --version, the resolved config it prints, and fleet / sweep
reached through it with their own options and exit codes."""

import subprocess
import sys
from pathlib import Path

import yaml

from guide_ray import cli
from guide_ray.config import GuideConfig, config_hash, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def guide_ray(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guide_ray", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_subcommand_and_version_prints_the_installed_one():
    done = guide_ray("--help")
    assert done.returncode == 0
    listed = done.stdout.split("positional arguments:")[1]
    for command in ("unlearn", "fleet", "sweep", "evaluate", "export", "sample", "config", "weights", "bench"):
        assert f"\n    {command} " in listed, command
    from importlib.metadata import version

    done = guide_ray("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"guide_ray {version('guide_ray')}"


def test_config_prints_the_resolved_config_that_a_run_would_use(capsys):
    args = ["--config", "jobs/configs/demo-cpu.yaml", "--preset", "baseline", "--set", "lr=2e-4"]
    assert cli.main(["config", *args]) == 0
    out = capsys.readouterr().out
    expected = load_config("jobs/configs/demo-cpu.yaml", ["lr=2e-4"], preset="baseline")
    printed = from_dict(GuideConfig, yaml.safe_load(out))
    assert printed == expected and f"hash {config_hash(expected)}" in out.splitlines()[0]
    assert printed.lr == 2e-4 and printed.target == "average"  # the --set and the preset were applied
    assert cli.main(["config", "--set", "iterations=-1"]) == 2  # an invalid one is refused, with its key
    assert "iterations" in capsys.readouterr().err


def test_fleet_and_sweep_are_reached_with_their_own_options(tmp_path):
    bad = tmp_path / "ids.csv"
    bad.write_text("id,seed\nx,-3\n")
    done = guide_ray("fleet", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "seed '-3' is not a non-negative integer" in done.stderr, done.stderr
    done = guide_ray("fleet", "--help")
    assert done.returncode == 0 and "--mode" in done.stdout and "--skip-invalid" in done.stdout
    done = guide_ray("sweep", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml" in done.stderr
