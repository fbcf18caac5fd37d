"""A sweep's results: the trials table, the Pareto front over the trials that erased every identity,
its files, and the trial a user exports (its configuration and its unlearned generators)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from ..config import config_hash, to_dict
from ..run.folder import CHECKPOINT
from .spec import OBJECTIVES, Param, Sweep, SweepError


def pareto_front(rows: list[dict], keys=("unlearning", "preservation")) -> list[dict]:
    """The rows no other row dominates (<= in every key and < in one); all keys are minimised."""
    def dominates(a, b):
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def trial_rows(grid, space: dict[str, Param]) -> list[dict]:
    rows = []
    for result in grid:
        m = result.metrics or {}
        params = {k: result.config.get(k) for k in space}
        complete = m.get("unlearning") is not None
        status = "error" if result.error else "complete" if complete else "stopped early"
        rows.append({"trial": m.get("trial_id") or Path(result.path).name, "status": status,
                     "reports": m.get("training_iteration"), **params,
                     **{k: m.get(k) for k in ("unlearning", "preservation", "score", "erased", "identities", "id",
                                              "id_others", "fid_pre", "id_now", "drift", "progress_score",
                                              "started_at")},
                     # the trial's last Tune checkpoint (the final one for a complete trial)
                     "checkpoint": result.checkpoint.path if result.checkpoint else None})
    return rows


def write_results(sweep: Sweep, rows: list[dict], out: Path) -> tuple[list[dict], list[Path]]:
    """trials.csv, pareto.csv/.md/.png, parallel_coordinates.png; returns the front and the files."""
    from ..review import cell, parallel_coordinates, pyplot

    plt = pyplot()

    complete = [r for r in rows if r["status"] == "complete"]
    feasible = [r for r in complete if all_erased(r)]  # a trial that left anyone un-erased is no candidate
    front = sorted(pareto_front(feasible), key=lambda r: r["unlearning"])
    columns = list(rows[0]) if rows else []
    files = []
    for name, table in (("trials.csv", rows), ("pareto.csv", front)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
        files.append(out / name)
    shown = ["trial", *sweep.space, "unlearning", "preservation", "score"]
    md = [f"Pareto front of sweep `{sweep.name}` over the {len(feasible)} trials that erased every identity "
          f"({len(complete)} complete trials of {len(rows)}; {sum(r['status'] == 'stopped early' for r in rows)} "
          f"stopped early by ASHA). Lower is better.", "",
          "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(cell(r[k]) for k in shown) + " |" for r in front]
    (out / "pareto.md").write_text("\n".join(md) + "\n")
    files.append(out / "pareto.md")

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter([r["unlearning"] for r in feasible], [r["preservation"] for r in feasible], c="0.6", s=22,
               label="every identity erased")
    others = [r for r in complete if not all_erased(r)]
    if others:
        ax.scatter([r["unlearning"] for r in others], [r["preservation"] for r in others], marker="x", c="0.75",
                   s=22, label="some identity not erased")
    ax.plot([r["unlearning"] for r in front], [r["preservation"] for r in front], "o-", c="tab:red", ms=6,
            label="Pareto front")
    base = [r for r in complete if all(r[k] == sweep.base[k] for k in sweep.space)]
    if base:
        ax.scatter([r["unlearning"] for r in base], [r["preservation"] for r in base], marker="*", s=220,
                   c="tab:blue", zorder=5, label="base configuration")
    ax.set_xlabel("unlearning: mean(ID, ID_others)  (lower = more forgotten)")
    ax.set_ylabel("preservation: FID_pre  (lower = less changed)")
    ax.set_title(f"{sweep.name}: {len(complete)} complete trials, {len(feasible)} erased every identity",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png")
    plt.close(fig)
    files.append(out / "pareto.png")
    files.append(parallel_coordinates(rows, [*sweep.space, "unlearning", "preservation"],
                                      out / "parallel_coordinates.png", color_by="score",
                                      title=f"{sweep.name}: {len(rows)} trials (dashed: stopped early or failed)",
                                      log_axes={k for k, p in sweep.space.items() if p.log}))
    return front, files


def all_erased(row: dict) -> bool:
    """Did a complete trial erase every identity?"""
    return row.get("erased") is not None and row["erased"] == row.get("identities")


def pick(rows: list[dict], front: list[dict], how: str) -> dict:
    """The trial to export: the front's lowest 'score', 'unlearning' or 'preservation', or a trial id."""
    if how in OBJECTIVES:
        if not front:
            raise SweepError("no trial erased every identity, so there is nothing to export")
        return min(front, key=lambda r: r[how])
    for r in rows:
        if r["trial"] == how:
            if r["status"] != "complete":
                raise SweepError(f"trial {how} did not complete ({r['status']})")
            if not all_erased(r):
                raise SweepError(f"trial {how} did not erase every identity ({r['erased']} of {r['identities']})")
            return r
    raise SweepError(f"--pick {how!r}: not one of {', '.join(OBJECTIVES)} nor a trial id of this sweep")


def export_config(sweep: Sweep, row: dict, path: Path, generators: Path | None = None) -> None:
    """The trial's full configuration as fleet YAML (``generators``: where its generators were exported)."""
    cfg = sweep.config({k: row[k] for k in sweep.space})
    header = (f"# From sweep {sweep.name}, trial {row['trial']}: unlearning {row['unlearning']:.4f}, "
              f"FID_pre {row['preservation']:.3f}, score {row['score']:.4f}.\n"
              f"# Use it with: python -m guide_ray.fleet IDS.csv --generator {sweep.generator} --config {path}\n"
              + (f"# The trial's unlearned generators: {generators}/ID/checkpoint.safetensors (load_generator("
                 f"{sweep.generator!r}, checkpoint=...))\n" if generators else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def export_generators(sweep: Sweep, row: dict, folder: Path) -> list[Path]:
    """The trial's unlearned generator of each identity as FOLDER/ID/checkpoint.safetensors (the
    project's checkpoint format: ``load_generator(sweep.generator, checkpoint=PATH)``), taken from
    the trial's final Tune checkpoint."""
    from ..models import load_generator
    from ..models.checkpoint import metadata_json, save_trainable
    from .trainable import read_checkpoint

    if not row.get("checkpoint") or not Path(row["checkpoint"]).is_dir():
        raise SweepError(f"trial {row['trial']} has no checkpoint to export (looked for {row.get('checkpoint')})")
    saved = read_checkpoint(row["checkpoint"])
    if not saved["identities"]:
        raise SweepError(f"trial {row['trial']}'s checkpoint holds no trained generator")
    generator = load_generator(sweep.generator, "cpu")
    names = {n for n, _ in generator.named_parameters()}
    cfg_hash = config_hash(sweep.config({k: row[k] for k in sweep.space}))
    paths = []
    for identity, entry in saved["identities"].items():
        tensors = entry["state"]["trainable"]
        if not set(tensors) <= names:
            raise SweepError(f"trial {row['trial']}: {sorted(set(tensors) - names)[0]} is not a parameter of "
                             f"{generator.name}")
        paths.append(save_trainable(folder / identity / CHECKPOINT, tensors, generator.name,
                                    metadata_json({"identity": identity, "config_hash": cfg_hash, "sweep": sweep.name,
                                                   "trial": row["trial"], "step": entry["state"]["step"],
                                                   "status": entry["status"]})))
    return paths
