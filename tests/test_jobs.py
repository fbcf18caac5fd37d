"""Every shipped job file is valid: each run config resolves through GuideConfig, each sweep file
through the sweep's loader (no Ray), each identities CSV through the fleet's reader."""

import json
from pathlib import Path

import pytest

from guide_ray.config import load_config
from guide_ray.run.identity import IdentitySpec
from guide_ray.run.ids import read_ids
from guide_ray.sweep import load_sweep
from tests.helpers import require_weights

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("path", sorted(JOBS.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_run_configs_resolve(path):
    cfg = load_config(path)
    assert cfg.iterations >= 1


@pytest.mark.parametrize("path", sorted(JOBS.glob("sweep/*.yaml")), ids=lambda p: p.name)
def test_sweep_files_load(path):
    sweep = load_sweep(path)
    assert sweep.space and sweep.ids.is_file()


@pytest.mark.parametrize("path", sorted(JOBS.glob("**/*.csv")), ids=lambda p: p.name)
def test_identity_csvs_read(path):
    require_weights("openpeople")  # photo rows name files of the pulled openpeople weight
    specs, problems = read_ids(path)
    assert specs and not problems
    for spec in specs:  # one spec type in every mode: what crosses to a Ray worker comes back equal
        assert IdentitySpec(**json.loads(json.dumps(spec.to_dict()))) == spec
        assert all(isinstance(p, Path) for p in [spec.image or Path(), *spec.others])
