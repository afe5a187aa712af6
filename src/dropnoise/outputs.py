"""Atomic result files and folders, and provenance sidecars.

Every result is written to a temporary file in the same folder and renamed into place, so an interrupted job
never leaves a half-written file under a final name (Snakemake additionally deletes outputs of failed jobs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ("dropnoise", "torch", "transformers", "tokenizers", "accelerate", "numpy", "pandas", "snakemake")


def _sibling(path: Path, suffix: str = "", folder: bool = False) -> Path:
    """A new hidden file or folder beside `path` under an unused random name, with the permissions any new file or
    folder gets (the umask's, and a shared folder's default ACL): tempfile's are private (0600/0700), and renamed
    into place they left results unreadable to a group sharing the project. What a job killed outright (SIGKILL,
    a lost node) left under this output's temporary names is removed first: one job writes an output at a time."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}{re.escape(suffix)}")
    for left in path.parent.iterdir():
        if stale.fullmatch(left.name):
            shutil.rmtree(left) if left.is_dir() and not left.is_symlink() else left.unlink(missing_ok=True)
    while True:
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(name, 0o777)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return name
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """A temporary file name beside `path`, for the block to write; renamed to `path` only when the block
    completes, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
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
        tmp = _sibling(path, folder=True)
    try:
        yield tmp
        (tmp / STAGE_STAMP).unlink(missing_ok=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
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
