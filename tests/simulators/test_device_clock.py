"""Device clocks: offset and drift, resets and jumps, time zones, the simulation calendar."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from bridge.records import BasalRateChange, DeviceInfo, DeviceKind
from simulators import device_clock
from simulators.device_clock import (
    ClockJump,
    ClockReset,
    DeviceClock,
    DeviceClockError,
    DeviceLog,
    SimCalendar,
    resolve_timezone,
)

EPOCH = dt.datetime(2027, 7, 1, 0, 0, tzinfo=dt.UTC)
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def _local(t: dt.datetime) -> dt.datetime:
    return t.astimezone(BERLIN).replace(tzinfo=None)


def test_offset_and_drift_give_the_expected_device_time() -> None:
    clock = DeviceClock(epoch=EPOCH, offset_s=123.5, drift_ppm=50.0)
    for days in (0, 1, 10, 30):
        t = EPOCH + dt.timedelta(days=days, minutes=17)
        elapsed = (t - EPOCH).total_seconds()
        expected = _local(t + dt.timedelta(seconds=123.5 + elapsed * 50e-6))
        assert abs((clock.to_device(t) - expected).total_seconds()) < 1e-5
    # 50 ppm fast: 4.32 s a day on top of the offset.
    after_10_days = clock.to_device(EPOCH + dt.timedelta(days=10))
    assert after_10_days - _local(EPOCH + dt.timedelta(days=10)) == pytest.approx(
        dt.timedelta(seconds=123.5 + 43.2), abs=dt.timedelta(microseconds=5))


@pytest.mark.parametrize(("offset_s", "drift_ppm"), [(0.0, 0.0), (-3600.0, -120.0),
                                                     (86400.5, 35.0), (12.0, 999.0)])
def test_round_trip_true_to_device_and_back(offset_s: float, drift_ppm: float) -> None:
    clock = DeviceClock(epoch=EPOCH, offset_s=offset_s, drift_ppm=drift_ppm)
    for minutes in range(0, 60 * 24 * 40, 997):
        t = EPOCH + dt.timedelta(minutes=minutes, seconds=13.25)
        back = clock.to_true(clock.to_device(t))
        assert abs((back - t).total_seconds()) < 1e-5


def test_round_trip_through_the_repeated_daylight_saving_hour() -> None:
    # Central European summer time ends 2027-10-31 03:00 CEST → 02:00 CET.
    clock = DeviceClock(epoch=EPOCH)
    first = dt.datetime(2027, 10, 31, 0, 30, tzinfo=dt.UTC)   # 02:30 CEST
    second = dt.datetime(2027, 10, 31, 1, 30, tzinfo=dt.UTC)  # 02:30 CET
    a, b = clock.to_device(first), clock.to_device(second)
    assert a == b == dt.datetime(2027, 10, 31, 2, 30)
    assert (a.fold, b.fold) == (0, 1)
    assert clock.to_true(a) == first
    assert clock.to_true(b) == second


def test_jump_moves_the_device_clock_from_its_instant_on() -> None:
    at = EPOCH + dt.timedelta(days=2, hours=3)
    clock = DeviceClock(epoch=EPOCH, offset_s=30, events=[ClockJump(at, 3600)])
    before = at - dt.timedelta(minutes=1)
    after = at + dt.timedelta(minutes=1)
    assert clock.to_device(before) == _local(before) + dt.timedelta(seconds=30)
    assert clock.to_device(after) == _local(after) + dt.timedelta(seconds=3630)
    assert clock.to_true(clock.to_device(after)) == after
    # A forward jump skips an hour of device time: nothing maps to it.
    skipped = _local(at) + dt.timedelta(minutes=30, seconds=30)
    with pytest.raises(DeviceClockError, match="skipped"):
        clock.to_true(skipped)


def test_backward_jump_makes_device_times_ambiguous() -> None:
    at = EPOCH + dt.timedelta(hours=10)
    clock = DeviceClock(epoch=EPOCH, events=[ClockJump(at, -1800)])
    shown = _local(at) - dt.timedelta(minutes=10)
    found = clock.candidates(shown)
    assert found == [at - dt.timedelta(minutes=10), at + dt.timedelta(minutes=20)]
    assert clock.to_true(shown) == found[0]


def test_reset_sets_the_factory_date_and_the_clock_runs_on() -> None:
    at = EPOCH + dt.timedelta(days=1, hours=7)
    factory = dt.datetime(2000, 1, 1, 0, 0)
    clock = DeviceClock(epoch=EPOCH, offset_s=-45, events=[ClockReset(at, factory)])
    assert clock.to_device(at - dt.timedelta(seconds=1)) == (
        _local(at) - dt.timedelta(seconds=46))
    assert clock.to_device(at) == factory
    assert clock.to_device(at + dt.timedelta(minutes=10)) == factory + dt.timedelta(minutes=10)
    assert clock.to_true(factory + dt.timedelta(hours=2)) == at + dt.timedelta(hours=2)


def test_reset_with_drift() -> None:
    at = EPOCH + dt.timedelta(days=1)
    clock = DeviceClock(epoch=EPOCH, drift_ppm=100,
                        events=[ClockReset(at, dt.datetime(2000, 1, 1))])
    later = clock.to_device(at + dt.timedelta(days=1))
    assert later == dt.datetime(2000, 1, 2, 0, 0, 8, 640000)


def test_bad_clock_inputs() -> None:
    with pytest.raises(DeviceClockError):
        DeviceClock(epoch=dt.datetime(2027, 1, 1))  # naive epoch
    with pytest.raises(DeviceClockError, match="precedes"):
        DeviceClock(epoch=EPOCH, events=[ClockJump(EPOCH - dt.timedelta(1), 5)])
    clock = DeviceClock(epoch=EPOCH)
    with pytest.raises(DeviceClockError):
        clock.to_device(dt.datetime(2027, 7, 2))
    with pytest.raises(DeviceClockError):
        clock.to_true(EPOCH)
    with pytest.raises(DeviceClockError, match="unknown time zone"):
        DeviceClock(epoch=EPOCH, timezone="Mars/Olympus")


def test_fixed_offset_zones_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = resolve_timezone("UTC+05:30")
    assert fixed.tzinfo.utcoffset(None) == dt.timedelta(hours=5, minutes=30)
    assert resolve_timezone("Europe/Berlin").fallback is False

    def missing(name: str) -> zoneinfo.ZoneInfo:
        raise zoneinfo.ZoneInfoNotFoundError(name)

    monkeypatch.setattr(device_clock, "ZoneInfo", missing)
    zone = resolve_timezone("Europe/Berlin")
    assert zone.fallback is True
    assert zone.tzinfo.utcoffset(None) == dt.timedelta(hours=1)
    clock = DeviceClock(epoch=EPOCH)
    assert clock.to_device(EPOCH) == dt.datetime(2027, 7, 1, 1, 0)  # CET all year


def test_calendar_local_days_and_daylight_saving() -> None:
    summer = SimCalendar(dt.date(2027, 7, 1), 2, "Europe/Berlin")
    assert summer.start == dt.datetime(2027, 6, 30, 22, 0, tzinfo=dt.UTC)
    assert summer.minutes == 2880
    assert int(summer.wall_minute[90]) == 90 and int(summer.day_index[1440]) == 1
    assert summer.minute_of(1, 7 * 60 + 30) == 1440 + 450
    spring = SimCalendar(dt.date(2027, 3, 28), 1, "Europe/Berlin")
    assert spring.minutes == 1380
    assert int(spring.wall_minute[120]) == 180  # 02:00 CET is followed by 03:00 CEST
    autumn = SimCalendar(dt.date(2027, 10, 31), 1, "Europe/Berlin")
    assert autumn.minutes == 1500
    assert int(autumn.wall_minute[180]) == 120 and int(autumn.day_index[-1]) == 0
    with pytest.raises(DeviceClockError):
        SimCalendar(dt.date(2027, 1, 1), 0)


def test_device_log_orders_by_time_and_numbers_records() -> None:
    info = DeviceInfo(device_id="pump-1", kind=DeviceKind.INSULIN_PUMP)
    log = DeviceLog(info=info, clock=DeviceClock(epoch=EPOCH, offset_s=60), sequence_bits=16,
                    first_sequence=65534)
    for minutes in (5, 1, 3):
        log.add(BasalRateChange, EPOCH + dt.timedelta(minutes=minutes), rate_iu_per_h=minutes)
    records = log.finalize()
    assert [r.time.minute for r in records] == [1, 3, 5]
    assert [r.sequence for r in records] == [65534, 65535, 0]  # u16 wrap
    assert records[0].device_time == _local(EPOCH) + dt.timedelta(minutes=2)
