"""What a reviewer looks at in MLflow, made as plain files (no MLflow here; guide_ray.tracking logs them).

- ``identity_grid``: one labelled image per identity: the source photo, G_s(w_u), G_s(w_t), G_u(w_u),
  then each other photo with its G_s / G_u images (before / after).
- ``summary_rows`` / ``write_summary`` / ``metrics_plot`` / ``erosion_plot``: a fleet's table (CSV
  and HTML), ID and FID_pre per identity, and in sequential mode the ID of every identity already
  erased after each step.
- ``parallel_coordinates``: a sweep's trials, one line each across its parameters and objectives.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .core.verdict import VERDICTS

TILE = 256  # px per picture in the identity grid
LABEL_H = 24  # the label strip above each picture
TITLE_H = 32  # the title strip at the top of the grid
# The summary's columns: the identity, its outcome, its one-number metrics by their names
# (results.Metrics), ID on the final generator (sequential fleets), time and error.
SUMMARY_COLUMNS = ("identity", "status", "verdict", "id", "id_others", "reinversion_id", "face_kept", "fid_pre",
                   "fid_floor", "id_now", "audit", "time_s", "error")


def _font(size: int):
    return ImageFont.load_default(size=size)


def identity_grid(title: str, before: np.ndarray, target: np.ndarray, after: np.ndarray,
                  photo: np.ndarray | None = None,
                  others: list[tuple[np.ndarray | None, np.ndarray, np.ndarray]] = (),
                  tile: int = TILE) -> np.ndarray:
    """One identity's review image (HxWx3 uint8 pictures in, one HxWx3 uint8 image out).

    Row 1: [source photo,] G_s(w_u) before, G_s(w_t) target, G_u(w_u) after. Then one row per
    other photo: [the photo,] G_s(w_o) under "before", G_u(w_o) under "after". The photo column is
    left out when there is no photo (a seed identity). Every picture is resized to ``tile`` px and
    labelled above; ``title`` heads the image.
    """
    has_photo = photo is not None or any(o[0] is not None for o in others)
    col = {name: i + has_photo for i, name in enumerate(("before", "target", "after"))}
    cells = [(0, col["before"], "G_s(w_u) before", before), (0, col["target"], "G_s(w_t) target", target),
             (0, col["after"], "G_u(w_u) after", after)]
    if photo is not None:
        cells.append((0, 0, "source photo", photo))
    for i, (other, gs, gu) in enumerate(others, start=1):
        if other is not None:
            cells.append((i, 0, f"other photo {i}", other))
        cells += [(i, col["before"], f"G_s(w_o{i}) before", gs), (i, col["after"], f"G_u(w_o{i}) after", gu)]
    cols, rows = 3 + has_photo, 1 + len(others)
    canvas = Image.new("RGB", (cols * tile, TITLE_H + rows * (LABEL_H + tile)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill=(0, 0, 0), font=_font(18))
    label = _font(15)
    for r, c, text, picture in cells:
        x, y = c * tile, TITLE_H + r * (LABEL_H + tile)
        draw.text((x + 4, y + 3), text, fill=(0, 0, 0), font=label)
        canvas.paste(Image.fromarray(picture).resize((tile, tile), Image.LANCZOS), (x, y + LABEL_H))
    return np.asarray(canvas)


# --- a fleet's summary ---------------------------------------------------------------------------

def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def summary_rows(ids: list[str], ledger: dict[str, dict]) -> list[dict]:
    """One row per identity (in CSV order) from the fleet's ledger rows; identities not run yet
    have status 'not run'."""
    rows = []
    for ident in ids:
        r = ledger.get(ident, {})
        timings = json.loads(r.get("timings_json") or "{}")
        rows.append({"identity": ident, "status": r.get("status", "not run"), "verdict": r.get("verdict") or "",
                     **{k: _num(r.get(k)) for k in ("id", "id_others", "reinversion_id", "face_kept", "fid_pre",
                                                    "fid_floor", "id_now")},
                     "audit": r.get("audit_verdict") or "", "time_s": _num(timings.get("total_s")),
                     "error": r.get("error") or ""})
    return rows


def cell(v) -> str:
    """A table cell: '' for None, 4 significant digits for a float."""
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(rows: list[dict], folder: Path, title: str) -> list[Path]:
    """summary.csv and summary.html (a styled table) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: cell(r[k]) for k in SUMMARY_COLUMNS} for r in rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    body = "\n".join(
        f'<tr class="{html.escape(" ".join(filter(None, (r["status"], r["verdict"]))))}">' + "".join(f"<td>{html.escape(cell(r[c]))}</td>"
                                                            for c in SUMMARY_COLUMNS) + "</tr>" for r in rows)
    done = sum(r["status"] == "finished" for r in rows)
    verdicts = ", ".join(f"{sum(r['verdict'] == v for r in rows)} {v}" for v in VERDICTS
                         if any(r["verdict"] == v for r in rows))
    (folder / "summary.html").write_text(
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif} table{border-collapse:collapse} th,td{border:1px solid #ccc;padding:4px 8px}"
        " td{text-align:right} td:first-child,td:nth-child(2),td:last-child{text-align:left}"
        " tr.failed,tr.diverged,tr.face_destroyed,tr.not_represented,tr.not_erased{background:#fdd}"
        "</style></head><body>\n"
        f"<h3>{html.escape(title)}</h3><p>{done} of {len(rows)} identities finished"
        f"{': ' + html.escape(verdicts) if verdicts else ''}. Verdict: erased = ID below the metric's "
        "different-person level with every after-image a face; not_erased; face_destroyed = G_u no longer draws a "
        "face there; not_represented = the photo's inversion is not the person. ID / ID_others: identity "
        "similarity of G_s and G_u on the person's latents; re-inversion ID: the photo against its re-inversion "
        "into G_u; face kept: share of after-images that are faces; ID now: ID on the final generator "
        "(sequential mode); lower = more forgotten. FID_pre: G_u against G_s (lower = less changed). Audit "
        "(guide-ray audit, fleet --audit): survives = no attack (re-inversion restarts, neighbourhood probe, "
        "relearning) brought the person back; recoverable = one did (see runs/KEY/_audit/ID/audit.html).</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></body></html>\n")
    return [folder / "summary.csv", folder / "summary.html"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (workers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_plot(rows: list[dict], path: Path, title: str) -> Path:
    """ID and FID_pre per identity, side by side (identities without a value are marked)."""
    plt = pyplot()
    names = [r["identity"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.8 + 0.35 * max(3, len(rows))), dpi=110, sharey=True)
    for ax, key, color, note in ((axes[0], "id", "tab:red", "lower = more forgotten"),
                                 (axes[1], "fid_pre", "tab:blue", "lower = less changed")):
        values = [r[key] for r in rows]
        ax.barh(range(len(rows)), [v or 0.0 for v in values], color=color)
        for y, (v, r) in enumerate(zip(values, rows)):
            if v is None:
                ax.text(0, y, f" {r['status']}", va="center", fontsize=8, color="0.4")
        ax.set_xlabel(f"{key} ({note})")
        ax.axvline(0, color="0.3", lw=0.8)
    axes[0].set_yticks(range(len(rows)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def erosion_plot(order: list[str], ids_after: dict[str, dict[int, float]], fid_after: dict[int, float],
                 path: Path, title: str) -> Path:
    """Sequential mode: after step k (identity ``order[k]`` erased), the ID of every identity
    erased so far (one line each) and FID_pre of the current generator against the original."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(order)), 6.5), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for ident in order:
        steps = sorted(ids_after.get(ident, {}))
        if steps:
            top.plot(steps, [ids_after[ident][s] for s in steps], "o-", label=ident)
    top.ticklabel_format(axis="y", useOffset=False)
    top.set_ylabel("ID (original vs current G)")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8, ncol=max(1, len(order) // 8))
    steps = sorted(fid_after)
    bottom.plot(steps, [fid_after[s] for s in steps], "s-", color="tab:blue")
    bottom.set_ylabel("FID_pre vs original")
    bottom.set_xticks(range(len(order)), [f"after {i}" for i in order], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# --- a sweep's trials ----------------------------------------------------------------------------

def _axis(values: list, log: bool) -> tuple[list[float | None], list[tuple[float, str]]]:
    """Values on one axis scaled to [0, 1] (None where missing; log-scaled if ``log``), and its ticks."""
    present = [v for v in values if v is not None and v == v]
    if any(not isinstance(v, (int, float)) for v in present):  # a categorical choice
        levels = sorted({str(v) for v in present})
        pos = {v: i / max(1, len(levels) - 1) for i, v in enumerate(levels)}
        return [None if v is None else pos[str(v)] for v in values], [(pos[v], v) for v in levels]
    if not present:
        return [None] * len(values), []
    f = math.log10 if log and min(present) > 0 else float
    lo, hi = min(present), max(present)
    span = f(hi) - f(lo) or 1.0
    scaled = [None if v is None or v != v else (f(v) - f(lo)) / span for v in values]
    return scaled, [(0.0, f"{lo:.4g}"), (1.0, f"{hi:.4g}")] if hi > lo else [(0.0, f"{lo:.4g}")]


def parallel_coordinates(rows: list[dict], axes: list[str], path: Path, color_by: str = "score",
                         title: str = "", log_axes: set[str] = frozenset()) -> Path:
    """One line per trial across ``axes`` (each scaled to its own min..max, log10 for ``log_axes``,
    labelled at both ends); complete trials are coloured by ``color_by`` (lower = darker), the
    others dashed grey."""
    plt = pyplot()
    if not axes:
        raise ValueError("parallel_coordinates: no axes to draw")
    columns = {a: _axis([r.get(a) for r in rows], a in log_axes) for a in axes}
    scores = [r.get(color_by) for r in rows]
    known = [s for s in scores if isinstance(s, (int, float))]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(axes)), 4.5), dpi=110)
    for i, r in enumerate(rows):
        ys = [columns[a][0][i] for a in axes]
        points = [(x, y) for x, y in enumerate(ys) if y is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        if isinstance(scores[i], (int, float)):
            ax.plot(xs, ys, "-o", ms=3, lw=1.4, alpha=0.85, color=cmap((scores[i] - lo) / ((hi - lo) or 1.0)))
        else:
            ax.plot(xs, ys, "--", lw=0.9, color="0.65")
    for x, a in enumerate(axes):
        ax.axvline(x, color="0.2", lw=0.8)
        for y, text in columns[a][1]:
            ax.text(x + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), axes, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    if known:
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap=cmap), ax=ax, pad=0.02)
        bar.set_label(f"{color_by} (lower is better)")
    ax.set_title(title or f"{len(rows)} trials (dashed: stopped early or failed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def relearning_plot(reports: list[dict], path: Path, title: str) -> Path:
    """The relearning attack's curves (run/audit.py), one panel per audited identity: the person's ID
    away from the pivot after k fine-tuning steps on G_u and on G_s (the reference), the ID at the
    pivot on G_u, and the calibrated same- and different-person levels."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(3.6 * len(reports), 3.2), dpi=110, sharey=True, squeeze=False)
    for ax, r in zip(axes[0], reports):
        curves = r["attacks"]["relearning"]
        steps = [p["steps"] for p in curves["g_u"]["curve"]]
        ax.plot(steps, [p["id_elsewhere"] for p in curves["g_u"]["curve"]], "o-", color="tab:red", label="G_u, elsewhere")
        ax.plot(steps, [p["id_pivot"] for p in curves["g_u"]["curve"]], "o:", color="tab:red", alpha=0.6,
                label="G_u, at the pivot")
        ax.plot(steps, [p["id_elsewhere"] for p in curves["g_s"]["curve"]], "s--", color="tab:blue",
                label="G_s, elsewhere")
        lv = r["calibration"]
        ax.axhline(lv["same_person_level"], color="0.2", lw=0.8)
        ax.axhline(lv["different_person_level"], color="0.6", lw=0.8, ls="--")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("relearning steps k")
        ax.set_title(f"{r['identity']}: {r['audit_verdict']}", fontsize=9)
    axes[0][0].set_ylabel("ID to the photo")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
