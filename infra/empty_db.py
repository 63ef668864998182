"""A new SAE_HOME's MLflow and Prefect databases start as copies of empty ones, migrated
once per machine and version (under SAE_CACHE_DIR), instead of running each one's
migrations again in each new home: 3-7 s (MLflow) and ~5 s (Prefect) of CPU on 2 cores,
which every first run and every test of a fresh home would pay.

A copy is what the migrations would have made, but for the creation time of MLflow's
"Default" experiment (id 0, which this project never uses).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def template_path(cache_root: Path, package: str) -> Path:
    """Where the empty database of this version of ``package`` (mlflow, prefect) is kept."""
    return cache_root / "empty-db" / f"{package}-{importlib.metadata.version(package)}.db"


def seed_mlflow_db(target: Path, cache_root: Path) -> None:
    """Puts an empty, migrated MLflow sqlite database at ``target`` if nothing is there."""
    if target.exists():
        return
    template = template_path(cache_root, "mlflow")
    try:
        if not template.exists():
            _place(template, _migrated_mlflow_db)
        _place(target, lambda tmp: _copy(template, tmp))
    except OSError as exc:  # a cache or file system without hard links: MLflow migrates
        log.debug("no empty MLflow database copied to %s: %s", target, exc)


def seed_prefect_db(target: Path, template: Path, migrate: Callable[[], None]) -> None:
    """A new Prefect sqlite database at ``target``: a copy of ``template``, or else migrated
    in place by ``migrate`` (as the server would on start) and then kept as the template.
    Call it where the database's server lock is held: nothing else may write ``target``."""
    if target.exists():
        return
    if template.exists():
        try:
            _place(target, lambda tmp: shutil.copyfile(template, tmp))
            return
        except OSError as exc:
            log.debug("no empty Prefect database copied to %s: %s", target, exc)
    migrate()
    try:
        _place(template, lambda tmp: _backup(target, tmp))
    except OSError as exc:
        log.debug("no empty Prefect database kept at %s: %s", template, exc)


def _backup(source: Path, path: Path) -> None:
    # SQLite's backup: whole, whatever is still in the write-ahead log of ``source``.
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(path)) as dst,
    ):
        src.backup(dst)


def _migrated_mlflow_db(path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "mlruns"))
    store.engine.dispose()  # closed, so the file is whole before it is linked into place


def _copy(template: Path, path: Path) -> None:
    shutil.copyfile(template, path)
    # Where MLflow puts the Default experiment's artifacts: ./mlruns of the process that
    # creates the database, not of the one that made the template.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(Path.cwd() / "mlruns" / "0"),),
        )


def _place(target: Path, write) -> None:
    """``write`` a temporary file, then link it to ``target`` only if ``target`` is still
    absent: a process racing this one keeps the database it may already be writing to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
