"""Device clock correction: from a device's naive wall-clock time to a trustworthy UTC instant.

Personal health devices keep a local wall clock that the patient set by hand (or never set),
that drifts, and that falls back to a factory date when the battery is changed. At every sync
the driver reads the device clock once against the gateway clock (a
:class:`~bridge.devices.base.ClockObservation`). From it this module derives the device's
offset: the device clock, read as an instant in the device's time zone, minus the gateway's
UTC instant. A positive offset means the device clock runs ahead.

Each record's ``device_time`` (kept untouched) is then read in the same zone and, when the
offset exceeds the tolerance, shifted back by it. Records get :class:`TimeQuality` flags
where their instant deserves suspicion:

* ``device-clock-corrected``: the time was shifted because |offset| > tolerance;
* ``in-future``: the corrected instant lies beyond the gateway's "now" plus a tolerance;
* ``before-device-existed``: it lies before the configured earliest date (default 2000-01-01);
* ``clock-jump``: the offset changed by more than a threshold since the previous sync, so
  the records read in this sync may straddle a clock change and any of them may be wrong;
* ``device-time-unknown``: the device time cannot be placed on the UTC axis at all.

Everything here is a pure function of its inputs plus a small per-device :class:`ClockState`
that the outbox stores in the same transaction as the records it produced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.devices.base import ClockObservation
from bridge.records import AnyRecord, TimeQuality

#: Earliest plausible record instant when none is configured: no device of this kind kept
#: records before then, and a clock that fell back to its epoch often shows 2000-01-01.
DEFAULT_NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """How one device's clock is judged.

    ``zone`` is the device's time zone (its wall clock is local time there); ``tolerance``
    the offset below which device times are taken as they are; ``future_tolerance`` how far
    past the gateway's now a record may lie; ``jump_threshold`` the change of offset between
    two syncs that counts as a clock jump; ``not_before`` the earliest plausible instant.
    """

    zone: dt.tzinfo
    tolerance: dt.timedelta = dt.timedelta(minutes=2)
    future_tolerance: dt.timedelta = dt.timedelta(minutes=5)
    jump_threshold: dt.timedelta = dt.timedelta(minutes=5)
    not_before: dt.datetime = DEFAULT_NOT_BEFORE

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None:
            raise ValueError("not_before must be an aware instant")
        for name in ("tolerance", "future_tolerance", "jump_threshold"):
            if getattr(self, name) < dt.timedelta(0):
                raise ValueError(f"{name} must not be negative")


def _td(seconds: object) -> dt.timedelta | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"expected seconds as a number, got {seconds!r}")
    return dt.timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class ClockState:
    """What the agent remembers of one device clock between syncs.

    ``offset`` (device minus gateway) and ``utc_offset`` (the device's own statement of its
    zone, if it makes one) come from the last observation, made at gateway instant
    ``observed_at`` from ``source``. ``jumps`` counts the clock jumps seen so far.
    """

    offset: dt.timedelta | None = None
    observed_at: dt.datetime | None = None
    source: str | None = None
    utc_offset: dt.timedelta | None = None
    jumps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "offset_s": None if self.offset is None else self.offset.total_seconds(),
            "observed_at": None if self.observed_at is None else self.observed_at.isoformat(),
            "source": self.source,
            "utc_offset_s": None if self.utc_offset is None else self.utc_offset.total_seconds(),
            "jumps": self.jumps,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> ClockState:
        """The inverse of :meth:`to_json`; an empty or missing document is a fresh state."""
        if not doc:
            return cls()
        observed = doc.get("observed_at")
        jumps = doc.get("jumps", 0)
        if isinstance(jumps, bool) or not isinstance(jumps, int):
            raise ValueError(f"jumps must be an integer, got {jumps!r}")
        source = doc.get("source")
        return cls(offset=_td(doc.get("offset_s")),
                   observed_at=None if observed is None
                   else dt.datetime.fromisoformat(str(observed)),
                   source=None if source is None else str(source),
                   utc_offset=_td(doc.get("utc_offset_s")), jumps=jumps)


def device_to_utc(device_time: dt.datetime, zone: dt.tzinfo,
                  utc_offset: dt.timedelta | None = None) -> dt.datetime:
    """A naive device wall-clock time as an aware UTC instant.

    With ``utc_offset`` (the device states its own offset, e.g. CTS Local Time Information)
    that fixed offset is used; otherwise ``zone``'s rules at that local time (an ambiguous
    hour at the end of summer time resolves to its first occurrence, ``fold=0``).
    Raises :class:`OverflowError` when the instant falls outside ``datetime``'s range.
    """
    if device_time.tzinfo is not None:
        raise ValueError("device_time is the device's naive wall-clock time")
    if utc_offset is not None:
        return (device_time - utc_offset).replace(tzinfo=dt.UTC)
    return device_time.replace(tzinfo=zone).astimezone(dt.UTC)


def measure_offset(observation: ClockObservation, zone: dt.tzinfo) -> dt.timedelta:
    """Device clock minus gateway clock at the moment of ``observation``."""
    device_instant = device_to_utc(observation.device_time, zone, observation.utc_offset)
    return device_instant - observation.gateway_time.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class ClockUpdate:
    """The result of one sync's observation: the new state, the offset to apply to this
    sync's records (``None``: nothing known), the device's stated UTC offset, and whether
    the clock jumped since the previous sync."""

    state: ClockState
    offset: dt.timedelta | None
    utc_offset: dt.timedelta | None
    jumped: bool


def update_clock(previous: ClockState, observation: ClockObservation | None,
                 policy: ClockPolicy) -> ClockUpdate:
    """Fold one sync's clock observation into the device's clock state.

    Without an observation the last known offset still applies (the clock has most likely
    kept it); with one, a change of more than ``policy.jump_threshold`` against the last
    known offset is a clock jump.
    """
    if observation is None:
        return ClockUpdate(previous, previous.offset, previous.utc_offset, jumped=False)
    try:
        offset = measure_offset(observation, policy.zone)
    except OverflowError:
        # A clock reading at the very edge of the calendar cannot be placed; keep what was
        # known rather than invent an offset.
        return ClockUpdate(previous, previous.offset, previous.utc_offset, jumped=False)
    jumped = (previous.offset is not None
              and abs(offset - previous.offset) > policy.jump_threshold)
    state = ClockState(offset=offset, observed_at=observation.gateway_time.astimezone(dt.UTC),
                       source=str(observation.source), utc_offset=observation.utc_offset,
                       jumps=previous.jumps + (1 if jumped else 0))
    return ClockUpdate(state, offset, observation.utc_offset, jumped)


def correct_record(record: AnyRecord, update: ClockUpdate, policy: ClockPolicy,
                   now: dt.datetime) -> AnyRecord:
    """``record`` with its UTC ``time`` derived from its ``device_time`` and flagged.

    ``device_time`` stays as the device reported it. A record without a device time keeps
    the instant the driver gave it (it came from somewhere other than the device clock) and
    is only checked for plausibility. Flags the driver set are kept.
    """
    flags = set(record.time_quality)
    time = record.time
    if record.device_time is not None:
        try:
            time = device_to_utc(record.device_time, policy.zone, update.utc_offset)
            if update.offset is not None and abs(update.offset) > policy.tolerance:
                time = time - update.offset
                flags.add(TimeQuality.DEVICE_CLOCK_CORRECTED)
        except OverflowError:
            time = record.time
            flags.add(TimeQuality.DEVICE_TIME_UNKNOWN)
        if update.jumped:
            flags.add(TimeQuality.CLOCK_JUMP)
    if time > now + policy.future_tolerance:
        flags.add(TimeQuality.IN_FUTURE)
    if time < policy.not_before:
        flags.add(TimeQuality.BEFORE_DEVICE_EXISTED)
    if time == record.time and flags == record.time_quality:
        return record
    return dataclasses.replace(record, time=time, time_quality=frozenset(flags))


def correct_sync(records: Iterable[AnyRecord], observation: ClockObservation | None,
                 previous: ClockState, policy: ClockPolicy,
                 now: dt.datetime) -> tuple[tuple[AnyRecord, ...], ClockState]:
    """Correct all records of one sync; returns them with the device's new clock state."""
    update = update_clock(previous, observation, policy)
    now_utc = now.astimezone(dt.UTC)
    return tuple(correct_record(r, update, policy, now_utc) for r in records), update.state
