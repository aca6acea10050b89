"""Server-side SVG charts: no JavaScript, no network, readable without styles.

Every drawn datum carries a class and ``data-*`` attributes (``<path class="cgm-line"
data-points="288">``, ``<circle class="meter-point" data-value="…">``, ``<rect
class="tir-segment" data-range="target" data-percent="…">``), so that a test or a browser
can count and read what a chart shows, and a ``<title>`` for a tooltip.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from bridge.dashboard.queries import Bolus, GlucosePoint
from bridge.dashboard.stats import (
    PERCENTILES,
    RANGES,
    TARGET_HIGH_MG_DL,
    TARGET_LOW_MG_DL,
    BasalStep,
    ProfileBin,
    RangeShare,
)

WIDTH = 960
LEFT, RIGHT = 56, 56
GLUCOSE_TOP, GLUCOSE_HEIGHT = 24, 232
INSULIN_TOP, INSULIN_HEIGHT = 280, 90
AXIS_MAX_MG_DL = 400.0
#: A CGM line is broken where two readings are further apart than this (a gap, not a trend).
CGM_GAP = dt.timedelta(minutes=15)

RANGE_COLOURS = {"very-low": "#8b0000", "low": "#e0413a", "target": "#3a9d4f",
                 "high": "#f0b429", "very-high": "#e07b1a"}


def _f(value: float) -> str:
    """A coordinate with two decimals and no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _iso(time: dt.datetime) -> str:
    return time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _num(value: float) -> str:
    return repr(round(value, 3))


class _Scale:
    """Linear map of a value interval onto a pixel interval (y grows downwards)."""

    def __init__(self, lo: float, hi: float, px_lo: float, px_hi: float) -> None:
        self.lo, self.hi, self.px_lo, self.px_hi = lo, hi, px_lo, px_hi

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return self.px_lo
        clipped = min(max(value, self.lo), self.hi)
        return self.px_lo + (clipped - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)


def _y_axis(scale: _Scale, ticks: Sequence[float], x: float, unit: str, *,
            right: bool = False) -> list[str]:
    out = []
    anchor = "start" if right else "end"
    dx = 6 if right else -6
    for tick in ticks:
        y = scale(tick)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_f(y)}" '
                   f'y2="{_f(y)}"/>' if not right else "")
        out.append(f'<text class="tick" x="{_f(x + dx)}" y="{_f(y + 4)}" '
                   f'text-anchor="{anchor}">{_f(tick)}</text>')
    out.append(f'<text class="unit" x="{_f(x + dx)}" y="{_f(scale.px_hi - 14)}" '
               f'text-anchor="{anchor}">{escape(unit)}</text>')
    return out


