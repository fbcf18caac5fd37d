"""The identities CSV (id, image or seed, others), validated whole before any work starts: the
fleet's and the sweep's input."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .. import weights
from ..images import ImageError, load_image
from .identity import IdentitySpec

COLUMNS = ("id", "image", "seed", "others")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
WEIGHTS_PREFIX = "weights://"  # weights://openpeople/P001/assets/studio_portrait.jpg: a file of a pulled weight


class IdsError(ValueError):
    """An identities CSV that cannot be run; the message lists every bad row."""


def _resolve_photo(value: str, base: Path) -> Path:
    if value.startswith(WEIGHTS_PREFIX):
        name, _, rest = value[len(WEIGHTS_PREFIX):].partition("/")
        return weights.weight_dir(name) / rest
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _photo_problem(path: Path) -> str | None:
    if not path.exists():
        return f"{path}: file not found"
    if not path.is_file():
        return f"{path}: not a file"
    try:
        load_image(path)
    except ImageError as e:
        return str(e)
    return None


def read_ids(path: str | Path, skip_invalid: bool = False) -> tuple[list[IdentitySpec], list[str]]:
    """Validate the whole CSV; return its identities and the problems of the rows left out.

    Raises IdsError naming every bad row (CSV line numbers, header = line 1) unless
    ``skip_invalid``, which keeps the good rows and returns the problems.
    """
    path = Path(path)
    if not path.exists():
        raise IdsError(f"{path}: file not found")
    if not path.is_file():
        raise IdsError(f"{path}: is a directory, not an identities CSV")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise IdsError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    if not text.strip():
        raise IdsError(f"{path}: is empty; expected a header line 'id,image,seed,others' and one row per identity")
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    if "id" not in header or not ({"image", "seed"} & set(header)) or unknown:
        raise IdsError(f"{path}: wrong header {header}; columns are id (required), image or seed, and optionally "
                       f"others" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    specs, problems, seen = [], [], {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            problems.append(f"line {line}: more fields than the header has")
            continue
        errs = []
        ident, image, seed = row.get("id", ""), row.get("image", ""), row.get("seed", "")
        if not ident:
            errs.append("empty id")
        elif not SAFE_ID.fullmatch(ident):
            errs.append(f"id {ident!r} must be letters, digits, '.', '_' or '-' (it names a folder and a run)")
        elif ident in seen:
            errs.append(f"duplicate id {ident!r} (first on line {seen[ident]})")
        else:
            seen[ident] = line
        if bool(image) == bool(seed):
            errs.append("give exactly one of image and seed")
        if seed:
            try:
                if int(seed) < 0:
                    raise ValueError
            except ValueError:
                errs.append(f"seed {seed!r} is not a non-negative integer")
        photos = ([_resolve_photo(image, path.parent)] if image else []) + [
            _resolve_photo(p.strip(), path.parent) for p in row.get("others", "").split(";") if p.strip()]
        errs += [p for p in map(_photo_problem, photos) if p]
        if errs:
            problems.append(f"line {line} ({ident or 'no id'}): " + "; ".join(errs))
        else:
            specs.append(IdentitySpec(ident, image=photos[0] if image else None, seed=int(seed) if seed else None,
                                      others=photos[1:] if image else photos))
    if not specs and not problems:
        raise IdsError(f"{path}: has a header but no identities")
    if problems and not skip_invalid:
        raise IdsError(f"{path}: {len(problems)} bad row(s); fix them or pass --skip-invalid to run the "
                       f"{len(specs)} good one(s):\n  " + "\n  ".join(problems))
    return specs, problems
