"""The erasure audits of a fleet, as a page: per identity every attack on G_u beside G_s, the
relearning curves, and the attacked images.

    python -m guide_ray.fleet jobs/demo/ids.csv --generator dcgan-digiface64 --workers 1 \
        --out outputs/audit-dcgan --ray-address local --audit
    python benchmarks/audit_report.py outputs/audit-dcgan --doc docs/audit.md

(``guide-ray audit outputs/audit-dcgan`` audits a fleet that ran without --audit.) Reads the
fleet's ledger and each identity's runs/KEY/_audit/ID/audit.json; writes the table to --doc, the
relearning curves and one image strip per identity to img/ beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from guide_ray import review
from guide_ray.fleet.ledger import Ledger
from guide_ray.images import save_png
from guide_ray.run.audit import ATTACK_VALUES, default_out

STRIP = ["photo", "g_u_reinversion", "g_s_reinversion", "g_u_probe_w_u", "g_u_probe_reinversion"]


def strip(folder: Path, last_k: int, size: int = 128) -> np.ndarray:
    """photo | G_u, G_s best re-inversion | G_u best probe around w_u, around the re-inversion |
    G_u, G_s elsewhere after the last relearning step."""
    names = STRIP + [f"g_u_relearning_{last_k}", f"g_s_relearning_{last_k}"]
    tiles = [np.asarray(Image.open(folder / "images" / f"{n}.png").convert("RGB").resize((size, size))) for n in names]
    return np.concatenate(tiles, axis=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a fleet's --out, audited")
    p.add_argument("--doc", required=True)
    args = p.parse_args(argv)
    rows = [r for r in Ledger(Path(args.out) / "ledger.parquet").rows() if r.get("audit_verdict")]
    if not rows:
        p.error(f"{args.out}: no audited identity in its ledger (run guide-ray audit {args.out})")
    reports = [(r, json.loads((default_out(r["run_dir"]) / "audit.json").read_text())) for r in rows]
    doc = Path(args.doc)
    img = doc.parent / "img"
    review.relearning_plot([rep for _, rep in reports], img / "audit-relearning.png", "relearning attack")
    lv = reports[0][1]["calibration"]
    ks = [pt["steps"] for pt in reports[0][1]["attacks"]["relearning"]["g_u"]["curve"]]
    head = ("| identity | run ID | audit | " + " | ".join(ATTACK_VALUES) + " | relearning elsewhere, k = "
            + " / ".join(map(str, ks)) + " | relearning at the pivot |")
    lines = [head, "|" + "---|" * (5 + len(ATTACK_VALUES)), ]
    for row, rep in reports:
        a, far = rep["attacks"], rep["false_accepts"]
        cells = [f"{a[name]['g_u'][key]:.3f} / {a[name]['g_s'][key]:.3f} ({far[name]['g_u']:.0%})"
                 for name, key in ATTACK_VALUES.items()]
        curve = a["relearning"]
        lines.append(f"| {row['identity']} | {row['id']:.3f} ({row['verdict']}) | {rep['audit_verdict']} | "
                     + " | ".join(cells) + " | "
                     + " / ".join(f"{u['id_elsewhere']:.2f}" for u in curve["g_u"]["curve"]) + " (G_s "
                     + " / ".join(f"{s['id_elsewhere']:.2f}" for s in curve["g_s"]["curve"]) + ") | "
                     + " / ".join(f"{u['id_pivot']:.2f}" for u in curve["g_u"]["curve"]) + " |")
        save_png(strip(default_out(row["run_dir"]), ks[-1]), img / f"audit-{row['identity']}.png")
    cfg = reports[0][1]["audit_config"]
    doc.write_text(
        "# Erasure audit: the attacks an erasure survives\n\n"
        f"`python benchmarks/audit_report.py {args.out} --doc {args.doc}` after the fleet in its docstring "
        f"({reports[0][1]['generator']}; audit settings {cfg}).\n\n"
        f"Levels ({lv['metric']}, openpeople: {lv['persons']} people, {lv['photos']} photos, {lv['same_pairs']} "
        f"same-person and {lv['different_pairs']} different-person pairs): same-person level "
        f"{lv['same_person_level']:.3f} (false accepts {lv['same_person_far']:.1%}, true accepts "
        f"{lv['same_person_tar']:.1%}); different-person level {lv['different_person_level']:.3f} (false accepts "
        f"{lv['different_person_far']:.1%}). Each cell: G_u / G_s (the share of different-person pairs at least as "
        "similar as G_u's value).\n\n" + "\n".join(lines) + "\n\n"
        "![relearning](img/audit-relearning.png)\n\n"
        + "".join(f"![{r['identity']}](img/audit-{r['identity']}.png)  \n{r['identity']}: " + ", ".join(
            STRIP + [f"G_u elsewhere after {ks[-1]} relearning steps", f"G_s elsewhere after {ks[-1]}"]) + "\n\n"
            for r, _ in reports))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