def _time_ticks(start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
    """Whole local hours (or midnights) between ``start`` and ``end``, at most about 12."""
    span_h = (end - start).total_seconds() / 3600
    step_h = next((h for h in (1, 2, 3, 6, 12, 24, 48, 72) if span_h / h <= 12), 168)
    t = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    ticks = []
    midnights = 0
    while t < end:
        local = t.astimezone(tz)
        if t >= start and local.minute == 0:
            if step_h < 24 and local.hour % step_h == 0:
                ticks.append(local)
            elif step_h >= 24 and local.hour == 0:
                if midnights % (step_h // 24) == 0:
                    ticks.append(local)
                midnights += 1
        t += dt.timedelta(hours=1)
    return ticks


def glucose_chart(*, start: dt.datetime, end: dt.datetime, tz: ZoneInfo,
                  cgm: Sequence[GlucosePoint], meter: Sequence[GlucosePoint],
                  boluses: Sequence[Bolus], basal: Sequence[BasalStep]) -> Markup:
    """Glucose over time (CGM line, meter points, target band) above insulin (bolus bars,
    basal step line) for ``[start, end)``."""
    x = _Scale(start.timestamp(), end.timestamp(), LEFT, WIDTH - RIGHT)
    top = max([AXIS_MAX_MG_DL, *(p.mg_dl for p in (*cgm, *meter))])
    y = _Scale(0.0, top, GLUCOSE_TOP + GLUCOSE_HEIGHT, GLUCOSE_TOP)
    max_bolus = max([1.0, *(b.total_iu for b in boluses)])
    max_basal = max([0.5, *(s.rate_iu_per_h for s in basal)])
    y_bolus = _Scale(0.0, max_bolus * 1.1, INSULIN_TOP + INSULIN_HEIGHT, INSULIN_TOP)
    y_basal = _Scale(0.0, max_basal * 1.25, INSULIN_TOP + INSULIN_HEIGHT, INSULIN_TOP)
    height = INSULIN_TOP + INSULIN_HEIGHT + 28
    parts = [f'<svg class="chart glucose-chart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
             f'data-start="{_iso(start)}" data-end="{_iso(end)}">',
             "<title>Glucose, insulin boluses and basal rate</title>",
             f'<rect class="target-band" x="{LEFT}" width="{WIDTH - LEFT - RIGHT}" '
             f'y="{_f(y(TARGET_HIGH_MG_DL))}" '
             f'height="{_f(y(TARGET_LOW_MG_DL) - y(TARGET_HIGH_MG_DL))}" '
             f'data-low="{_f(TARGET_LOW_MG_DL)}" data-high="{_f(TARGET_HIGH_MG_DL)}"/>']
    parts += _y_axis(y, [t for t in (54, 70, 180, 250, 300, 400) if t <= top], LEFT, "mg/dL")
    for tick in _time_ticks(start, end, tz):
        px = x(tick.timestamp())
        label = tick.strftime("%H:%M") if tick.hour or tick.minute else tick.strftime("%d %b")
        parts.append(f'<line class="grid" x1="{_f(px)}" x2="{_f(px)}" y1="{GLUCOSE_TOP}" '
                     f'y2="{INSULIN_TOP + INSULIN_HEIGHT}"/>')
        parts.append(f'<text class="tick" x="{_f(px)}" y="{height - 10}" '
                     f'text-anchor="middle">{escape(label)}</text>')
    # CGM: one path, a new sub-path after each gap.
    commands = []
    previous: dt.datetime | None = None
    for p in cgm:
        op = "M" if previous is None or p.time - previous > CGM_GAP else "L"
        commands.append(f"{op}{_f(x(p.time.timestamp()))} {_f(y(p.mg_dl))}")
        previous = p.time
    parts.append(f'<path class="cgm-line" data-points="{len(cgm)}" d="{" ".join(commands)}">'
                 f"<title>CGM: {len(cgm)} readings</title></path>")
    for p in meter:
        parts.append(f'<circle class="meter-point" cx="{_f(x(p.time.timestamp()))}" '
                     f'cy="{_f(y(p.mg_dl))}" r="4" data-time="{_iso(p.time)}" '
                     f'data-value="{_num(p.mg_dl)}"><title>meter {_num(p.mg_dl)} mg/dL at '
                     f"{escape(p.time.astimezone(tz).strftime('%d %b %H:%M'))}</title>"
                     "</circle>")
    # Insulin panel.
    base = INSULIN_TOP + INSULIN_HEIGHT
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" '
                 f'y2="{base}"/>')
    parts.append(f'<text class="unit" x="4" y="{INSULIN_TOP - 4}" '
                 f'text-anchor="start">bolus IU</text>')
    for units in (0.0, max_bolus):
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{_f(y_bolus(units) + 4)}" '
                     f'text-anchor="end">{_num(units)}</text>')
    parts.append(f'<text class="unit" x="{WIDTH - 4}" y="{INSULIN_TOP - 4}" '
                 f'text-anchor="end">basal IU/h</text>')
    for rate in (0.0, max_basal):
        parts.append(f'<text class="tick" x="{WIDTH - RIGHT + 6}" '
                     f'y="{_f(y_basal(rate) + 4)}" text-anchor="start">{_num(rate)}</text>')
    for b in boluses:
        px = x(b.time.timestamp())
        top_px = y_bolus(b.total_iu)
        parts.append(f'<rect class="bolus-bar" x="{_f(px - 2)}" width="4" y="{_f(top_px)}" '
                     f'height="{_f(base - top_px)}" data-time="{_iso(b.time)}" '
                     f'data-units="{_num(b.total_iu)}"><title>bolus {_num(b.total_iu)} IU at '
                     f"{escape(b.time.astimezone(tz).strftime('%d %b %H:%M'))}</title></rect>")
    if basal:
        commands = []
        for i, step in enumerate(basal):
            sx, sy = _f(x(step.time.timestamp())), _f(y_basal(step.rate_iu_per_h))
            commands.append(f"M{sx} {sy}" if i == 0 else f"H{sx} V{sy}")
        commands.append(f"H{_f(x(end.timestamp()))}")
        rates = " ".join(_num(s.rate_iu_per_h) for s in basal)
        parts.append(f'<path class="basal-line" data-steps="{len(basal)}" '
                     f'data-rates="{rates}" d="{"".join(commands)}">'
                     f"<title>basal rate, {len(basal)} steps</title></path>")
    parts.append("</svg>")
    return Markup("".join(parts))


