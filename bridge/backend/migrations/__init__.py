"""Schema migrations of the backend store (Alembic), run programmatically.

:func:`upgrade_to_head` brings a database to the newest revision; every worker and command
calls it at start (through :meth:`bridge.backend.store.Store.open`), so a fresh SQLite file
or PostgreSQL database needs no separate step. Concurrent starts are safe: on PostgreSQL an
advisory lock held for the migration transaction serialises them, on SQLite the transaction
is begun ``IMMEDIATE`` and so holds the database's write lock; the second one then finds the
schema current and does nothing. PostgreSQL and SQLite run DDL inside the transaction, so a
failed migration leaves the previous schema intact.

A new revision: change the tables in :mod:`bridge.backend.store`, then run Alembic's
``revision --autogenerate`` with ``script_location`` set to this folder and
``sqlalchemy.url`` to a database at the previous head, and review the generated file (write
plain SQLAlchemy types in it, never the project's own classes, so old revisions stay fixed).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

#: Key of the PostgreSQL advisory lock taken while migrating (any constant shared by all
#: processes of this application; the digits spell "hddt-mig" loosely).
ADVISORY_LOCK_KEY = 4_844_454_000_001

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration for this folder, with no ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(engine: Engine) -> str:
    """Migrate the database behind ``engine`` to the newest revision; returns it."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": ADVISORY_LOCK_KEY})
        command.upgrade(alembic_config(conn), "head")
    return head_revision()
