"""Alembic environment of the incident journal.

The runbook runs it from runbook.journal.migrate() on a connection it already holds (and has locked);
the `alembic` command (runbook/migrations/alembic.ini) runs it with `-x url=<journal URL>`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from runbook.journal import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the journal to migrate: alembic -c runbook/migrations/alembic.ini -x url=<journal URL> ...")
    with create_engine(url).connect() as opened:
        context.configure(connection=opened, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
