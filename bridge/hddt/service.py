"""The resource server's interactions on the store, independent of HTTP.

Each public method takes the caller's :class:`~bridge.hddt.access.AccessGrant` and answers a
resource or a searchset Bundle as plain dicts, or raises a
:class:`~bridge.hddt.outcome.FhirError`. The patient is the grant's; the grant's MIV scopes
are an implicit ``code`` filter; Device and DeviceMetric are served only when an
Observation the grant may see references them (smart-scopes.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bridge.backend.store import Store, cgm_readings, glucose_readings, insulin_events
from bridge.hddt import data, devices, insulin, observations, outcome, search
from bridge.hddt.access import (
    MIV_BLOOD_GLUCOSE,
    MIV_CONTINUOUS_GLUCOSE,
    PROJECT_INSULIN_DELIVERY,
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
    AccessGrant,
)
from bridge.hddt.data import DeviceRow
from bridge.hddt.observations import (
    BG_LOINC_BY_SAMPLE,
    BG_MIV_CODES,
    CGM_CODE,
    CGM_MIV_CODES,
    LOINC,
    RANK_BG,
    RANK_INSULIN,
    Chunk,
    DeviceTimeline,
)
from bridge.hddt.settings import HddtSettings
from bridge.records import mmol_l_to_mg_dl

Key = tuple[str, int, str]
_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class _Context:
    """What one request knows about the patient (read once per request)."""

    grant: AccessGrant
    now: dt.datetime
    cutoff: dt.datetime
    devices: list[DeviceRow]
    lines: dict[str, DeviceTimeline]
    by_key: dict[str, DeviceRow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_key = {d.key: d for d in self.devices}


@dataclass(frozen=True, slots=True)
class _Plan:
    """The sources an Observation search reads (None: no ``_id`` restriction)."""

    issues: list[dict[str, Any]]
    bg_types: list[str]
    cgm_on: bool
    insulin_codes: set[tuple[str, str]]
    bg_ids: set[int] | None
    cgm_ids: set[str] | None
    insulin_ids: set[int] | None


@dataclass(frozen=True, slots=True)
class _Hit:
    key: Key
    resource: dict[str, Any]


class FhirService:
    """Read-only FHIR interactions of one Device Data Recorder over ``store``."""

    def __init__(self, store: Store, settings: HddtSettings, *, base_url: str,
                 clock: Clock = _utc_now) -> None:
        self.store = store
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._calibrated_since: dict[tuple[str, dt.datetime | None], dt.datetime | None] = {}
        self._cache_lock = threading.Lock()
        self._cells: dict[tuple[Any, ...], list[tuple[Chunk, dict[str, Any]]]] = {}
        self._devices_cache: dict[str, tuple[float, list[DeviceRow],
                                             dict[str, DeviceTimeline]]] = {}
        # PostgreSQL: a read engine of its own in autocommit and without the pool's pre-ping
        # (one round trip less per request). A connection lost to a server restart raises
        # with ``connection_invalidated``; the app then runs the (idempotent) read once more.
        self._read_engine: Engine | None = None
        if store.engine.dialect.name == "postgresql":
            self._read_engine = sa.create_engine(
                store.engine.url, isolation_level="AUTOCOMMIT",
                pool_size=settings.worker_threads + 1, max_overflow=4)

    def read_connection(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for one interaction's reads."""
        return self._read()

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        if self._read_engine is None:
            return self.store.read()
        return self._read_engine.connect()

    def close(self) -> None:
        if self._read_engine is not None:
            self._read_engine.dispose()

    # --- context -------------------------------------------------------------------------

    def _context(self, conn: Connection, grant: AccessGrant, *, fresh: bool = False,
                 now: dt.datetime | None = None) -> _Context:
        now = self.clock() if now is None else now
        ttl = 0.0 if fresh else self.settings.context_cache_s
        patient = grant.patient_id
        if ttl > 0:
            at = time.monotonic()
            with self._cache_lock:
                cached = self._devices_cache.get(patient)
            if cached is not None and cached[0] > at:
                devs, lines = cached[1], cached[2]
            else:
                devs = data.patient_devices(conn, patient)
                lines = observations.timelines(devs)
                with self._cache_lock:
                    if len(self._devices_cache) > 10_000:
                        self._devices_cache.clear()
                    self._devices_cache[patient] = (at + ttl, devs, lines)
        else:
            devs = data.patient_devices(conn, patient)
            lines = observations.timelines(devs)
        return _Context(grant, now, now - self.settings.historic_period, devs, lines)

    def _device_visible(self, ctx: _Context, device: DeviceRow) -> bool:
        """Whether an Observation the grant may see references the device."""
        vs = ctx.grant.value_sets
        if MIV_BLOOD_GLUCOSE in vs and device.last_bg is not None and device.last_bg >= ctx.cutoff:
            return True
        if (PROJECT_INSULIN_DELIVERY in vs and device.last_insulin is not None
                and device.last_insulin >= ctx.cutoff):
            return True
        span = self.settings.cgm_chunk_span
        return (MIV_CONTINUOUS_GLUCOSE in vs and device.last_cgm is not None
                and device.last_cgm >= ctx.cutoff - span)

    # --- Observation search ----------------------------------------------------------------

    def _plan(self, grant: AccessGrant, s: search.ObservationSearch) -> _Plan:
        """Which sources (and codes) a search reads, and the warnings of its codes."""
        issues: list[dict[str, Any]] = []
        vs = grant.value_sets
        universe: set[tuple[str, str]] = set()
        if MIV_BLOOD_GLUCOSE in vs:
            universe |= {(LOINC, c) for c in BG_MIV_CODES}
        if MIV_CONTINUOUS_GLUCOSE in vs:
            universe |= {(LOINC, c) for c in CGM_MIV_CODES}
        if PROJECT_INSULIN_DELIVERY in vs:
            universe |= insulin.INSULIN_CODES
        admitted = set(universe)
        for group in s.codes:
            matched = {c for c in universe if any(t.matches(*c) for t in group)}
            for token in group:
                if not any(token.matches(*c) for c in universe):
                    issues.append(outcome.code_not_in_value_set(token.text, sorted(vs) or [
                        "(no value set granted)"]))
            admitted &= matched
        loinc = {code for system, code in admitted if system == LOINC}
        bg_types = ([st for st, (code, _d) in BG_LOINC_BY_SAMPLE.items() if code in loinc]
                    if MIV_BLOOD_GLUCOSE in vs else [])
        cgm_on = MIV_CONTINUOUS_GLUCOSE in vs and CGM_CODE in loinc and not s.values
        # The insulin extension: its own scope and codes, never part of a glucose MIV grant.
        insulin_codes = admitted & insulin.INSULIN_CODES if not s.values else set()
        bg_ids, cgm_ids, insulin_ids = self._split_ids(s.ids)
        if insulin_ids is not None and not insulin_ids:
            insulin_codes = set()
        if bg_ids is not None and not bg_ids:
            bg_types = []
        if cgm_ids is not None and not cgm_ids:
            cgm_on = False
        return _Plan(issues, bg_types, cgm_on, insulin_codes, bg_ids, cgm_ids, insulin_ids)

    def search_fingerprint(self, conn: Connection, grant: AccessGrant,
                           s: search.ObservationSearch) -> tuple[Any, ...]:
        """What the answer of an Observation search depends on in the store, in one query:
        the patient's devices (with their first and newest readings) and, per source the
        search reads, the patient's rows in the searched time range widened by a chunk
        span (a chunk reaching into the range may start or end outside it)."""
        sql, params = self.fingerprint_statement(conn.dialect.name, grant, s)
        return data.fetch_one(conn, sql, params)

    def fingerprint_statement(self, dialect: str, grant: AccessGrant,
                              s: search.ObservationSearch) -> tuple[str, Any]:
        """SQL and parameters of :meth:`search_fingerprint` (its one query)."""
        plan = self._plan(grant, s)
        tables = [name for name, on in (("cgm_readings", plan.cgm_on),
                                        ("glucose_readings", bool(plan.bg_types)),
                                        ("insulin_events", bool(plan.insulin_codes))) if on]
        span = self.settings.cgm_chunk_span
        lo, hi = search.date_window(s.dates)
        if any(p.prefix == "ap" for group in s.dates for p in group):
            lo, hi = _MIN, _MAX  # "ap" widens with the distance from now
        cutoff = self.clock() - self.settings.historic_period
        start = max(_shift(lo, -span), cutoff - span)
        return data.fingerprint_statement(dialect, grant.patient_id, tables, start,
                                          max(_shift(hi, span), start))

    def search_observations(self, grant: AccessGrant, s: search.ObservationSearch,
                            query: Sequence[tuple[str, str]], *,
                            conn: Connection | None = None, fresh: bool = False,
                            now: dt.datetime | None = None) -> dict[str, Any]:
        """The searchset Bundle of an Observation search (on ``conn`` when given; ``fresh``
        reads the patient's devices now instead of reusing them for ``context_cache_s``)."""
        if conn is None:
            with self._read() as own:
                return self._search_observations(own, grant, s, query, fresh=fresh, now=now)
        return self._search_observations(conn, grant, s, query, fresh=fresh, now=now)

    def _search_observations(self, conn: Connection, grant: AccessGrant,
                             s: search.ObservationSearch, query: Sequence[tuple[str, str]],
                             *, fresh: bool,
                             now: dt.datetime | None) -> dict[str, Any]:
        plan = self._plan(grant, s)
        issues = plan.issues
        bg_types, cgm_on, insulin_codes = plan.bg_types, plan.cgm_on, plan.insulin_codes
        bg_ids, cgm_ids, insulin_ids = plan.bg_ids, plan.cgm_ids, plan.insulin_ids
        count = s.paging.count
        cursor = s.paging.cursor
        forward = cursor is None or cursor.forward
        # Fetch order: the sort order going forward, the reverse going back.
        fetch_desc = s.descending == forward
        ctx = self._context(conn, grant, fresh=fresh, now=now)
        lo, _hi = search.date_window(s.dates)
        if s.dates and lo < ctx.cutoff:
            issues.append(outcome.HISTORIC_RANGE_WARNING)
        hits: list[_Hit] = []
        if bg_types and count:
            hits += self._bg_hits(conn, ctx, s, sample_types=bg_types, ids=bg_ids,
                                  desc=fetch_desc, cursor=cursor, limit=count + 1)
        if cgm_on and count:
            hits += self._cgm_hits(conn, ctx, s, ids=cgm_ids, desc=fetch_desc,
                                   cursor=cursor, limit=count + 1)
        if insulin_codes and count:
            hits += self._insulin_hits(conn, ctx, s, codes=insulin_codes, ids=insulin_ids,
                                       desc=fetch_desc, cursor=cursor, limit=count + 1)
        hits.sort(key=lambda h: h.key, reverse=fetch_desc)
        more = len(hits) > count
        page = hits[:count]
        if not forward:
            page.reverse()
        included = self._includes(conn, ctx, [h.resource for h in page], s)
        links = [("self", self._url("Observation", query, None))]
        if page:
            if (forward and more) or not forward:
                links.append(("next", self._url("Observation", query,
                                                search.Cursor(page[-1].key, True))))
            if (not forward and more) or (forward and cursor is not None):
                links.append(("previous", self._url("Observation", query,
                                                    search.Cursor(page[0].key, False))))
        return self._bundle([h.resource for h in page], included, issues, links, ctx.now)

    def _split_ids(self, groups: Sequence[set[str]]
                   ) -> tuple[set[int] | None, set[str] | None, set[int] | None]:
        if not groups:
            return None, None, None
        wanted = set.intersection(*[set(g) for g in groups])
        bg = {int(i[3:]) for i in wanted if i.startswith("bg-") and i[3:].isdigit()}
        cgm = {i for i in wanted if i.startswith("cgm-")}
        ins = {int(i[4:]) for i in wanted if i.startswith("ins-") and i[4:].isdigit()}
        return bg, cgm, ins

    def _insulin_hits(self, conn: Connection, ctx: _Context, s: search.ObservationSearch, *,
                      codes: set[tuple[str, str]], ids: set[int] | None, desc: bool,
                      cursor: search.Cursor | None, limit: int) -> list[_Hit]:
        t = insulin_events
        q = sa.select(t).where(t.c.patient_id == ctx.grant.patient_id, t.c.time >= ctx.cutoff,
                               t.c.kind.in_(sorted(k.value for k in insulin.INSULIN_KINDS)))
        if ids is not None:
            q = q.where(t.c.id.in_(sorted(ids)))
        for group in s.dates:
            q = q.where(sa.or_(*[_date_sql(p, t.c.time, ctx.now) for p in group]))
        for group in s.last_updated:
            q = q.where(sa.or_(*[_date_sql(p, t.c.inserted_at, ctx.now) for p in group]))
        if cursor is not None:
            q = q.where(_keyset_sql(cursor.key, RANK_INSULIN, t.c.time, t.c.id, desc))
        order = (t.c.time.desc(), t.c.id.desc()) if desc else (t.c.time, t.c.id)
        q = q.order_by(*order)
        if codes == insulin.INSULIN_CODES:
            q = q.limit(limit)  # otherwise codes filter after the query: few rows a day
        by_id = {d.id: d for d in ctx.devices}
        out: list[_Hit] = []
        for row in conn.execute(q).mappings():
            device = by_id.get(row["device_id"])
            if device is None:
                continue
            resource = insulin.insulin_observation(
                dict(row), base_url=self.base_url,
                device_reference=f"Device/{observations.device_id(device)}")
            coding = resource["code"]["coding"][0]
            if (coding["system"], coding["code"]) not in codes:
                continue
            out.append(_Hit((observations.instant(row["time"]), RANK_INSULIN,
                             f"{row['id']:020d}"), resource))
            if len(out) >= limit:
                break
        return out

    def _bg_hits(self, conn: Connection, ctx: _Context, s: search.ObservationSearch, *,
                 sample_types: Sequence[str], ids: set[int] | None, desc: bool,
                 cursor: search.Cursor | None, limit: int) -> list[_Hit]:
        t = glucose_readings
        q = sa.select(*data.GLUCOSE_COLUMNS).where(
            t.c.patient_id == ctx.grant.patient_id, t.c.time >= ctx.cutoff,
            t.c.sample_type.in_(list(sample_types)))
        if ids is not None:
            q = q.where(t.c.id.in_(sorted(ids)))
        for group in s.dates:
            q = q.where(sa.or_(*[_date_sql(p, t.c.time, ctx.now) for p in group]))
        for group in s.last_updated:
            q = q.where(sa.or_(*[_date_sql(p, t.c.inserted_at, ctx.now) for p in group]))
        for qgroup in s.values:
            q = q.where(sa.or_(*[_quantity_sql(p, t.c.value) for p in qgroup]))
        if cursor is not None:
            q = q.where(_keyset_sql(cursor.key, RANK_BG, t.c.time, t.c.id, desc))
        order = (t.c.time.desc(), t.c.id.desc()) if desc else (t.c.time, t.c.id)
        q = q.order_by(*order).limit(limit)
        by_id = {d.id: d for d in ctx.devices}
        st = self.settings
        out = []
        for row in conn.execute(q):
            device = by_id.get(row.device_id)
            if device is None:
                continue
            resource = observations.blood_glucose(row, device, lower_limit=st.bg_lower_limit_mg_dl,
                                                  upper_limit=st.bg_upper_limit_mg_dl)
            out.append(_Hit((observations.instant(row.time), RANK_BG, f"{row.id:020d}"),
                            resource))
        return out

    def _cgm_hits(self, conn: Connection, ctx: _Context, s: search.ObservationSearch, *,
                  ids: set[str] | None, desc: bool, cursor: search.Cursor | None,
                  limit: int) -> list[_Hit]:
        lines = list(ctx.lines.values())
        if not lines:
            return []
        st = self.settings
        span = st.cgm_chunk_span
        lo, hi = search.date_window(s.dates)
        first = min(line.device.first_cgm for line in lines if line.device.first_cgm)
        earliest = max(_shift(lo, -span), ctx.cutoff - span, first)
        latest = min(_shift(hi, span), ctx.now + span)
        if cursor is not None:
            at = dt.datetime.strptime(cursor.key[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=dt.UTC)
            if desc:
                latest = min(latest, at + span)
            else:
                earliest = max(earliest, at - span)
        if earliest >= latest:
            return []
        start_cell = observations.cell_start(earliest, span)
        end_cell = observations.cell_start(latest, span) + span
        batch = span * max(min(limit, 24 * 7), 1)
        hits: list[_Hit] = []
        w0, w1 = (end_cell - batch, end_cell) if desc else (start_cell, start_cell + batch)
        while len(hits) < limit and w1 > start_cell and w0 < end_cell:
            a, b = max(w0, start_cell), min(w1, end_cell)
            window = [self._chunk_hit(c, r, s, ctx, ids=ids, cursor=cursor, desc=desc)
                      for c, r in self._window_chunks(conn, ctx, a, b)]
            found = sorted((h for h in window if h is not None), key=lambda h: h.key,
                           reverse=desc)
            hits += found
            w0, w1 = (w0 - batch, w0) if desc else (w1, w1 + batch)
        return hits[:limit]

    def _window_chunks(self, conn: Connection, ctx: _Context, a: dt.datetime,
                       b: dt.datetime) -> list[tuple[Chunk, dict[str, Any]]]:
        """Chunks (with their resources) of the cells in ``[a, b)``.

        A cell's chunks depend only on its readings and on its sensor's newest reading and
        replacement, so they are kept, keyed by a fingerprint of the cell (reading count and
        newest insertion) and those two; only cells that changed are read and built again."""
        st = self.settings
        span = st.cgm_chunk_span
        span_s = int(span.total_seconds())
        out: list[tuple[Chunk, dict[str, Any]]] = []
        missing: dict[tuple[str, dt.datetime], tuple[Any, ...] | None] = {}
        # Without the cache, every cell of the window is built from its rows.
        cells_in = (data.cgm_cells(conn, ctx.grant.patient_id, a, b, span_s)
                    if st.cell_cache else [])
        for device_id, index, count, newest in cells_in:
            timeline = ctx.lines.get(device_id)
            if timeline is None:
                continue
            cell = _EPOCH + dt.timedelta(seconds=index * span_s)
            last = timeline.device.last_cgm
            key = (device_id, index, count, newest, timeline.retired_at,
                   last if last is not None and last < cell + span else None)
            with self._cache_lock:
                hit = self._cells.get(key) if st.cell_cache else None
            if hit is not None:
                out += hit
            else:
                missing[(device_id, cell)] = key
        if missing or not st.cell_cache:
            if st.cell_cache:
                lo = min(cell for _d, cell in missing)
                hi = max(cell for _d, cell in missing) + span
                rows = data.cgm_rows(conn, ctx.grant.patient_id, lo, hi,
                                     sorted({d for d, _c in missing}))
            else:
                rows = data.cgm_rows(conn, ctx.grant.patient_id, a, b)
            cells: dict[tuple[str, dt.datetime], list[data.CgmRow]] = {}
            current: list[data.CgmRow] = []
            cell_end = _MIN
            device = ""
            for row in rows:  # sorted by device and time: a new cell only at a boundary
                if row.time >= cell_end or row.device_id != device:
                    device = row.device_id
                    cell = observations.cell_start(row.time, span)
                    cell_end = cell + span
                    current = cells.setdefault((device, cell), [])
                current.append(row)
            if not st.cell_cache:
                missing = {c: None for c in cells if c[0] in ctx.lines}
            for (device_id, cell), cell_key in missing.items():
                built = [(c, self._chunk_resource(c)) for c in observations.cell_chunks(
                    ctx.lines[device_id], cell, cells.get((device_id, cell), []), span=span,
                    now=ctx.now, pending_window=st.cgm_pending_window)]
                if cell_key is not None:
                    with self._cache_lock:
                        if len(self._cells) > 50_000:
                            self._cells.clear()
                        self._cells[cell_key] = built
                out += built
        # Pending cells: after a current sensor's newest reading, up to now (never kept).
        for line in ctx.lines.values():
            last = line.device.last_cgm
            if line.retired_at is not None or last is None:
                continue
            cell = max(observations.cell_start(last, span) + span, a)
            while cell < b and cell <= ctx.now and cell < last + st.cgm_pending_window:
                out += [(c, self._chunk_resource(c)) for c in observations.cell_chunks(
                    line, cell, [], span=span, now=ctx.now,
                    pending_window=st.cgm_pending_window)]
                cell += span
        return out

    def _chunk_hit(self, chunk: Chunk, resource: dict[str, Any], s: search.ObservationSearch,
                   ctx: _Context, *,
                   ids: set[str] | None, cursor: search.Cursor | None,
                   desc: bool) -> _Hit | None:
        if chunk.end <= ctx.cutoff or chunk.start > ctx.now:
            return None
        if ids is not None and chunk.id not in ids:
            return None
        if not search.dates_match(s.dates, chunk.start, chunk.end, ctx.now):
            return None
        key = chunk.key
        if cursor is not None and ((key >= cursor.key) if desc else (key <= cursor.key)):
            return None
        if s.last_updated:
            updated = dt.datetime.strptime(resource["meta"]["lastUpdated"],
                                           "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
            if not search.dates_match(s.last_updated, updated,
                                      updated + dt.timedelta(microseconds=1), ctx.now):
                return None
        return _Hit(key, resource)

    def _chunk_resource(self, chunk: Chunk) -> dict[str, Any]:
        st = self.settings
        # The sensor's sample period, from this chunk's readings (a few suffice).
        period = observations.sample_period(chunk.rows[:13], st.cgm_default_sample_period)
        return observations.chunk_resource(chunk, period, lower=st.cgm_lower_limit_mg_dl,
                                           upper=st.cgm_upper_limit_mg_dl)

    # --- includes --------------------------------------------------------------------------

    def _includes(self, conn: Connection, ctx: _Context, resources: Iterable[dict[str, Any]],
                  s: search.ObservationSearch) -> list[dict[str, Any]]:
        if not s.include_device:
            return []
        scopes = ctx.grant.scopes
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for resource in resources:
            ref = resource.get("device", {}).get("reference", "")
            if ref in seen:
                continue
            seen.add(ref)
            if ref.startswith("Device/"):
                device = ctx.by_key.get(ref.removeprefix("Device/dev-"))
                if device is not None and SCOPE_DEVICE in scopes:
                    out.append(self._device(ctx, device))
                continue
            found = self._resolve_metric(ctx, ref.removeprefix("DeviceMetric/"))
            if found is None:
                continue
            device, state = found
            if SCOPE_DEVICE_METRIC in scopes:
                out.append(self._metric(conn, device, state))
            source = f"Device/{observations.device_id(device)}"
            if s.include_source and SCOPE_DEVICE in scopes and source not in seen:
                seen.add(source)
                out.append(self._device(ctx, device))
        return out

    def _resolve_metric(self, ctx: _Context, metric_id: str) -> tuple[DeviceRow, str] | None:
        if not metric_id.startswith("dm-"):
            return None
        key, _, state = metric_id[3:].partition("-")
        device = ctx.by_key.get(key)
        if device is None or state not in devices.CALIBRATION_STATES:
            return None
        return device, state

    def _device(self, ctx: _Context, device: DeviceRow) -> dict[str, Any]:
        line = ctx.lines.get(device.id)
        return devices.device_resource(device, status=devices.device_status(
            device, retired=line is not None and line.retired_at is not None, now=ctx.now,
            delay_from_real_time=self.settings.delay_from_real_time))

    def _metric(self, conn: Connection, device: DeviceRow, state: str) -> dict[str, Any]:
        since = None
        if state == "calibrated" and device.first_cgm is not None:
            since = self._calibrated_since_for(conn, device)
        return devices.metric_resource(device, state, since)

    def _calibrated_since_for(self, conn: Connection, device: DeviceRow) -> dt.datetime | None:
        """When the current calibrated run of the sensor began (cached per newest reading)."""
        cache_key = (device.id, device.last_cgm)
        with self._cache_lock:
            if cache_key in self._calibrated_since:
                return self._calibrated_since[cache_key]
        t = cgm_readings
        bad = sa.select(sa.func.max(t.c.time)).where(
            t.c.device_id == device.id,
            t.c.annunciations.like("%calibration-required%")
            | t.c.annunciations.like("%sensor-warmup%")).scalar_subquery()
        since = conn.execute(sa.select(sa.func.min(t.c.time)).where(
            t.c.device_id == device.id,
            sa.or_(bad.is_(None), t.c.time > bad))).scalar_one()
        value = data._utc(since)
        with self._cache_lock:
            if len(self._calibrated_since) > 10_000:
                self._calibrated_since.clear()
            self._calibrated_since[cache_key] = value
        return value

    # --- reads -----------------------------------------------------------------------------

    def read_observation(self, grant: AccessGrant, resource_id: str) -> dict[str, Any]:
        ref = f"Observation/{resource_id}"
        with self._read() as conn:
            ctx = self._context(conn, grant)
            if resource_id.startswith("bg-") and resource_id[3:].isdigit():
                return self._read_bg(conn, ctx, int(resource_id[3:]), ref)
            if resource_id.startswith("cgm-"):
                return self._read_chunk(conn, ctx, resource_id, ref)
            if resource_id.startswith("ins-") and resource_id[4:].isdigit():
                return self._read_insulin(conn, ctx, int(resource_id[4:]), ref)
        raise outcome.not_known(ref)

    def _read_bg(self, conn: Connection, ctx: _Context, row_id: int,
                 ref: str) -> dict[str, Any]:
        if MIV_BLOOD_GLUCOSE not in ctx.grant.value_sets:
            raise outcome.not_known(ref)
        t = glucose_readings
        row = conn.execute(sa.select(*data.GLUCOSE_COLUMNS).where(
            t.c.id == row_id, t.c.patient_id == ctx.grant.patient_id,
            t.c.sample_type.in_(list(BG_LOINC_BY_SAMPLE)))).first()
        if row is None:
            raise outcome.not_known(ref)
        if row.time < ctx.cutoff:
            raise outcome.expired(ref, self.settings.expired_read_status)
        device = next((d for d in ctx.devices if d.id == row.device_id), None)
        if device is None:
            raise outcome.not_known(ref)
        st = self.settings
        return observations.blood_glucose(row, device, lower_limit=st.bg_lower_limit_mg_dl,
                                          upper_limit=st.bg_upper_limit_mg_dl)

    def _read_insulin(self, conn: Connection, ctx: _Context, row_id: int,
                      ref: str) -> dict[str, Any]:
        if PROJECT_INSULIN_DELIVERY not in ctx.grant.value_sets:
            raise outcome.not_known(ref)
        t = insulin_events
        row = conn.execute(sa.select(t).where(
            t.c.id == row_id, t.c.patient_id == ctx.grant.patient_id,
            t.c.kind.in_(sorted(k.value for k in insulin.INSULIN_KINDS)))).mappings().first()
        if row is None:
            raise outcome.not_known(ref)
        if row["time"] < ctx.cutoff:
            raise outcome.expired(ref, self.settings.expired_read_status)
        device = next((d for d in ctx.devices if d.id == row["device_id"]), None)
        if device is None:
            raise outcome.not_known(ref)
        return insulin.insulin_observation(
            dict(row), base_url=self.base_url,
            device_reference=f"Device/{observations.device_id(device)}")

    def _read_chunk(self, conn: Connection, ctx: _Context, resource_id: str,
                    ref: str) -> dict[str, Any]:
        if MIV_CONTINUOUS_GLUCOSE not in ctx.grant.value_sets:
            raise outcome.not_known(ref)
        _, key, stamp = [*resource_id.split("-"), "", ""][:3]
        device = ctx.by_key.get(key)
        line = ctx.lines.get(device.id) if device is not None else None
        if line is None or not stamp.isdigit():
            raise outcome.not_known(ref)
        span = self.settings.cgm_chunk_span
        start = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
        cell = observations.cell_start(start, span)
        if cell + span <= ctx.cutoff:
            raise outcome.expired(ref, self.settings.expired_read_status)
        rows = data.cgm_rows(conn, ctx.grant.patient_id, cell, cell + span, [line.device.id])
        for chunk in observations.cell_chunks(line, cell, rows, span=span, now=ctx.now,
                                              pending_window=self.settings.cgm_pending_window,
                                              for_read=True):
            if chunk.id == resource_id:
                return self._chunk_resource(chunk)
        raise outcome.not_known(ref)

    def read_device(self, grant: AccessGrant, resource_id: str) -> dict[str, Any]:
        ref = f"Device/{resource_id}"
        if SCOPE_DEVICE not in grant.scopes or not resource_id.startswith("dev-"):
            raise outcome.not_known(ref)
        with self._read() as conn:
            ctx = self._context(conn, grant)
            device = ctx.by_key.get(resource_id[4:])
            if device is None or not self._device_visible(ctx, device):
                raise outcome.not_known(ref)
            return self._device(ctx, device)

    def read_metric(self, grant: AccessGrant, resource_id: str) -> dict[str, Any]:
        ref = f"DeviceMetric/{resource_id}"
        if SCOPE_DEVICE_METRIC not in grant.scopes:
            raise outcome.not_known(ref)
        with self._read() as conn:
            ctx = self._context(conn, grant)
            found = self._resolve_metric(ctx, resource_id)
            if found is None or found[1] not in self._metric_states(conn, ctx, found[0]):
                raise outcome.not_known(ref)
            return self._metric(conn, *found)

    def _metric_states(self, conn: Connection, ctx: _Context, device: DeviceRow) -> list[str]:
        """Calibration states under which visible Observations of ``device`` were measured."""
        if not self._device_visible(ctx, device):
            return []
        vs = ctx.grant.value_sets
        states: list[str] = []
        if MIV_BLOOD_GLUCOSE in vs and device.last_bg is not None:
            states.append("calibrated")
        if MIV_CONTINUOUS_GLUCOSE in vs and device.last_cgm is not None:
            t = cgm_readings
            since = ctx.cutoff - self.settings.cgm_chunk_span
            flags = {"calibration-required": "%calibration-required%",
                     "not-calibrated": "%sensor-warmup%"}
            for state in devices.CALIBRATION_STATES:
                cond: Any
                if state == "calibrated":
                    cond = ~t.c.annunciations.like(flags["calibration-required"]) & ~(
                        t.c.annunciations.like(flags["not-calibrated"]))
                else:
                    cond = t.c.annunciations.like(flags[state])
                hit = conn.execute(sa.select(t.c.id).where(
                    t.c.device_id == device.id, t.c.time >= since, cond).limit(1)).first()
                if hit is not None and state not in states:
                    states.append(state)
        return states

    # --- Device and DeviceMetric search ----------------------------------------------------

    def search_devices(self, grant: AccessGrant, s: search.DeviceSearch,
                       query: Sequence[tuple[str, str]]) -> dict[str, Any]:
        with self._read() as conn:
            ctx = self._context(conn, grant)
            found: list[_Hit] = []
            if SCOPE_DEVICE in grant.scopes:
                for device in ctx.devices:
                    resource = self._device(ctx, device)
                    if not self._device_visible(ctx, device):
                        continue
                    if not all(resource["id"] in g for g in s.ids):
                        continue
                    name = (resource.get("deviceName") or [{}])[0].get("name")
                    if not search.string_matches(s.names, name):
                        continue
                    if not search.string_matches(s.manufacturers, resource.get("manufacturer")):
                        continue
                    coding = resource["type"]["coding"][0]
                    if not all(any(t.matches(coding["system"], coding["code"]) for t in g)
                               for g in s.types):
                        continue
                    found.append(_Hit(("", 0, resource["id"]), resource))
        return self._simple_page("Device", found, s.paging, query=query, included=[],
                                 now=ctx.now)

    def search_metrics(self, grant: AccessGrant, s: search.DeviceMetricSearch,
                       query: Sequence[tuple[str, str]]) -> dict[str, Any]:
        included: list[dict[str, Any]] = []
        with self._read() as conn:
            ctx = self._context(conn, grant)
            found: list[_Hit] = []
            if SCOPE_DEVICE_METRIC in grant.scopes:
                for device in ctx.devices:
                    if not all(observations.device_id(device) in g for g in s.sources):
                        continue
                    for state in self._metric_states(conn, ctx, device):
                        resource = self._metric(conn, device, state)
                        if not all(resource["id"] in g for g in s.ids):
                            continue
                        coding = resource["type"]["coding"][0]
                        if not all(any(t.matches(coding["system"], coding["code"]) for t in g)
                                   for g in s.types):
                            continue
                        found.append(_Hit(("", 0, resource["id"]), resource))
            page, _more = self._page_of(found, s.paging)
            if s.include_source and SCOPE_DEVICE in grant.scopes:
                refs = {h.resource["source"]["reference"] for h in page}
                included = [self._device(ctx, d) for d in ctx.devices
                            if f"Device/{observations.device_id(d)}" in refs]
        return self._simple_page("DeviceMetric", found, s.paging, query=query,
                                 included=included, now=ctx.now)

    @staticmethod
    def _page_of(found: list[_Hit], paging: search.Paging) -> tuple[list[_Hit], bool]:
        found.sort(key=lambda h: h.key)
        if paging.cursor is not None:
            key = paging.cursor.key
            if paging.cursor.forward:
                found = [h for h in found if h.key > key]
            else:
                found = [h for h in found if h.key < key][-paging.count - 1:]
                more = len(found) > paging.count
                return found[-paging.count:] if paging.count else [], more
        return found[:paging.count], len(found) > paging.count

    def _simple_page(self, resource_type: str, found: list[_Hit], paging: search.Paging, *,
                     query: Sequence[tuple[str, str]], included: list[dict[str, Any]],
                     now: dt.datetime) -> dict[str, Any]:
        page, more = self._page_of(found, paging)
        forward = paging.cursor is None or paging.cursor.forward
        links = [("self", self._url(resource_type, query, None))]
        if page:
            if (forward and more) or not forward:
                links.append(("next", self._url(resource_type, query,
                                                search.Cursor(page[-1].key, True))))
            if (not forward and more) or (forward and paging.cursor is not None):
                links.append(("previous", self._url(resource_type, query,
                                                    search.Cursor(page[0].key, False))))
        return self._bundle([h.resource for h in page], included, [], links, now)

    # --- bundles ---------------------------------------------------------------------------

    def _url(self, resource_type: str, query: Sequence[tuple[str, str]],
             cursor: search.Cursor | None) -> str:
        items = [(k, v) for k, v in query if k != "_cursor"]
        if cursor is not None:
            items.append(("_cursor", cursor.encode()))
        text = urlencode(items)
        return f"{self.base_url}/{resource_type}" + (f"?{text}" if text else "")

    def full_url(self, resource: Mapping[str, Any]) -> str:
        return f"{self.base_url}/{resource['resourceType']}/{resource['id']}"

    def _bundle(self, matches: Sequence[dict[str, Any]], included: Sequence[dict[str, Any]],
                issues: Sequence[dict[str, Any]], links: Sequence[tuple[str, str]],
                now: dt.datetime) -> dict[str, Any]:
        entries: list[dict[str, Any]] = [
            {"fullUrl": self.full_url(r), "resource": r, "search": {"mode": "match"}}
            for r in matches]
        entries += [{"fullUrl": self.full_url(r), "resource": r, "search": {"mode": "include"}}
                    for r in included]
        if issues:
            entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                            "resource": outcome.operation_outcome(issues),
                            "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {
            "resourceType": "Bundle", "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": observations.instant(now)}, "type": "searchset",
            "link": [{"relation": rel, "url": url} for rel, url in links]}
        if entries:
            bundle["entry"] = entries
        return bundle

    # --- CGM summary -----------------------------------------------------------------------

    def cgm_points(self, grant: AccessGrant, start: dt.datetime,
                   end: dt.datetime) -> tuple[list[data.CgmRow], dict[str, dict[str, Any]]]:
        """CGM readings of the grant's patient in ``[start, end)`` within the historic
        period, and the Device resources of their sensors."""
        with self._read() as conn:
            ctx = self._context(conn, grant)
            rows = data.cgm_rows(conn, grant.patient_id, max(start, ctx.cutoff), end)
            used = {r.device_id for r in rows}
            devs = {d.id: self._device(ctx, d) for d in ctx.devices if d.id in used}
        return rows, devs


