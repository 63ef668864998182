"""The code version recorded with every sweep, run and checkpoint, and the git commit."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

# The files that decide a cell's weights, given its settings and its data snapshot; the
# code version hashes them, so editing anything else (docs, tests, flows, logging, the
# CLI, tracking) leaves every finished cell of a sweep finished. Paths are relative to
# the folder that holds the installed packages (the repository in an editable install).
WEIGHT_SOURCES = (
    # The library: model, init, losses, optimiser, kernels, data order, trainer.
    "sae",
    # Builds the trainer's configurations from a sweep's parameters and runs it.
    "tasks/sweep/train.py",
    # Which papers train and which are held out, and the rows' order. Where the rows and
    # vectors are stored (tasks/embed/snapshot.py, manifest.py) is not hashed: a change of
    # the store's layout retrains nothing.
    "tasks/embed/rows.py",
)
# Benchmarks and the codes of finished models (feature analysis) live in the library but
# never run in training.
_NOT_WEIGHT_SOURCES = ("sae/bench", "sae/codes.py")
# The numeric stack's installed versions change the numbers; the rest of the lock (a UI
# test's browser driver, a server) does not, so the lock file itself is not hashed.
_NUMERIC_DISTS = ("torch", "numpy", "triton", "safetensors")

_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_version(root: Path = _ROOT) -> str:
    """``c`` + 12 hex digits of a hash of the ``WEIGHT_SOURCES`` files' contents under
    ``root``; part of a sweep's identity, so changed training code trains afresh instead
    of mixing checkpoints of two codebases. Needs no git (installed copies, Ray workers).
    """
    digest = hashlib.sha256()
    for rel, data in _weight_files(root):
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    for dist in _NUMERIC_DISTS:
        digest.update(f"{dist}=={_dist_version(dist)}\n".encode())
    return "c" + digest.hexdigest()[:12]


def _weight_files(root: Path) -> list[tuple[str, bytes]]:
    files: list[Path] = []
    for rel in WEIGHT_SOURCES:
        path = root / rel
        if path.is_dir():
            files += [p for p in path.rglob("*.py") if p.is_file()]
        elif path.is_file():
            files.append(path)
    out = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if any(rel == skip or rel.startswith(f"{skip}/") for skip in _NOT_WEIGHT_SOURCES):
            continue
        out.append((rel, path.read_bytes()))
    return sorted(out)


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@functools.cache
def git_commit(root: Path = _ROOT) -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted edits), for provenance only;
    None outside a git checkout or without git."""
    if not (root / ".git").exists():  # an install inside some other repository is not it
        return None
    try:
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def package_requirements() -> list[str]:
    """What loading a logged SAE model needs (the pickled module refers to ``sae.model``)."""
    reqs = []
    for dist in ("torch", "safetensors", "numpy", "arxiv-sae"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs
