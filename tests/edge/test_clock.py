"""Device clock correction: offsets, zones, plausibility flags, clock jumps (with properties)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.devices.base import ClockObservation, ClockSource
from bridge.edge.clock import (
    ClockPolicy,
    ClockState,
    correct_record,
    correct_sync,
    device_to_utc,
    measure_offset,
    update_clock,
)
from bridge.records import BloodGlucoseReading, TimeQuality

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
GW_NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
POLICY = ClockPolicy(zone=BERLIN)


def reading(device_time: dt.datetime | None, seq: int = 1,
            time: dt.datetime = GW_NOW) -> BloodGlucoseReading:
    return BloodGlucoseReading(device_id="m1", time=time, sequence=seq,
                               device_time=device_time, glucose_mg_dl=110.0)


def obs(device_time: dt.datetime, gateway_time: dt.datetime = GW_NOW,
        utc_offset: dt.timedelta | None = None) -> ClockObservation:
    return ClockObservation(device_time=device_time, gateway_time=gateway_time,
                            source=ClockSource.CURRENT_TIME, utc_offset=utc_offset)


def test_device_time_in_the_configured_zone_including_summer_time() -> None:
    # Berlin is UTC+1 in winter and UTC+2 in summer (EU summer time from the last Sunday of
    # March); a correct device clock needs no correction either side of the change.
    assert device_to_utc(dt.datetime(2027, 3, 1, 13, 0), BERLIN) == GW_NOW
    assert device_to_utc(dt.datetime(2027, 7, 1, 14, 0), BERLIN) == dt.datetime(
        2027, 7, 1, 12, 0, tzinfo=dt.UTC)
    # A device that states its own offset (CTS Local Time Information) is taken at its word.
    assert device_to_utc(dt.datetime(2027, 3, 1, 7, 0), BERLIN,
                         dt.timedelta(hours=-5)) == GW_NOW
    with pytest.raises(ValueError, match="naive"):
        device_to_utc(GW_NOW, BERLIN)


def test_correct_clock_within_tolerance_is_left_alone() -> None:
    records, state = correct_sync([reading(dt.datetime(2027, 3, 1, 8, 30))],
                                  obs(dt.datetime(2027, 3, 1, 13, 1)), ClockState(), POLICY,
                                  GW_NOW)
    assert state.offset == dt.timedelta(minutes=1)
    (r,) = records
    assert r.time == dt.datetime(2027, 3, 1, 7, 30, tzinfo=dt.UTC)
    assert r.device_time == dt.datetime(2027, 3, 1, 8, 30)
    assert r.time_quality == frozenset()


def test_wrong_clock_is_corrected_and_flagged_raw_time_kept() -> None:
    # The meter runs 1 h 10 min slow (forgot summer time and drifted).
    records, state = correct_sync([reading(dt.datetime(2027, 3, 1, 10, 0))],
                                  obs(dt.datetime(2027, 3, 1, 11, 50)), ClockState(), POLICY,
                                  GW_NOW)
    assert state.offset == dt.timedelta(hours=-1, minutes=-10)
    assert state.source == "current-time"
    (r,) = records
    assert r.time == dt.datetime(2027, 3, 1, 10, 10, tzinfo=dt.UTC)
    assert r.device_time == dt.datetime(2027, 3, 1, 10, 0)
    assert r.time_quality == {TimeQuality.DEVICE_CLOCK_CORRECTED}
    # The key is built from the raw device time, so a later, better correction of the same
    # record can never make it a different record.
    assert r.idempotency_key() == reading(dt.datetime(2027, 3, 1, 10, 0)).idempotency_key()


def test_in_future_and_before_device_existed() -> None:
    future = reading(dt.datetime(2027, 3, 1, 13, 30))          # 30 min after now, clock right
    ancient = reading(dt.datetime(1999, 12, 31, 23, 0), seq=2)   # factory date after reset
    records, _ = correct_sync([future, ancient], obs(dt.datetime(2027, 3, 1, 13, 0)),
                              ClockState(), POLICY, GW_NOW)
    assert records[0].time_quality == {TimeQuality.IN_FUTURE}
    assert records[1].time_quality == {TimeQuality.BEFORE_DEVICE_EXISTED}
    # A later configured "not before" (the date the device was handed out) tightens it.
    strict = ClockPolicy(zone=BERLIN, not_before=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    old = reading(dt.datetime(2026, 6, 1, 8, 0))
    (r,), _ = correct_sync([old], None, ClockState(), strict, GW_NOW)
    assert TimeQuality.BEFORE_DEVICE_EXISTED in r.time_quality


def test_clock_jump_flags_the_records_of_that_sync() -> None:
    first = update_clock(ClockState(), obs(dt.datetime(2027, 3, 1, 13, 0)), POLICY)
    assert not first.jumped and first.state.jumps == 0
    # Battery changed: the clock restarted at its factory date.
    reset = obs(dt.datetime(2000, 1, 1, 0, 5), GW_NOW + dt.timedelta(days=1))
    records, state = correct_sync([reading(dt.datetime(2000, 1, 1, 0, 2), seq=7)], reset,
                                  first.state, POLICY, GW_NOW + dt.timedelta(days=1))
    assert state.jumps == 1
    (r,) = records
    # Corrected onto the true time axis, and flagged both ways.
    assert r.time == GW_NOW + dt.timedelta(days=1, minutes=-3)
    assert r.time_quality == {TimeQuality.DEVICE_CLOCK_CORRECTED, TimeQuality.CLOCK_JUMP}
    # The same offset at the next sync is no jump any more.
    again = update_clock(state, obs(dt.datetime(2000, 1, 2, 0, 5),
                                    GW_NOW + dt.timedelta(days=2)), POLICY)
    assert not again.jumped and again.state.jumps == 1


def test_without_observation_the_last_offset_still_applies() -> None:
    known = update_clock(ClockState(), obs(dt.datetime(2027, 3, 1, 11, 0)), POLICY).state
    (r,), state = correct_sync([reading(dt.datetime(2027, 3, 1, 9, 0))], None, known, POLICY,
                               GW_NOW)
    assert state == known
    assert r.time == dt.datetime(2027, 3, 1, 10, 0, tzinfo=dt.UTC)
    assert TimeQuality.DEVICE_CLOCK_CORRECTED in r.time_quality


def test_record_without_device_time_keeps_driver_instant_and_flags() -> None:
    r = reading(None, time=GW_NOW + dt.timedelta(hours=2))
    r = BloodGlucoseReading(device_id="m1", time=r.time, sequence=1, glucose_mg_dl=90.0,
                            time_quality=frozenset({TimeQuality.DEVICE_TIME_UNKNOWN}))
    update = update_clock(ClockState(), obs(dt.datetime(2027, 3, 1, 11, 0)), POLICY)
    out = correct_record(r, update, POLICY, GW_NOW)
    assert out.time == r.time
    assert out.time_quality == {TimeQuality.DEVICE_TIME_UNKNOWN, TimeQuality.IN_FUTURE}


def test_calendar_edge_does_not_crash() -> None:
    edge = reading(dt.datetime(1, 1, 1, 0, 0))
    update = update_clock(ClockState(), obs(dt.datetime(2027, 3, 1, 13, 0)), POLICY)
    out = correct_record(edge, update, POLICY, GW_NOW)
    assert TimeQuality.DEVICE_TIME_UNKNOWN in out.time_quality
    # An observation at the edge of the calendar keeps the previous state.
    assert update_clock(update.state, obs(dt.datetime(1, 1, 1)), POLICY).state == update.state


def test_state_json_round_trip() -> None:
    state = update_clock(ClockState(), obs(dt.datetime(2027, 3, 1, 7, 0), utc_offset=dt.timedelta(
        hours=-5, minutes=-30)), POLICY).state
    assert ClockState.from_json(state.to_json()) == state
    assert ClockState.from_json({}) == ClockState()
    assert ClockState.from_json(None) == ClockState()
    with pytest.raises(ValueError):
        ClockState.from_json({"offset_s": "soon"})


def test_policy_refuses_naive_or_negative() -> None:
    with pytest.raises(ValueError):
        ClockPolicy(zone=BERLIN, not_before=dt.datetime(2000, 1, 1))
    with pytest.raises(ValueError):
        ClockPolicy(zone=BERLIN, tolerance=dt.timedelta(seconds=-1))


# --- properties ------------------------------------------------------------------------------

offsets = st.timedeltas(min_value=dt.timedelta(days=-400), max_value=dt.timedelta(days=400))
zone_offsets = st.integers(min_value=-12 * 60, max_value=14 * 60).map(
    lambda m: dt.timedelta(minutes=m))
device_times = st.datetimes(min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2090, 1, 1))
gateway_times = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2040, 1, 1),
                             timezones=st.just(dt.UTC))


@given(gateway=gateway_times, offset=offsets, zone_offset=zone_offsets)
def test_property_the_observed_moment_maps_back_to_the_gateway_time(
        gateway: dt.datetime, offset: dt.timedelta, zone_offset: dt.timedelta) -> None:
    # What the device showed at the observation, corrected, is the gateway's instant (exactly
    # when corrected, within the tolerance when left alone).
    zone = dt.timezone(zone_offset)
    policy = ClockPolicy(zone=zone)
    shown = (gateway + offset).astimezone(zone).replace(tzinfo=None)
    update = update_clock(ClockState(), obs(shown, gateway), policy)
    assert update.offset is not None and abs(update.offset - offset) < dt.timedelta(
        microseconds=1)
    out = correct_record(reading(shown, time=gateway), update, policy, gateway)
    assert out.device_time == shown
    assert abs(out.time - gateway) <= policy.tolerance
    corrected = TimeQuality.DEVICE_CLOCK_CORRECTED in out.time_quality
    assert corrected == (abs(update.offset) > policy.tolerance)
    if corrected:
        assert out.time == gateway


@given(a=device_times, b=device_times, offset=offsets, zone_offset=zone_offsets,
       gateway=gateway_times)
def test_property_correction_keeps_order_and_spacing(
        a: dt.datetime, b: dt.datetime, offset: dt.timedelta, zone_offset: dt.timedelta,
        gateway: dt.datetime) -> None:
    # One offset for the whole sync: records keep their order and their distances.
    zone = dt.timezone(zone_offset)
    policy = ClockPolicy(zone=zone)
    shown = (gateway + offset).astimezone(zone).replace(tzinfo=None)
    (ra, rb), _ = correct_sync([reading(a, 1), reading(b, 2)], obs(shown, gateway),
                               ClockState(), policy, gateway)
    assert rb.time - ra.time == b - a


@given(prev=offsets, new=offsets, gateway=gateway_times)
def test_property_jump_iff_offset_moved_beyond_threshold(
        prev: dt.timedelta, new: dt.timedelta, gateway: dt.datetime) -> None:
    policy = ClockPolicy(zone=dt.UTC)
    state = ClockState(offset=prev, observed_at=gateway - dt.timedelta(days=1))
    shown = (gateway + new).replace(tzinfo=None)
    update = update_clock(state, obs(shown, gateway), policy)
    assert update.jumped == (abs(new - prev) > policy.jump_threshold)
    assert update.state.jumps == (1 if update.jumped else 0)


@given(device_time=device_times, offset=offsets, gateway=gateway_times)
def test_property_flags_match_the_corrected_instant(
        device_time: dt.datetime, offset: dt.timedelta, gateway: dt.datetime) -> None:
    shown = (gateway + offset).astimezone(BERLIN).replace(tzinfo=None)
    (r,), state = correct_sync([reading(device_time)], obs(shown, gateway), ClockState(),
                               POLICY, gateway)
    assert state.offset == measure_offset(obs(shown, gateway), BERLIN)
    assert (TimeQuality.IN_FUTURE in r.time_quality) == (
        r.time > gateway + POLICY.future_tolerance)
    assert (TimeQuality.BEFORE_DEVICE_EXISTED in r.time_quality) == (
        r.time < POLICY.not_before)
    assert r.device_time == device_time
