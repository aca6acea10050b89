"""Small PostgreSQL queries on the event loop without blocking it.

The response cache checks every kept answer with one fingerprint query
(:mod:`bridge.hddt.response_cache`), and the token resolver looks up every access token's
grant and pairing (:class:`bridge.auth.tokens.JwtAccessResolver`). Run on a blocking
connection, the event loop stands still for the whole round trip, PostgreSQL's work
included; handing the query to a worker thread costs more than the query. Over psycopg's
asyncio connections the loop serves other requests while PostgreSQL works (measured by
bench/hddt_api.py). A few connections are used in turn, so that queries of concurrent
requests run side by side.

The connections belong to one event loop: on another loop (a test client's private loop)
they are replaced. A connection that fails is dropped; the caller then answers the slower,
always correct way (the check and build in a worker thread), so a failure never serves a
kept answer.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
from sqlalchemy.engine import URL


class LoopReads:
    """Up to ``size`` autocommit asyncio connections to the database at ``url``."""

    def __init__(self, url: URL, size: int) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self._connections: list[psycopg.AsyncConnection[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn = itertools.count()
        self._connecting = 0
        self.failures = 0

    async def fetch_one(self, sql: str, params: Any) -> tuple[Any, ...] | None:
        """The one row of ``sql``; None when the database could not answer (logged by the
        caller's slower path, which asks again) or there was no row."""
        rows = await self.fetch_rows(sql, params, limit=1)
        return rows[0] if rows else None

    async def fetch_rows(self, sql: str, params: Any, *, limit: int | None = None
                         ) -> list[tuple[Any, ...]] | None:
        """The rows of ``sql`` (at most ``limit``); None when the database could not
        answer, so that a caller tells "no row" from "no answer"."""
        conn = await self._connection()
        if conn is None:
            return None
        try:
            cur = conn.cursor()
            try:
                await cur.execute(sql, params)
                rows = await (cur.fetchall() if limit is None else cur.fetchmany(limit))
            finally:
                await cur.close()
        except psycopg.Error:
            self.failures += 1
            self._drop(conn)
            return None
        return [tuple(row) for row in rows]

    async def _connection(self) -> psycopg.AsyncConnection[Any] | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.close()
            self._loop = loop
        if len(self._connections) + self._connecting < self.size:
            self._connecting += 1
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error:
                self.failures += 1
                conn = None
            finally:
                self._connecting -= 1
            if conn is not None:
                if loop is self._loop:
                    self._connections.append(conn)
                else:  # pragma: no cover - the loop changed while connecting
                    conn.pgconn.finish()
        if not self._connections:
            return None
        return self._connections[next(self._turn) % len(self._connections)]

    def _drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
        conn.pgconn.finish()

    def close(self) -> None:
        """Close every connection (synchronously: the loop may be gone by now)."""
        connections, self._connections = self._connections, []
        for conn in connections:
            conn.pgconn.finish()
