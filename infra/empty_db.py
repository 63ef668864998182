"""A new SAE_HOME's MLflow database starts as a copy of an empty one, migrated once per
machine and MLflow version (under SAE_CACHE_DIR), instead of running MLflow's ~60
migrations again in each new home: 3-7 s of CPU on 2 cores, which every first run and
every test of a fresh home would pay.

The copy is what MLflow would have made, but for the creation time of its "Default"
experiment (id 0, which this project never uses).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def seed_mlflow_db(target: Path, cache_root: Path) -> None:
    """Puts an empty, migrated MLflow sqlite database at ``target`` if nothing is there."""
    if target.exists():
        return
    version = importlib.metadata.version("mlflow")
    template = cache_root / "empty-db" / f"mlflow-{version}.db"
    try:
        if not template.exists():
            _place(template, _migrated_mlflow_db)
        _place(target, lambda tmp: _copy(template, tmp))
    except OSError as exc:  # a cache or file system without hard links: MLflow migrates
        log.debug("no empty MLflow database copied to %s: %s", target, exc)


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
