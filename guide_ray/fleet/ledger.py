"""The fleet's ledger: one row per (fleet, identity) in OUT/ledger.parquet, rewritten atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..results import SCALARS, RunResult


class Ledger:
    """One row per (fleet, identity) in a Parquet file, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path).to_pylist() if self.path.exists() else []

    def fleet(self, fleet_key: str) -> dict[str, dict]:
        return {r["identity"]: r for r in self.rows() if r["fleet_key"] == fleet_key}

    def upsert(self, updates: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = {(r["fleet_key"], r["identity"]): r for r in self.rows()}
        for update in updates:
            key = (update["fleet_key"], update["identity"])
            rows[key] = {**rows.get(key, {}), **update, "updated_at": time.time()}
        columns = sorted({k for r in rows.values() for k in r})
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows.values()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)


def ledger_row(fleet_key: str, mode: str, generator: str, cfg_hash: str, step: int, result: RunResult,
               run_dir: Path, attempt: int) -> dict:
    """The ledger's row of one identity's result: its one-number metrics as columns by their names
    (results.SCALARS; None when absent or not measured), everything else of the metrics as JSON."""
    scalars = result.metrics.scalars() if result.metrics else {}
    return {
        "fleet_key": fleet_key, "identity": result.identity, "mode": mode, "generator": generator,
        "config_hash": cfg_hash, "status": result.status, "verdict": result.verdict,
        "represented": result.verdict_detail.get("represented"), "verdict_reason": result.verdict_detail.get("reason"),
        "step": step, **{name: scalars.get(name) for name in SCALARS},
        "metrics_json": json.dumps(result.metrics.to_dict() if result.metrics else {}),
        "timings_json": json.dumps(result.timings),
        "checkpoint_uri": Path(result.checkpoint).resolve().as_uri() if result.checkpoint else None,
        "run_dir": str(run_dir), "error": result.error or result.message or None, "attempt": attempt,
    }
