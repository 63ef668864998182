"""The code version recorded with every sweep, run and checkpoint."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """``{package version}+g{commit}`` in a git checkout, the package version elsewhere.

    Part of a sweep's identity: a new commit trains afresh instead of mixing checkpoints
    of two codebases. Uncommitted edits do not change it (see the README).
    """
    try:
        version = metadata.version("arxiv-sae")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version


def package_requirements() -> list[str]:
    """What loading a logged SAE model needs (the pickled module refers to ``sae.model``)."""
    reqs = []
    for dist in ("torch", "safetensors", "numpy", "arxiv-sae"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs
