"""Device clocks: what a simulated device's clock shows, and the records it stores.

A device never knows true time. Its clock starts with an offset, runs fast or slow by a
constant drift (parts per million) and may be reset (battery change, factory default) or jump
(a user who sets it by hand). :class:`DeviceClock` turns the true UTC instant of an event into
the naive local wall-clock time the device stamps on its record, and back.

Time zones come from :mod:`zoneinfo`. Where the system has no tz database (neither the OS
copy nor the ``tzdata`` package), :func:`resolve_timezone` falls back to the zone's standard
offset with no daylight saving time (``Europe/Berlin`` → UTC+01:00) and says so; a fixed zone
can also be asked for directly as ``"UTC+01:00"``.

:class:`DeviceLog` holds one device's identity, clock and records, and stamps each new record
with the device time and the device's own sequence number.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from bridge.records import DeviceInfo, Record
from simulators.errors import SimulatorError

DEFAULT_TIMEZONE = "Europe/Berlin"

#: Standard (winter) offsets used when the tz database is missing, in minutes east of UTC.
_FALLBACK_OFFSETS_MIN = {
    "UTC": 0, "Etc/UTC": 0, "GMT": 0,
    "Europe/Berlin": 60, "Europe/Vienna": 60, "Europe/Zurich": 60, "Europe/Paris": 60,
    "Europe/Amsterdam": 60, "Europe/Brussels": 60, "Europe/Rome": 60, "Europe/Madrid": 60,
    "Europe/London": 0, "Europe/Lisbon": 0, "Europe/Helsinki": 120, "Europe/Athens": 120,
}

_FIXED = re.compile(r"^UTC([+-])(\d{2}):(\d{2})$")


class DeviceClockError(SimulatorError):
    """A bad clock setting or a device time that no true instant maps to."""


@dataclass(frozen=True, slots=True)
class ResolvedZone:
    """A time zone and whether it is the fixed-offset fallback of a named zone."""

    tzinfo: dt.tzinfo
    name: str
    fallback: bool


def resolve_timezone(name: str) -> ResolvedZone:
    """The zone called ``name``: IANA name via zoneinfo, or ``UTC±HH:MM`` as a fixed offset."""
    fixed = _FIXED.match(name)
    if fixed:
        sign = 1 if fixed.group(1) == "+" else -1
        hours, minutes = int(fixed.group(2)), int(fixed.group(3))
        if hours > 14 or minutes > 59:
            raise DeviceClockError(f"time zone {name!r}: offset out of range")
        delta = dt.timedelta(hours=hours, minutes=minutes) * sign
        return ResolvedZone(dt.timezone(delta, name), name, fallback=False)
    try:
        return ResolvedZone(ZoneInfo(name), name, fallback=False)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    if name in _FALLBACK_OFFSETS_MIN:
        delta = dt.timedelta(minutes=_FALLBACK_OFFSETS_MIN[name])
        return ResolvedZone(dt.timezone(delta, name), name, fallback=True)
    raise DeviceClockError(f"unknown time zone {name!r} (use an IANA name such as "
                           f"'Europe/Berlin' or a fixed offset such as 'UTC+01:00')")


def _require_utc(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise DeviceClockError(f"{what} {value.isoformat()} must be an aware (UTC) instant")
    return value.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class ClockJump:
    """At true instant ``at`` the device clock moves by ``seconds`` (positive: ahead)."""

    at: dt.datetime
    seconds: float


@dataclass(frozen=True, slots=True)
class ClockReset:
    """At true instant ``at`` the device clock is set to the naive local time ``to``.

    A battery change that loses the time typically resets a meter to its firmware's default
    date (e.g. 2000-01-01 00:00); from there the clock runs on at its usual drift.
    """

    at: dt.datetime
    to: dt.datetime


ClockEvent = ClockJump | ClockReset


@dataclass(frozen=True, slots=True)
class _Segment:
    start: dt.datetime       # true UTC instant the segment begins
    base: dt.datetime        # device clock (as an aware UTC instant) at ``start``


class DeviceClock:
    """Maps true UTC instants to a device's naive local clock reading and back.

    Between events the device clock reads ``base + (t − start) · (1 + drift_ppm·10⁻⁶)``,
    expressed in the device's time zone. At ``epoch`` (the start of the simulation) the clock is
    ``offset_s`` seconds ahead of true time.
    """

    def __init__(self, *, epoch: dt.datetime, offset_s: float = 0.0, drift_ppm: float = 0.0,
                 timezone: str = DEFAULT_TIMEZONE, events: Sequence[ClockEvent] = ()) -> None:
        if not -1e5 < drift_ppm < 1e5:
            raise DeviceClockError(f"drift_ppm {drift_ppm} is not a plausible clock drift")
        self.epoch = _require_utc(epoch, "clock epoch")
        self.offset_s = float(offset_s)
        self.drift_ppm = float(drift_ppm)
        self.zone = resolve_timezone(timezone)
        self._rate = 1.0 + self.drift_ppm * 1e-6
        self.events = tuple(sorted(events, key=lambda e: _require_utc(e.at, "clock event")))
        segments = [_Segment(self.epoch, self.epoch + dt.timedelta(seconds=self.offset_s))]
        for event in self.events:
            at = _require_utc(event.at, "clock event")
            if at < self.epoch:
                raise DeviceClockError(f"clock event at {at.isoformat()} precedes the clock "
                                       f"epoch {self.epoch.isoformat()}")
            if isinstance(event, ClockJump):
                base = self._device_utc(segments[-1], at) + dt.timedelta(seconds=event.seconds)
            else:
                if event.to.tzinfo is not None:
                    raise DeviceClockError("ClockReset.to is the naive local time the device "
                                           "shows after the reset")
                base = event.to.replace(tzinfo=self.zone.tzinfo).astimezone(dt.UTC)
            segments.append(_Segment(at, base))
        self._segments = tuple(segments)
        self._starts = [s.start for s in segments]

    def _device_utc(self, seg: _Segment, true_utc: dt.datetime) -> dt.datetime:
        return seg.base + (true_utc - seg.start) * self._rate

    def _segment_index(self, true_utc: dt.datetime) -> int:
        return max(0, bisect.bisect_right(self._starts, true_utc) - 1)

    def to_device(self, true_time: dt.datetime) -> dt.datetime:
        """The naive local time the device's clock shows at the true instant ``true_time``.

        In the repeated hour when daylight saving time ends the result carries ``fold=1`` for
        the second pass, so :meth:`to_true` can map it back exactly.
        """
        t = _require_utc(true_time, "true time")
        device_utc = self._device_utc(self._segments[self._segment_index(t)], t)
        return device_utc.astimezone(self.zone.tzinfo).replace(tzinfo=None)

    def candidates(self, device_time: dt.datetime) -> list[dt.datetime]:
        """Every true instant at which the clock showed ``device_time`` (oldest first).

        After a backward jump or reset the same reading occurs more than once; in the gap a
        forward jump skipped it never occurs.
        """
        if device_time.tzinfo is not None:
            raise DeviceClockError("device time is the device's naive local time")
        device_utc = device_time.replace(tzinfo=self.zone.tzinfo).astimezone(dt.UTC)
        found: list[dt.datetime] = []
        for i, seg in enumerate(self._segments):
            true_utc = seg.start + (device_utc - seg.base) / self._rate
            after_start = i == 0 or true_utc >= seg.start
            before_end = i + 1 == len(self._segments) or true_utc < self._segments[i + 1].start
            if after_start and before_end:
                found.append(true_utc)
        return found

    def to_true(self, device_time: dt.datetime) -> dt.datetime:
        """The first true UTC instant, from the epoch on, at which the device's clock showed
        ``device_time`` (before the epoch the clock is extrapolated; such an instant is
        returned only when no later one matches)."""
        found = self.candidates(device_time)
        if not found:
            raise DeviceClockError(f"device time {device_time.isoformat()} was skipped by a "
                                   f"clock jump; no true instant maps to it")
        return next((t for t in found if t >= self.epoch), found[0])

    def __repr__(self) -> str:
        return (f"DeviceClock(offset_s={self.offset_s:g}, drift_ppm={self.drift_ppm:g}, "
                f"timezone={self.zone.name!r}, events={len(self.events)})")


# --- the simulation calendar ---------------------------------------------------------

class SimCalendar:
    """True time of the simulation and the patient's local wall clock, minute by minute.

    Simulation minute ``m`` is the true instant ``start + m`` minutes; ``start`` is local
    midnight of ``start_date`` in ``timezone`` and the run ends at local midnight ``days`` days
    later, so a day with a daylight-saving change has 1380 or 1500 minutes. ``wall_minute[m]``
    is the local minute of the day (0…1439) and ``day_index[m]`` the local day (0…days−1).
    """

    def __init__(self, start_date: dt.date, days: int, timezone: str = DEFAULT_TIMEZONE) -> None:
        if days <= 0:
            raise DeviceClockError(f"days must be positive, got {days}")
        self.start_date = start_date
        self.days = days
        self.zone = resolve_timezone(timezone)
        self.start = self.local_to_utc(start_date, 0)
        end = self.local_to_utc(start_date + dt.timedelta(days=days), 0)
        self.minutes = int((end - self.start).total_seconds() // 60)
        # The UTC offset per 15-minute block: every zone in use changes offset on a quarter hour.
        blocks = (self.minutes + 14) // 15
        offsets = np.array([self._offset_min(self.start + dt.timedelta(minutes=15 * b))
                            for b in range(blocks)], dtype=np.int64)
        start_local = self.start.astimezone(self.zone.tzinfo)
        first_local = start_local.hour * 60 + start_local.minute
        minute = np.arange(self.minutes, dtype=np.int64)
        offset = offsets[minute // 15]
        local = first_local + minute + (offset - offsets[0])
        self.wall_minute = (local % 1440).astype(np.int16)
        self.day_index = (local // 1440).astype(np.int32)

    def _offset_min(self, instant: dt.datetime) -> int:
        offset = instant.astimezone(self.zone.tzinfo).utcoffset()
        return 0 if offset is None else offset // dt.timedelta(minutes=1)

    def local_to_utc(self, date: dt.date, minute_of_day: int) -> dt.datetime:
        local = dt.datetime.combine(date, dt.time(0), tzinfo=self.zone.tzinfo)
        wall = local.replace(hour=minute_of_day // 60, minute=minute_of_day % 60)
        return wall.astimezone(dt.UTC)

    def minute_of(self, day: int, minute_of_day: int) -> int:
        """Simulation minute of local wall time ``minute_of_day`` on local day ``day``.

        May lie outside ``0…minutes−1``; callers drop such events.
        """
        when = self.local_to_utc(self.start_date + dt.timedelta(days=day), minute_of_day)
        return int((when - self.start).total_seconds() // 60)

    def time_of(self, minute: float) -> dt.datetime:
        """The true UTC instant of simulation minute ``minute``."""
        return self.start + dt.timedelta(minutes=minute)

    def date_of_day(self, day: int) -> dt.date:
        return self.start_date + dt.timedelta(days=day)


# --- clock settings (scenario section [clock]) -------------------------------------------

@dataclass(frozen=True, slots=True)
class ClockEventSpec:
    """A scheduled clock event in a scenario: on simulation ``day`` at local ``minute_of_day``.

    Exactly one of ``jump_s`` and ``reset_to`` is set. ``device`` is ``"pump"``, ``"cgm"``,
    ``"meter"`` or ``"all"``.
    """

    device: str
    day: int
    minute_of_day: int
    jump_s: float | None = None
    reset_to: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ClockSettings:
    """How the simulated devices' clocks differ from true time.

    Each device gets ``offset_s`` plus a normal draw with SD ``offset_sd_s``, and ``drift_ppm``
    plus a draw with SD ``drift_sd_ppm`` (deterministic per seed). ``timezone`` is the zone the
    devices show (``None``: the scenario's zone).
    """

    timezone: str | None = None
    offset_s: float = 0.0
    offset_sd_s: float = 90.0
    drift_ppm: float = 0.0
    drift_sd_ppm: float = 20.0
    events: tuple[ClockEventSpec, ...] = ()


# --- device logs -------------------------------------------------------------------------

@dataclass(slots=True)
class DeviceLog:
    """One simulated device: identity, clock and the records it stores.

    Records are added as they happen (:meth:`add`) and built by :meth:`finalize`, in true-time
    order (events at the same instant keep the order they were added in), each stamped with the
    device clock's reading and the device's next sequence number. ``sequence_bits`` is the width
    of that counter (16 for a GLS meter, 32 for IDS pump history, ``None`` when the device
    numbers nothing, as a CGM that identifies values by session and time offset). Counters start
    at ``first_sequence`` and wrap to 0.
    """

    info: DeviceInfo
    clock: DeviceClock
    sequence_bits: int | None = None
    first_sequence: int = 1
    records: list[Record] = field(default_factory=list)
    _pending: list[tuple[dt.datetime, int, type[Record], dict[str, Any]]] = field(
        default_factory=list, init=False, repr=False)
    _next: int = field(default=-1, init=False, repr=False)

    def next_sequence(self) -> int | None:
        if self.sequence_bits is None:
            return None
        if self._next < 0:
            self._next = self.first_sequence
        value = self._next % (1 << self.sequence_bits)
        self._next += 1
        return value

    def add(self, cls: type[Record], time: dt.datetime, **fields: Any) -> None:
        """Note a record of ``cls`` at true instant ``time`` (built by :meth:`finalize`)."""
        self._pending.append((time, len(self._pending), cls, fields))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def finalize(self) -> list[Record]:
        """Build the noted records in time order and append them to :attr:`records`."""
        self._pending.sort(key=lambda x: (x[0], x[1]))
        for time, _, cls, fields in self._pending:
            self.records.append(cls(device_id=self.info.device_id, time=time,
                                    sequence=self.next_sequence(),
                                    device_time=self.clock.to_device(time), **fields))
        self._pending.clear()
        return self.records
