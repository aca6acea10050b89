"""Read-only connections for the dashboard.

On SQLite the store begins every transaction ``IMMEDIATE`` (a write lock, so that ingest
workers queue instead of failing on a lock upgrade). A page view must not queue behind the
ingest, nor hold the ingest up, so the dashboard reads in ``DEFERRED`` transactions on an
engine of its own, with ``PRAGMA query_only`` so that nothing it runs can write. On
PostgreSQL it uses the store's engine in READ ONLY transactions. When the store offers its own
read context (``Store.read()``) that is used instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from bridge.backend.store import Store


def _sqlite_reader(engine: Engine) -> Engine:
    # NullPool: a connection per page view, closed afterwards; opening a SQLite file costs
    # microseconds and no connection outlives the request (the app has no shutdown hook when
    # it is mounted under another app).
    reader = sa.create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30.0})

    @event.listens_for(reader, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("query_only=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(reader, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN DEFERRED")

    return reader


class StoreReader:
    """``with reader.connect() as conn``: one read-only transaction on the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        read: Callable[[], AbstractContextManager[Connection]] | None = getattr(
            store, "read", None)
        self._store_read = read if callable(read) else None
        self._engine: Engine | None = None
        if self._store_read is None and store.dialect == "sqlite":
            self._engine = _sqlite_reader(store.engine)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._store_read is not None:
            with self._store_read() as conn:
                yield conn
        elif self._engine is not None:
            with self._engine.begin() as conn:
                yield conn
        else:
            with self.store.engine.connect() as plain:
                conn = plain.execution_options(postgresql_readonly=True)
                with conn.begin():
                    yield conn

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
