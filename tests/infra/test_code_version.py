"""The code version: what decides the weights changes it, nothing else does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from infra.code_version import WEIGHT_SOURCES, code_version, git_commit

REPO = Path(__file__).resolve().parents[2]
# Besides the weight sources, files a commit often touches that must not retrain.
OTHERS = (
    "README.md",
    "requirements.lock",
    "flows/cli.py",
    "flows/sweep.py",
    "tasks/sweep/track.py",
    "tests/conftest.py",
)


@pytest.fixture
def tree(tmp_path_factory):
    """Copies of the repository's weight sources and a few other files; each call a new
    folder (the code version is cached per folder), edited by ``edit(path, text)``."""

    def make(edit: tuple[str, str] | None = None) -> Path:
        root = tmp_path_factory.mktemp("tree")
        for rel in (*WEIGHT_SOURCES, *OTHERS):
            src, dst = REPO / rel, root / rel
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        if edit:
            path, text = root / edit[0], edit[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text((path.read_text() if path.exists() else "") + text)
        return root

    return make


def test_the_version_is_the_contents_not_the_place(tree):
    assert code_version(tree()) == code_version(REPO) == code_version()
    assert code_version().startswith("c") and len(code_version()) == 13


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "tests/conftest.py",
        "tests/new_test.py",
        "flows/cli.py",
        "flows/sweep.py",
        "tasks/sweep/track.py",
        "tasks/embed/snapshot.py",
        "tasks/embed/manifest.py",
        "sae/bench/grid.py",
        "requirements.lock",
    ],
)
def test_docs_tests_flows_cli_and_benchmarks_do_not_change_it(tree, path):
    assert code_version(tree((path, "\n# an edit\n"))) == code_version(tree())


@pytest.mark.parametrize(
    "path",
    [
        "sae/trainer.py",
        "sae/kernels/torch_ops.py",
        "sae/new_module.py",
        "tasks/sweep/train.py",
        "tasks/embed/rows.py",
    ],
)
def test_what_decides_the_weights_changes_it(tree, path):
    assert code_version(tree((path, "\n# an edit\n"))) != code_version(tree())


def test_another_torch_changes_it(tree, monkeypatch):
    import infra.code_version as cv

    before = code_version(tree())
    real = cv._dist_version
    monkeypatch.setattr(cv, "_dist_version", lambda d: "9.9" if d == "torch" else real(d))
    assert code_version(tree()) != before


def test_git_commit_is_recorded_when_there_is_a_checkout(tree):
    assert git_commit(tree()) is None
    root = tree()
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert git_commit(root) == head.stdout.strip()
