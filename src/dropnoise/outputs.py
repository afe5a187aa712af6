"""Atomic result files and folders, and provenance sidecars.

Every result is written to a temporary file in the same folder and renamed into place, so an interrupted job
never leaves a half-written file under a final name (Snakemake additionally deletes outputs of failed jobs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ("dropnoise", "torch", "transformers", "tokenizers", "accelerate", "numpy", "pandas", "snakemake")


UMASK = os.umask(0o022)
os.umask(UMASK)  # (read by setting it: the process's umask, restored at once)


def _publish(tmp: str | Path, path: Path, mode: int) -> None:
    """Rename a finished temporary file or folder into place with the permissions the umask gives a new one
    (temporary names are created private, 0600/0700: a group sharing the project folder could not read them)."""
    os.chmod(tmp, mode & ~UMASK)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """A temporary file name beside `path`, for the block to write; renamed to `path` only when the block
    completes, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path, 0o666)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


STAGE_STAMP = ".dropnoise_stage"


@contextmanager
def staged_folder(path: str | Path, resume: str | None = None):
    """A hidden temporary sibling of folder `path`, renamed to `path` only when the block completes: a folder
    under its final name is always complete. `resume`: what the folder is made from (e.g. a repository at a
    revision); the sibling then has a fixed name (`.<name>.partial`) and is kept when the block fails, so that the
    next attempt for the same source continues it (a model download stopped at 40 of 64 GB); one left by another
    source is emptied first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        tmp = path.parent / f".{path.name}.partial"
        stamp = tmp / STAGE_STAMP
        if tmp.exists() and not (stamp.exists() and stamp.read_text() == resume):
            shutil.rmtree(tmp)
        tmp.mkdir(exist_ok=True)
        stamp.write_text(resume)
    else:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        (tmp / STAGE_STAMP).unlink(missing_ok=True)
        if path.exists():
            shutil.rmtree(path)
        _publish(tmp, path, 0o777)
    finally:
        if resume is None:  # (renamed away when the block completed)
            shutil.rmtree(tmp, ignore_errors=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def write_json(data, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(records, path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def config_hash(*parts) -> str:
    """Short hash of the configuration that determines a result (sorted JSON)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