# --- SQL of search parameters ----------------------------------------------------------------

def _shift(value: dt.datetime, delta: dt.timedelta) -> dt.datetime:
    """``value + delta``, saturating at the ends of the calendar (open date bounds)."""
    try:
        return value + delta
    except OverflowError:
        return value

def _date_sql(p: search.DateParam, column: Any, now: dt.datetime) -> Any:
    """A date parameter against a point in time (the column), per search.html prefixes."""
    if p.prefix == "eq":
        return (column >= p.lo) & (column < p.hi)
    if p.prefix == "ne":
        return (column < p.lo) | (column >= p.hi)
    if p.prefix in ("gt", "sa"):
        return column >= p.hi
    if p.prefix in ("lt", "eb"):
        return column < p.lo
    if p.prefix == "ge":
        return column >= p.lo
    if p.prefix == "le":
        return column < p.hi
    slack = max(abs(now - p.lo) / 10, dt.timedelta(days=1))
    return (column >= p.lo - slack) & (column < p.hi + slack)


def _quantity_sql(p: search.QuantityParam, column: Any) -> Any:
    """``value-quantity`` against the stored mg/dL value (mmol/L converted)."""
    if p.system not in (None, observations.UCUM) or p.code not in (None, "mg/dL", "mmol/L"):
        return sa.false()
    scale = mmol_l_to_mg_dl(1.0) if p.code == "mmol/L" else 1.0
    value, lo, hi = p.value * scale, p.lo * scale, p.hi * scale
    if p.prefix == "eq":
        return (column >= lo) & (column < hi)
    if p.prefix == "ne":
        return (column < lo) | (column >= hi)
    if p.prefix in ("gt", "sa"):
        return column > value
    if p.prefix in ("lt", "eb"):
        return column < value
    if p.prefix == "ge":
        return column >= value
    if p.prefix == "le":
        return column <= value
    return (column >= value * 0.9) & (column <= value * 1.1)


def _keyset_sql(key: Key, rank: int, time_col: Any, id_col: Any, desc: bool) -> Any:
    """Rows after ``key`` in the fetch order (keys: time text, source rank, padded id)."""
    at = dt.datetime.strptime(key[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    row_id = int(key[2]) if key[1] == rank and key[2].isdigit() else 0
    if not desc:
        if rank > key[1]:
            return time_col >= at
        if rank < key[1]:
            return time_col > at
        return (time_col > at) | ((time_col == at) & (id_col > row_id))
    if rank < key[1]:
        return time_col <= at
    if rank > key[1]:
        return time_col < at
    return (time_col < at) | ((time_col == at) & (id_col < row_id))
