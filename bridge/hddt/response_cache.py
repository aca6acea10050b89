"""Kept answers of Observation searches, checked against the store on every use.

A DiGA polls the same searches again and again (retrieving-data.md "Polling"), and most of
the time nothing changed. An answer is kept as its encoded body, keyed by the patient, the
granted scopes, the exact query (its items in order: the Bundle's links repeat them) and the
format. Before a kept body is served, one fingerprint query
(:func:`bridge.hddt.data.search_fingerprint`) reads what the answer depends on: the
patient's devices with the times of their first and newest readings, and the number and
newest insertion of the patient's rows in the searched time range of each table the search
reads. Any difference, and the answer is built again; so an ingested reading or a changed
device is visible at once. What changes with time alone (a device turning ``unknown`` after
Delay-From-Real-Time, a new pending chunk, data leaving the historic period) is bounded by
``response_cache_max_age_s``. Memory is bounded by ``response_cache_bytes`` (least recently
used answers go first).

On the event loop (PostgreSQL), requests for the same kept answer that arrive while its
check is under way share that check instead of each sending its own: a reading committed
during the check may then show one round trip later (well inside the HDDT holdup of 60 s for
blood glucose, 15 min for CGM; retrieving-data.md), while a request that starts after a
commit always gets a check that starts after it too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.hddt import search
from bridge.hddt.access import AccessGrant
from bridge.hddt.loop_reads import LoopReads
from bridge.hddt.service import FhirService
from bridge.hddt.settings import HddtSettings

#: Bytes counted per entry on top of its body (key, fingerprint, bookkeeping).
ENTRY_OVERHEAD = 1024

#: The Bundle id while an answer is encoded; each response gets a fresh id in its place.
_MARK = str(uuid.uuid4())

Encode = Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """An encoded searchset Bundle, split around its id."""

    fingerprint: tuple[Any, ...]
    built_at: dt.datetime
    expires_at: dt.datetime
    head: bytes
    tail: bytes
    size: int

    def fresh(self, now: dt.datetime) -> bool:
        return self.built_at <= now < self.expires_at

    def body(self) -> bytes:
        """The body with a new Bundle id (every response is its own Bundle)."""
        return b"".join((self.head, str(uuid.uuid4()).encode(), self.tail))


class ResponseCache:
    """A thread-safe LRU map of :class:`KeptAnswer`, bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, KeptAnswer] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> KeptAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, entry: KeptAnswer) -> None:
        if entry.size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            self._entries[key] = entry
            self.bytes += entry.size
            while self.bytes > self.max_bytes:
                _key, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.size
                self.evictions += 1