def daily_overlay_chart(bins: Sequence[ProfileBin], *, days: int) -> Markup:
    """AGP-style overlay: 5-95 % and 25-75 % bands and the median per time of day."""
    height = 280
    x = _Scale(0.0, 1440.0, LEFT, WIDTH - RIGHT)
    filled = [b for b in bins if b.percentiles]
    top = max([AXIS_MAX_MG_DL, *(b.percentiles[-1] for b in filled)])
    y = _Scale(0.0, top, 24 + 228, 24)
    parts = [f'<svg class="chart agp-chart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
             f'data-bins="{len(filled)}" data-days="{days}">',
             "<title>Daily overlay: percentiles of CGM glucose by time of day</title>",
             f'<rect class="target-band" x="{LEFT}" width="{WIDTH - LEFT - RIGHT}" '
             f'y="{_f(y(TARGET_HIGH_MG_DL))}" '
             f'height="{_f(y(TARGET_LOW_MG_DL) - y(TARGET_HIGH_MG_DL))}" '
             f'data-low="{_f(TARGET_LOW_MG_DL)}" data-high="{_f(TARGET_HIGH_MG_DL)}"/>']
    parts += _y_axis(y, [t for t in (54, 70, 180, 250, 300, 400) if t <= top], LEFT, "mg/dL")
    for hour in range(0, 25, 3):
        px = x(hour * 60.0)
        parts.append(f'<line class="grid" x1="{_f(px)}" x2="{_f(px)}" y1="24" y2="252"/>')
        parts.append(f'<text class="tick" x="{_f(px)}" y="{height - 10}" '
                     f'text-anchor="middle">{hour:02d}:00</text>')
    # Runs of consecutive bins with data; a band is drawn through each bin's centre.
    runs: list[list[ProfileBin]] = []
    for b in bins:
        if not b.percentiles:
            runs.append([])
        elif runs and runs[-1]:
            runs[-1].append(b)
        else:
            runs.append([b])
    runs = [r for r in runs if r]
    lo_i, hi_i = PERCENTILES.index(5), PERCENTILES.index(95)
    q1_i, q3_i = PERCENTILES.index(25), PERCENTILES.index(75)
    med_i = PERCENTILES.index(50)
    for css, (a, c) in (("agp-band agp-band-outer", (lo_i, hi_i)),
                        ("agp-band agp-band-inner", (q1_i, q3_i))):
        for run in runs:
            upper = [(x(b.start_min + b.width_min / 2), y(b.percentiles[c])) for b in run]
            lower = [(x(b.start_min + b.width_min / 2), y(b.percentiles[a])) for b in run]
            if len(run) == 1:  # a lone bin: a bar the width of the bin
                half = (x(run[0].width_min) - x(0.0)) / 2
                upper = [(upper[0][0] - half, upper[0][1]), (upper[0][0] + half, upper[0][1])]
                lower = [(lower[0][0] - half, lower[0][1]), (lower[0][0] + half, lower[0][1])]
            points = [*upper, *reversed(lower)]
            d = "M" + " L".join(f"{_f(px)} {_f(py)}" for px, py in points) + " Z"
            parts.append(f'<path class="{css}" data-low-percentile="{PERCENTILES[a]}" '
                         f'data-high-percentile="{PERCENTILES[c]}" d="{d}"/>')
    for run in runs:
        d = "M" + " L".join(f"{_f(x(b.start_min + b.width_min / 2))} "
                            f"{_f(y(b.percentiles[med_i]))}" for b in run)
        parts.append(f'<path class="agp-median" data-bins="{len(run)}" d="{d}"/>')
    # One transparent column per bin that has data, carrying its numbers (and a tooltip).
    for b in filled:
        values = " ".join(f'data-p{p}="{_num(v)}"' for p, v in zip(PERCENTILES, b.percentiles,
                                                                     strict=True))
        text = ", ".join(f"P{p} {v:.0f}" for p, v in zip(PERCENTILES, b.percentiles,
                                                          strict=True))
        start = f"{b.start_min // 60:02d}:{b.start_min % 60:02d}"
        parts.append(f'<rect class="agp-bin" x="{_f(x(b.start_min))}" y="24" '
                     f'width="{_f(x(b.width_min) - x(0.0))}" height="228" '
                     f'data-start-min="{b.start_min}" data-width-min="{b.width_min}" '
                     f'data-count="{b.count}" {values}><title>{start}: {b.count} readings; '
                     f"{text} mg/dL</title></rect>")
    parts.append("</svg>")
    return Markup("".join(parts))


