"""Audit a fleet's identities (run/audit.py), one after another in this process: each report goes
to RUNS/_audit/ID, its verdict into the ledger row (column audit_verdict, the summary's audit
column) and its files and numbers into the identity's MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..config import AuditConfig
from ..run.audit import AuditError, audit_run, default_out
from .ledger import Ledger


def audit_rows(ledger: Ledger, tracker, rows: list[dict], cfg: AuditConfig, device=None,
               say: Callable[[str], None] = print) -> list[dict]:
    """Audit each finished ledger row's run folder; returns the reports (a row that cannot be audited
    gets audit_verdict 'failed' and the reason)."""
    reports = []
    for row in rows:
        if row.get("status") != "finished":
            continue
        try:
            report = audit_run(row["run_dir"], default_out(row["run_dir"]), cfg, device, generator=row.get("generator"),
                               say=say)
        except Exception as e:  # an identity that cannot be audited is recorded; the fleet's results stand
            ledger.upsert([{"fleet_key": row["fleet_key"], "identity": row["identity"], "audit_verdict": "failed",
                            "audit_reason": str(e)}])
            say(f"{row['identity']}: audit failed: {e}")
            continue
        ledger.upsert([{"fleet_key": row["fleet_key"], "identity": row["identity"],
                        "audit_verdict": report["audit_verdict"], "audit_reason": report["audit_reason"],
                        "audit_json": json.dumps({k: report[k] for k in ("outcomes", "broken_by", "faces_kept")})}])
        if tracker is not None and row.get("mlflow_run_id"):
            tracker.log_audit(row["mlflow_run_id"], default_out(row["run_dir"]), report)
        say(f"{row['identity']}: audit {report['audit_verdict']} ({report['audit_reason']})")
        reports.append(report)
    return reports


def audit_fleet_out(out: str | Path, cfg: AuditConfig, tracking_uri: str | None = None, device=None,
                    say: Callable[[str], None] = print) -> list[dict]:
    """Every finished identity of the fleet(s) whose ledger is OUT/ledger.parquet."""
    from ..tracking import Tracker, resolve_uri

    out = Path(out).resolve()
    ledger = Ledger(out / "ledger.parquet")
    rows = ledger.rows()
    if not rows:
        raise AuditError(f"{out} holds no ledger.parquet (or it is empty): not a fleet's --out folder")
    tracker = Tracker(resolve_uri(tracking_uri, out), out / "mlartifacts")
    return audit_rows(ledger, tracker, rows, cfg, device, say)