class ObservationAnswers:
    """Observation search answers as encoded bodies, from the cache when still right."""

    def __init__(self, service: FhirService, settings: HddtSettings) -> None:
        self.service = service
        self.max_age = dt.timedelta(seconds=settings.response_cache_max_age_s)
        self.cache = (ResponseCache(settings.response_cache_bytes)
                      if settings.response_cache_bytes > 0 else None)
        # PostgreSQL: the checks on the event loop over asyncio connections of their own.
        self.loop_reads = (
            LoopReads(service.store.engine.url, settings.response_cache_check_connections)
            if self.cache is not None and settings.response_cache_check_connections > 0
            and service.store.engine.dialect.name == "postgresql" else None)
        # Checks under way on the event loop, by cache key (one loop's tasks at a time).
        self._checks: dict[Hashable, asyncio.Task[tuple[Any, ...] | None]] = {}
        self._checks_loop: asyncio.AbstractEventLoop | None = None
        self.shared_checks = 0

    def kept(self, grant: AccessGrant, s: search.ObservationSearch,
             query: Sequence[tuple[str, str]], *, variant: Hashable) -> bytes | None:
        """The kept body of the search when its fingerprint (one query) and age still hold;
        None when nothing is kept or it is no longer right."""
        cache = self.cache
        if cache is None:
            return None
        key = _key(grant, query, variant)
        if cache.get(key) is None:
            return None  # nothing to check
        with self.service.read_connection() as conn:
            fingerprint = self.service.search_fingerprint(conn, grant, s)
        return self._served(key, fingerprint)

    async def kept_on_loop(self, grant: AccessGrant, s: search.ObservationSearch,
                           query: Sequence[tuple[str, str]], *, variant: Hashable
                           ) -> bytes | None:
        """:meth:`kept` for the event loop: on PostgreSQL the fingerprint query runs over an
        asyncio connection (the loop serves other requests meanwhile), elsewhere as
        :meth:`kept`. None also when the query failed (the caller builds the answer, which
        checks again)."""
        reads = self.loop_reads
        if reads is None:
            return self.kept(grant, s, query, variant=variant)
        cache = self.cache
        if cache is None:
            return None
        key = _key(grant, query, variant)
        if cache.get(key) is None:
            return None  # nothing to check
        fingerprint = await asyncio.shield(self._check(key, reads, grant, s))
        return None if fingerprint is None else self._served(key, fingerprint)

    def _check(self, key: Hashable, reads: LoopReads, grant: AccessGrant,
               s: search.ObservationSearch) -> asyncio.Task[tuple[Any, ...] | None]:
        """The fingerprint check of ``key`` under way, or a new one. A task of its own, so
        that a request that goes away (its client disconnected) does not cancel the check
        the other requests wait for."""
        loop = asyncio.get_running_loop()
        if loop is not self._checks_loop:
            self._checks, self._checks_loop = {}, loop
        task = self._checks.get(key)
        if task is None:
            sql, params = self.service.fingerprint_statement("postgresql", grant, s)
            task = loop.create_task(reads.fetch_one(sql, params))
            self._checks[key] = task
            task.add_done_callback(lambda done: self._check_done(key, done))
        else:
            self.shared_checks += 1
        return task

    def _check_done(self, key: Hashable, task: asyncio.Task[tuple[Any, ...] | None]) -> None:
        if self._checks.get(key) is task:
            del self._checks[key]

    def _served(self, key: Hashable, fingerprint: tuple[Any, ...]) -> bytes | None:
        assert self.cache is not None
        kept = self.cache.get(key)
        if kept is not None and kept.fingerprint == fingerprint and kept.fresh(
                self.service.clock()):
            self.cache.hits += 1
            return kept.body()
        return None

    def close(self) -> None:
        """Close the event loop's connections."""
        if self.loop_reads is not None:
            self.loop_reads.close()

    def search(self, grant: AccessGrant, s: search.ObservationSearch,
               query: Sequence[tuple[str, str]], *, variant: Hashable,
               encode: Encode) -> bytes:
        """The encoded Bundle of the search; ``variant`` names the encoding (format and
        pretty printing) and is part of the key."""
        cache = self.cache
        if cache is None:
            return encode(self.service.search_observations(grant, s, query))
        key = _key(grant, query, variant)
        with self.service.read_connection() as conn:
            fingerprint = self.service.search_fingerprint(conn, grant, s)
            now = self.service.clock()
            kept = cache.get(key)
            if kept is not None and kept.fingerprint == fingerprint and kept.fresh(now):
                cache.hits += 1
                return kept.body()
            cache.misses += 1
            # Read after the fingerprint, with the devices read anew (never from the
            # short-lived device cache): the answer is at least as new as its fingerprint.
            bundle = self.service.search_observations(grant, s, query, conn=conn,
                                                      fresh=True, now=now)
        if any(e.get("search", {}).get("mode") == "outcome" for e in bundle.get("entry", ())):
            return encode(bundle)  # warnings carry their own urn:uuid ids: not kept
        fresh_id = bundle["id"]
        bundle["id"] = _MARK
        body = encode(bundle)
        parts = body.split(_MARK.encode())
        if len(parts) != 2:
            bundle["id"] = fresh_id
            return encode(bundle)
        head, tail = parts
        cache.put(key, KeptAnswer(fingerprint, now, now + self.max_age, head, tail,
                                  len(head) + len(tail) + ENTRY_OVERHEAD
                                  + sum(len(k) + len(v) for k, v in query)))
        return b"".join((head, fresh_id.encode(), tail))


def _key(grant: AccessGrant, query: Sequence[tuple[str, str]],
         variant: Hashable) -> tuple[Any, ...]:
    # The patient and scopes decide what may be seen; the query items in their order (the
    # Bundle's links repeat them); the variant the encoding.
    return (grant.patient_id, tuple(sorted(grant.scopes)), tuple(query), variant)
