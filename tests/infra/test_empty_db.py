"""A new home's MLflow database, copied from a template: the same as MLflow makes itself."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from infra.empty_db import seed_mlflow_db, seed_prefect_db


def _clauses(sql: str | None) -> list[str]:
    # The order of a table's constraints varies from one migration run to the next.
    return sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())


def _dump(path: Path) -> dict:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        schema = sorted((kind, name, _clauses(sql)) for kind, name, sql in rows)
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = db.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
        ).fetchall()
    return {"schema": schema, "version": version, "experiments": experiments}


def test_a_seeded_database_is_the_one_mlflow_makes(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain.db"
    MlflowClient(f"sqlite:///{plain}").search_experiments()
    seeded = tmp_path / "home" / "mlflow.db"
    seed_mlflow_db(seeded, tmp_path / "cache")
    assert _dump(seeded) == _dump(plain)
    assert _dump(seeded)["experiments"][0][2] == str(tmp_path / "mlruns" / "0")

    # MLflow takes it as its own: no migration, and it writes to it.
    client = MlflowClient(f"sqlite:///{seeded}")
    client.create_experiment("e")
    assert {e.name for e in client.search_experiments()} == {"Default", "e"}


def test_a_database_already_there_is_left_alone(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("kept")
    seed_mlflow_db(db, tmp_path / "cache")
    names = {e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()}
    assert names == {"Default", "kept"}
    assert not (tmp_path / "cache").exists()  # nothing was even made


def test_the_template_is_made_once_and_no_temporary_file_stays(tmp_path):
    cache = tmp_path / "cache"
    seed_mlflow_db(tmp_path / "a" / "mlflow.db", cache)
    (template,) = (cache / "empty-db").iterdir()
    made = template.stat().st_mtime_ns
    seed_mlflow_db(tmp_path / "b" / "mlflow.db", cache)
    assert [p.name for p in (cache / "empty-db").iterdir()] == [template.name]
    assert template.stat().st_mtime_ns == made
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["mlflow.db"]


def test_a_prefect_database_is_migrated_once_then_copied(tmp_path):
    template = tmp_path / "cache" / "empty-db" / "prefect-x.db"
    held: list[sqlite3.Connection] = []

    def migrate(target: Path) -> None:
        # As a server would leave it: WAL mode, the tables still in the open log.
        db = sqlite3.connect(target)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.execute("INSERT INTO alembic_version VALUES ('head')")
        db.commit()
        held.append(db)

    first = tmp_path / "a" / "prefect.db"
    first.parent.mkdir()
    seed_prefect_db(first, template, lambda: migrate(first))
    assert len(held) == 1 and template.exists()
    with contextlib.closing(sqlite3.connect(template)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("head",)]

    second = tmp_path / "b" / "prefect.db"
    second.parent.mkdir()
    seed_prefect_db(second, template, lambda: migrate(second))
    assert len(held) == 1  # copied, not migrated
    with contextlib.closing(sqlite3.connect(second)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("head",)]

    second.write_bytes(b"kept")
    seed_prefect_db(second, template, lambda: migrate(second))
    assert second.read_bytes() == b"kept" and len(held) == 1
    for db in held:
        db.close()
