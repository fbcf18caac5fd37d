"""The fleet's console table (the view of ``review.summary_rows``) and its per-step erosion metrics."""

from __future__ import annotations

from ..core.verdict import VERDICTS


def fmt(v, spec=".3f"):
    return format(v, spec) if isinstance(v, (int, float)) and v == v else "–"


def erosion_metrics(erosion: dict) -> dict[str, float]:
    """Sequential mode, after a step: ID of every identity erased so far (id_now_ID) and FID_pre
    against the original generator, as logged on the fleet run and tagged on the final version."""
    return {**{f"id_now_{i}": v for i, v in erosion["id"].items()}, "fid_pre_vs_original": erosion["fid_pre_vs_original"]}


def summary_table(table: list[dict]) -> str:
    """The console view of ``review.summary_rows``."""
    head = (f"{'identity':16s} {'status':9s} {'verdict':15s} {'ID':>7s} {'ID_oth':>7s} {'re-inv':>7s} {'faces':>6s} "
            f"{'FID_pre':>8s} {'floor':>6s} {'ID now':>7s} {'audit':11s}  error")
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['identity'][:16]:16s} {r['status']:9s} {r['verdict'] or '–':15s} {fmt(r['id']):>7s} "
                     f"{fmt(r['id_others']):>7s} {fmt(r['reinversion_id']):>7s} {fmt(r['face_kept'], '.0%'):>6s} "
                     f"{fmt(r['fid_pre'], '.2f'):>8s} {fmt(r['fid_floor'], '.1f'):>6s} {fmt(r['id_now']):>7s} {r['audit'] or '–':11s}  {r['error'][:80]}")
    counts = {v: sum(r["verdict"] == v for r in table) for v in VERDICTS}
    lines.append("verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) +
                 f" of {len(table)} identities" if any(counts.values()) else "verdicts: none yet")
    return "\n".join(lines)
