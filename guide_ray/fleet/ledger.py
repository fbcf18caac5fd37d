"""The fleet's ledger: one row per (fleet, identity) in OUT/ledger.parquet, rewritten atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class Ledger:
    """One row per (fleet, identity) in a Parquet file, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path).to_pylist() if self.path.exists() else []

    def fleet(self, fleet_key: str) -> dict[str, dict]:
        return {r["id"]: r for r in self.rows() if r["fleet_key"] == fleet_key}

    def upsert(self, updates: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = {(r["fleet_key"], r["id"]): r for r in self.rows()}
        for update in updates:
            key = (update["fleet_key"], update["id"])
            rows[key] = {**rows.get(key, {}), **update, "updated_at": time.time()}
        columns = sorted({k for r in rows.values() for k in r})
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows.values()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)


def _metric_columns(result: dict) -> dict:
    m = result.get("metrics", {})
    return {f"metric_{k}": (float(m[k]) if m.get(k) is not None else None)
            for k in ("id", "id_others", "reinversion_id", "inversion_id", "face_kept", "fid_pre")}


def ledger_row(fleet_key: str, mode: str, generator: str, cfg_hash: str, step: int, result: dict,
                run_dir: Path, attempt: int) -> dict:
    ckpt = result.get("checkpoint")
    return {
        "fleet_key": fleet_key, "id": result["id"], "mode": mode, "generator": generator, "config_hash": cfg_hash,
        "status": result["status"], "verdict": result.get("verdict"),
        "represented": result.get("verdict_detail", {}).get("represented"),
        "verdict_reason": result.get("verdict_detail", {}).get("reason"), "step": step, **_metric_columns(result),
        "metrics_json": json.dumps(result.get("metrics", {})), "timings_json": json.dumps(result.get("timings", {})),
        "checkpoint_uri": Path(ckpt).resolve().as_uri() if ckpt else None, "run_dir": str(run_dir),
        "error": result.get("error") or result.get("message") or None, "attempt": attempt,
    }
