"""The fleet's joint mode: every identity erased into ONE generator by Ray Train workers.

A TorchTrainer runs ``train_loop`` on ``workers`` workers (DDP: gloo on CPU, NCCL on GPU, one GPU
a worker where there are GPUs); the identities are sharded over them (run/joint.py). Every
``checkpoint_every`` steps rank 0 reports a Ray Train checkpoint (the trainable tensors and the
optimiser; the draws are functions of the step), so a worker killed mid-run restarts the group
from it (FailureConfig), and the same command run again resumes the run of the same name (Ray
Train restores a run from its storage path and name).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..config import GuideConfig, from_dict, to_dict
from ..results import RunResult
from ..run.folder import JOINT, RAY_TRAIN

STATE = "state.pt"


def train_loop(config: dict) -> None:
    """One Ray Train worker: load the generator and the networks, erase the identities jointly."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from ..allocator import keep_freed_memory
    from ..models import load_generator
    from ..run.identity import IdentitySpec
    from ..run.joint import run_joint
    from ..run.networks import Networks
    from .worker import LiveMetrics

    keep_freed_memory()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    pids = Path(config["runs"]) / JOINT
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"worker-{rank}.pid").write_text(str(os.getpid()))  # for whoever watches (or kills) the workers
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    cfg = from_dict(GuideConfig, config["cfg"])
    generator = load_generator(config["generator"], device, checkpoint=config["checkpoint"])
    nets = Networks(cfg, device)
    specs = [IdentitySpec(**s) for s in config["specs"]]
    resume = None
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE, map_location=device, weights_only=True)
    live = LiveMetrics(_tracker(config["live"]), config["live"]["parent"]) if rank == 0 and config["live"] else None

    def barrier():
        if dist.is_initialized():
            dist.barrier()

    def report(state: dict) -> None:
        metrics = {"step": state["step"]}  # the losses go to MLflow as they come (``live``)
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    try:
        run_joint(generator, specs, cfg, nets, config["runs"], identities_per_step=config["identities_per_step"],
                  rank=rank, world=world, wrap=ray.train.torch.prepare_model, barrier=barrier, resume=resume,
                  on_checkpoint=report, on_step=live)
    finally:
        if live is not None:
            live.close()


def _tracker(live: dict):
    from ..tracking import Tracker

    return Tracker(live["uri"], Path(live["artifacts"]))


def run_trainer(*, specs: list, cfg: GuideConfig, generator: str, checkpoint: str | None, runs: Path, name: str,
                workers: int, gpus_per_worker: float, live: dict | None, max_failures: int = 3) -> list[RunResult]:
    """Fit the TorchTrainer (resuming the run ``name`` under RUNS/_ray_train when it exists) and
    return every identity's result, read from its folder. ``cfg.identities_per_step`` 0: all the
    identities, rounded down to a multiple of the workers."""
    import json

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..ray_session import size_workers, worker_env

    size = size_workers(workers, gpus_per_worker)
    per_step = cfg.identities_per_step or len(specs) // size.count * size.count
    if not per_step:
        raise ValueError(f"{len(specs)} identities cannot be shared by {size.count} workers: use fewer workers")
    per_worker = {"GPU": size.gpus, "CPU": size.threads} if size.gpus else {"CPU": size.threads}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": to_dict(cfg), "generator": generator, "checkpoint": checkpoint,
                           "specs": [s.to_dict() for s in specs], "runs": str(runs), "threads": size.threads,
                           "identities_per_step": per_step, "live": live},
        scaling_config=ScalingConfig(num_workers=size.count, use_gpu=size.gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=str(runs / RAY_TRAIN),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env=worker_env() or {}),
    )
    trainer.fit()
    return [RunResult.from_dict(json.loads((runs / s.id / "result.json").read_text())) for s in specs]
