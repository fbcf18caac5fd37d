"""The GPU check (benchmarks/gpu_check.py) rehearsed on CPU: its dry run, its refusal without CUDA."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import require_weights

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_a_real_run_without_cuda_says_so_in_one_line(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 2
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--dry-run" in lines[0]
    assert "Traceback" not in printed.out + printed.err
    assert not (tmp_path / "check").exists()


def test_stages_and_budgets_are_checked(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--only", "kernels,warp", "--out", str(tmp_path)]) == 2
    assert "unknown stage 'warp'" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--budget expects STAGE=SECONDS"):
        gpu_check.main(["--dry-run", "--budget", "kernel=5", "--out", str(tmp_path)])


@pytest.mark.slow
def test_the_dry_run_rehearses_the_single_process_stages(gpu_check, tmp_path):
    """kernels, ltu-msg, identity and fid on the CPU at tiny sizes: each 'dry' with its figures, the
    report rewritten after each stage; fid measures the G_u the identity stage left."""
    require_weights("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "dlib-mmod")
    out = tmp_path / "check"
    assert gpu_check.main(["--dry-run", "--only", "kernels,ltu-msg,identity,fid", "--out", str(out)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and "dry run" in report["device"]
    stages = report["stages"]
    assert list(stages) == ["kernels", "ltu-msg", "identity", "fid"]
    assert {r["status"] for r in stages.values()} == {"dry"}, stages
    assert set(stages["kernels"]["figures"]) == {"bias_act_lrelu", "upsample2d", "modulated_conv2d_up"}
    for mode in ("fp32", "tf32", "bf16"):
        assert stages["ltu-msg"]["figures"][mode]["s_per_iteration"] > 0
    assert stages["identity"]["figures"]["verdict"] in ("erased", "not_erased", "face_destroyed")
    assert Path(stages["identity"]["figures"]["grid"]).is_file()
    assert stages["fid"]["figures"]["samples"] == 8 and stages["fid"]["figures"]["fid_pre"] > 0
    assert "| fid | dry |" in (out / "gpu_check.md").read_text()


def test_a_stage_without_its_input_is_skipped_and_a_failure_recorded(gpu_check, tmp_path, monkeypatch):
    out = tmp_path / "check"

    def broken(check, budget):
        raise RuntimeError("the kernel exploded")

    monkeypatch.setitem(gpu_check.STAGE_FNS, "kernels", broken)
    assert gpu_check.main(["--dry-run", "--only", "kernels,fid", "--out", str(out)]) == 1
    stages = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert stages["kernels"]["status"] == "failed" and "the kernel exploded" in stages["kernels"]["error"]
    assert stages["fid"]["status"] == "skipped" and "identity stage" in stages["fid"]["why"]
