"""The chart numbers on hand-made input: basal profile from pump history, range bounds,
percentile bins in local time."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from bridge.dashboard.stats import (
    RANGES,
    BasalEvent,
    BasalStep,
    basal_steps,
    daily_profile,
    time_in_ranges,
)
from bridge.records import (
    BasalRateChange,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
)

T0 = dt.datetime(2027, 7, 1, 0, 0, tzinfo=dt.UTC)
PUMP = "pump-1"


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def steps(result: list[BasalStep]) -> list[tuple[float, float]]:
    return [((s.time - T0).total_seconds() / 3600, s.rate_iu_per_h) for s in result]


def test_basal_steps_follow_rate_changes_temp_basals_and_therapy_stops() -> None:
    events: list[BasalEvent] = [
        BasalRateChange(device_id=PUMP, time=at(-5), rate_iu_per_h=1.0),  # before the window
        # Absolute temp basal for 2 h, expires by itself.
        TempBasalStart(device_id=PUMP, time=at(1), temp_basal_type=TempBasalType.ABSOLUTE,
                       value=0.4, duration_min=120),
        BasalRateChange(device_id=PUMP, time=at(4), rate_iu_per_h=1.2,
                        previous_rate_iu_per_h=1.0),
        # Relative temp basal of 150 % for 3 h, ended early after 1 h.
        TempBasalStart(device_id=PUMP, time=at(5), temp_basal_type=TempBasalType.RELATIVE,
                       value=150, duration_min=180),
        TempBasalEnd(device_id=PUMP, time=at(6), effective_duration_min=60, canceled=True),
        TherapyStateChange(device_id=PUMP, time=at(8), new_state=TherapyState.STOP),
        TherapyStateChange(device_id=PUMP, time=at(9), new_state=TherapyState.RUN),
        # A temp basal running past the window's end.
        TempBasalStart(device_id=PUMP, time=at(11), temp_basal_type=TempBasalType.ABSOLUTE,
                       value=2.0, duration_min=240),
    ]
    result = steps(basal_steps(events, T0, at(12)))
    assert result == [(0, 1.0), (1, 0.4), (3, 1.0), (4, 1.2), (5, pytest.approx(1.8)),
                      (6, 1.2), (8, 0.0), (9, 1.2), (11, 2.0)]


def test_basal_state_at_window_start_comes_from_earlier_events() -> None:
    events: list[BasalEvent] = [
        BasalRateChange(device_id=PUMP, time=at(-10), rate_iu_per_h=0.8),
        TempBasalStart(device_id=PUMP, time=at(-1), temp_basal_type=TempBasalType.RELATIVE,
                       value=50, duration_min=90),
        TherapyStateChange(device_id=PUMP, time=at(-20), new_state=TherapyState.RUN),
    ]
    assert steps(basal_steps(events, T0, at(2))) == [(0, 0.4), (0.5, 0.8)]
    # Unknown programmed rate: nothing drawn rather than a guess.
    assert basal_steps([TherapyStateChange(device_id=PUMP, time=at(1),
                                           new_state=TherapyState.PAUSE)], T0, at(2)) == []


@pytest.mark.parametrize(("value", "name"), [
    (0, "very-low"), (53, "very-low"), (53.4, "very-low"), (54, "low"), (69, "low"),
    (70, "target"), (180, "target"), (180.4, "target"), (181, "high"), (250, "high"),
    (251, "very-high"), (600, "very-high")])
def test_ranges_follow_the_cgm_ig_bounds(value: float, name: str) -> None:
    shares = time_in_ranges([value])
    assert [s.range.name for s in shares if s.count] == [name]
    assert [s.percent for s in shares if s.count] == [100.0]


def test_time_in_ranges_of_nothing_is_zero_everywhere() -> None:
    assert [s.percent for s in time_in_ranges([])] == [0.0] * len(RANGES)
    assert [r.loinc for r in RANGES] == ["104642-4", "104641-6", "97510-2", "104640-8",
                                         "104639-0"]


def test_daily_profile_bins_by_local_time_of_day() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 22:10 UTC in July is 00:10 in Berlin (CEST): the first bin of the day.
    points = [(dt.datetime(2027, 7, d, 22, 10, tzinfo=dt.UTC), float(100 + d))
              for d in range(1, 6)]
    bins = daily_profile(points, berlin, bin_minutes=30)
    assert len(bins) == 48
    assert bins[0].count == 5 and all(b.count == 0 for b in bins[1:])
    assert bins[0].percentiles == (101.2, 102.0, 103.0, 104.0, 104.8)
    with pytest.raises(ValueError, match="must divide a day"):
        daily_profile(points, berlin, bin_minutes=7)
