"""``python -m infra.prefect_server server start ...``: Prefect's own CLI, with one fix.

Prefect 3.8.8's scheduler bulk-inserts flow runs with a ``state`` key, and SQLAlchemy 2.1
(the only 2.x the lock resolves with) refuses a bulk insert through a hybrid property
that has no ``bulk_dml`` hook ("Can't evaluate bulk DML statement"): no scheduled run
would ever be created. The hook added here drops that key, as SQLAlchemy 2.0 did. The
local stack starts its Prefect servers through this module; a server installed
elsewhere (the compose file's image) is not affected.
"""

from __future__ import annotations

import sys

from prefect.cli import app
from prefect.server.database import orm_models


def _let_the_scheduler_insert_runs() -> None:
    state = orm_models.FlowRun.__dict__.get("state")
    bulk_dml = getattr(getattr(state, "inplace", None), "bulk_dml", None)
    if bulk_dml is None:  # another SQLAlchemy or Prefect: nothing to fix
        return

    def _drop_state(cls, mapping, value) -> None:
        mapping.pop("state", None)

    bulk_dml(_drop_state)


def main() -> None:
    _let_the_scheduler_insert_runs()
    sys.exit(app())


if __name__ == "__main__":
    main()
