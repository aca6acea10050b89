"""The numbers behind the charts: time in ranges, daily percentile bands, the basal profile.

Pure functions over plain values, so the tests can check them against their own reckoning.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from bridge.records import (
    BasalRateChange,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
)

#: Target range of the glucose chart's band (mg/dL), the consensus 70-180 mg/dL.
TARGET_LOW_MG_DL = 70.0
TARGET_HIGH_MG_DL = 180.0


@dataclass(frozen=True, slots=True)
class GlucoseRange:
    """One range of the HL7 CGM IG's "CGM Summary Times in Ranges" panel (LOINC 106793-3)."""

    name: str
    label: str
    loinc: str
    #: ``low <= value < high`` in mg/dL (None: open end).
    low: float | None
    high: float | None

    def contains(self, mg_dl: float) -> bool:
        return ((self.low is None or mg_dl >= self.low)
                and (self.high is None or mg_dl < self.high))


# HL7 CGM IG, profiles.fsh, CGMSummaryTimesInRanges: components timeInVeryLow (<54),
# timeInLow (54-69), timeInTarget (70-180), timeInHigh (181-250), timeInVeryHigh (>250 mg/dL).
# Readings are whole mg/dL on the devices; the bounds below put fractional values between two
# ranges (e.g. 180.4) into the lower one, as rounding to whole mg/dL would.
RANGES: tuple[GlucoseRange, ...] = (
    GlucoseRange("very-low", "<54", "104642-4", None, 53.5),
    GlucoseRange("low", "54–69", "104641-6", 53.5, 69.5),
    GlucoseRange("target", "70–180", "97510-2", 69.5, 180.5),
    GlucoseRange("high", "181–250", "104640-8", 180.5, 250.5),
    GlucoseRange("very-high", ">250", "104639-0", 250.5, None),
)


@dataclass(frozen=True, slots=True)
class RangeShare:
    range: GlucoseRange
    count: int
    percent: float


def time_in_ranges(values_mg_dl: Sequence[float]) -> list[RangeShare]:
    """Share of readings in each range, in percent of all readings with a value (equally
    spaced CGM readings stand for equal spans of time)."""
    counts = [0] * len(RANGES)
    for value in values_mg_dl:
        for i, r in enumerate(RANGES):
            if r.contains(value):
                counts[i] += 1
                break
    total = sum(counts)
    return [RangeShare(r, n, 100.0 * n / total if total else 0.0)
            for r, n in zip(RANGES, counts, strict=True)]


#: Percentiles of the daily overlay (the ambulatory glucose profile's bands and median).
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True, slots=True)
class ProfileBin:
    """Readings whose local time of day falls in ``[start_min, start_min + width)``."""

    start_min: int
    width_min: int
    count: int
    #: The values at :data:`PERCENTILES` (empty when the bin has no reading).
    percentiles: tuple[float, ...]


def daily_profile(points: Sequence[tuple[dt.datetime, float]], tz: ZoneInfo,
                  bin_minutes: int = 30) -> list[ProfileBin]:
    """Percentiles per time of day in the patient's zone, over all days of ``points``.

    Percentiles interpolate linearly between the sorted values (numpy's default, the
    "inclusive" method of :func:`statistics.quantiles`).
    """
    if bin_minutes <= 0 or 1440 % bin_minutes:
        raise ValueError(f"bin_minutes must divide a day, got {bin_minutes}")
    bins: list[list[float]] = [[] for _ in range(1440 // bin_minutes)]
    for time, value in points:
        local = time.astimezone(tz)
        bins[(local.hour * 60 + local.minute) // bin_minutes].append(value)
    out = []
    for i, values in enumerate(bins):
        pct: tuple[float, ...] = ()
        if values:
            pct = tuple(float(v) for v in np.percentile(np.asarray(values, dtype=np.float64),
                                                        PERCENTILES))
        out.append(ProfileBin(i * bin_minutes, bin_minutes, len(values), pct))
    return out


@dataclass(frozen=True, slots=True)
class BasalStep:
    """The basal rate in force from ``time`` until the next step (IU/h)."""

    time: dt.datetime
    rate_iu_per_h: float


BasalEvent = BasalRateChange | TempBasalStart | TempBasalEnd | TherapyStateChange


def basal_steps(events: Sequence[BasalEvent], start: dt.datetime,
                end: dt.datetime) -> list[BasalStep]:
    """The delivered basal rate as a step function over ``[start, end)``.

    From the pump's history (IDS): the programmed rate (Basal Rate Changed), a temporary
    basal (absolute IU/h or percent of the programmed rate) until its end record or its
    duration, and zero while therapy is stopped or paused. Events before ``start`` set the
    state the window opens with. Before the first rate is known nothing is drawn.
    """
    base: float | None = None
    temp: TempBasalStart | None = None
    running = True
    steps: list[BasalStep] = []

    def rate() -> float | None:
        if base is None:
            return None
        if not running:
            return 0.0
        if temp is not None:
            if temp.temp_basal_type is TempBasalType.ABSOLUTE:
                return temp.value
            return base * temp.value / 100.0
        return base

    def emit(at: dt.datetime) -> None:
        value = rate()
        if value is None or at >= end:
            return
        at = max(at, start)
        if steps and steps[-1].time == at:
            steps[-1] = BasalStep(at, value)
        elif not steps or steps[-1].rate_iu_per_h != value:
            steps.append(BasalStep(at, value))

    def expire_temp(before: dt.datetime) -> None:
        nonlocal temp
        if temp is not None:
            ends = temp.time + dt.timedelta(minutes=temp.duration_min)
            if ends <= before:
                temp = None
                emit(ends)

    for event in sorted(events, key=lambda e: e.time):
        expire_temp(event.time)
        if isinstance(event, BasalRateChange):
            base = event.rate_iu_per_h
        elif isinstance(event, TempBasalStart):
            temp = event
        elif isinstance(event, TempBasalEnd):
            temp = None
        else:
            running = event.new_state is TherapyState.RUN
        emit(event.time)
    expire_temp(end)
    return steps
