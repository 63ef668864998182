"""``python -m infra.prefect_server server start ...``: Prefect's own CLI, with one fix,
and a new database copied from an empty one (see infra.empty_db) where one is given in
``SAE_PREFECT_EMPTY_DB``.

Prefect 3.8.8's scheduler bulk-inserts flow runs with a ``state`` key, and SQLAlchemy 2.1
(the only 2.x the lock resolves with) refuses a bulk insert through a hybrid property
that has no ``bulk_dml`` hook ("Can't evaluate bulk DML statement"): no scheduled run
would ever be created. The hook added here drops that key, as SQLAlchemy 2.0 did. The
local stack starts its Prefect servers through this module; a server installed
elsewhere (the compose file's image) is not affected.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from prefect.cli import app
from prefect.server.database import orm_models, provide_database_interface

from infra.empty_db import seed_prefect_db

_SQLITE = "sqlite+aiosqlite:///"


def _let_the_scheduler_insert_runs() -> None:
    state = orm_models.FlowRun.__dict__.get("state")
    bulk_dml = getattr(getattr(state, "inplace", None), "bulk_dml", None)
    if bulk_dml is None:  # another SQLAlchemy or Prefect: nothing to fix
        return

    def _drop_state(cls, mapping, value) -> None:
        mapping.pop("state", None)

    bulk_dml(_drop_state)


def _seed_database() -> None:
    template = os.environ.get("SAE_PREFECT_EMPTY_DB")
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "")
    if template and url.startswith(_SQLITE):
        migrate = lambda: asyncio.run(provide_database_interface().create_db())  # noqa: E731
        seed_prefect_db(Path(url.removeprefix(_SQLITE)), Path(template), migrate)


def main() -> None:
    _let_the_scheduler_insert_runs()
    _seed_database()
    sys.exit(app())


if __name__ == "__main__":
    main()
