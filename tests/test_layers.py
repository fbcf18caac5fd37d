"""The layering in pyproject.toml's [tool.importlinter] holds (core knows nothing of the layers above
it, nor of Ray or MLflow; the config loads no torch), and the checker really sees our imports."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    done = lint()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_contract_our_imports_break_is_reported_broken(tmp_path):
    # The identity run imports the method: a contract that forbids it must fail, naming the import.
    config = tmp_path / "contracts.ini"
    config.write_text("[importlinter]\nroot_package = guide_ray\n\n[importlinter:contract:upside-down]\n"
                      "name = core above run\ntype = layers\nlayers =\n    guide_ray.core\n    guide_ray.run\n")
    done = lint("--config", str(config))
    assert done.returncode == 1 and "BROKEN" in done.stdout, done.stdout[-3000:]
    assert "guide_ray.run.identity -> guide_ray.core" in done.stdout


def test_reading_a_config_loads_no_torch():
    code = ("import sys, guide_ray.config as c; c.load_config('jobs/configs/demo-cpu.yaml'); "
            "bad = [m for m in ('torch', 'numpy', 'ray', 'mlflow') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
