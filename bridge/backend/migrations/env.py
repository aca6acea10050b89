"""Alembic environment: runs the revisions on the connection handed over by
:func:`bridge.backend.migrations.upgrade_to_head`, or on ``sqlalchemy.url`` when Alembic's own
command line is used (``--sql`` writes the SQL instead, for review by a database team)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from bridge.backend.store import create_engine, metadata


def _configure(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      # SQLite alters tables by copying them; Alembic's batch mode does that.
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    config = context.config
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"),
                          target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _configure(conn)
    finally:
        engine.dispose()


run()