def time_in_range_bar(shares: Sequence[RangeShare]) -> Markup:
    """One stacked bar of the time in each range, very low at the bottom."""
    width, height = 260, 300
    bar_x, bar_w, bar_top, bar_h = 20, 60, 10, 280
    total = sum(s.count for s in shares)
    parts = [f'<svg class="chart tir-chart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="{width}" role="img" '
             f'data-readings="{total}">',
             "<title>Time in ranges</title>"]
    bottom = float(bar_top + bar_h)
    # Labels are spread evenly, so that thin segments stay readable.
    label_step = bar_h / len(RANGES)
    for i, share in enumerate(shares):
        seg_h = bar_h * share.percent / 100.0
        seg_top = bottom - seg_h
        colour = RANGE_COLOURS[share.range.name]
        parts.append(f'<rect class="tir-segment" x="{bar_x}" width="{bar_w}" '
                     f'y="{_f(seg_top)}" height="{_f(seg_h)}" fill="{colour}" '
                     f'data-range="{share.range.name}" data-loinc="{share.range.loinc}" '
                     f'data-count="{share.count}" data-percent="{share.percent:.1f}">'
                     f"<title>{escape(share.range.label)} mg/dL: {share.percent:.1f} %"
                     f"</title></rect>")
        label_y = bar_top + bar_h - label_step * (i + 0.5)
        parts.append(f'<text class="tir-label" x="{bar_x + bar_w + 12}" y="{_f(label_y + 4)}" '
                     f'data-range="{share.range.name}">{share.percent:.1f} %  '
                     f"{escape(share.range.label)} mg/dL</text>")
        bottom = seg_top
    if total == 0:
        parts.append(f'<text class="empty" x="{bar_x}" y="{bar_top + bar_h / 2}">'
                     "no CGM readings</text>")
    parts.append("</svg>")
    return Markup("".join(parts))
