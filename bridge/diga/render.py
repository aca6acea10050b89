"""Showing readings: a table, a terminal sparkline, an SVG chart. No plotting library.

Values are charted in mg/dL (mmol/L converted); the table shows each value in the unit the
recorder sent. Readings outside the measuring range (LO/HI) are marked, never charted as if
they were exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from bridge.diga.polling import BLOOD_GLUCOSE, CGM, Reading, iso
from bridge.records import mmol_l_to_mg_dl

_BLOCKS = "▁▂▃▄▅▆▇█"
_LINE_COLOURS = ("#1f6fb2", "#8e44ad", "#16a085", "#d35400")
#: Consensus target range for time in range, mg/dL (drawn as a band).
TARGET_LOW, TARGET_HIGH = 70.0, 180.0


def mg_dl(reading: Reading) -> float | None:
    """The reading in mg/dL (None without a value)."""
    if reading.value is None:
        return None
    return mmol_l_to_mg_dl(reading.value) if reading.unit == "mmol/L" else reading.value


def table(readings: Sequence[Reading]) -> str:
    """The readings as a fixed-width text table, oldest first."""
    header = f"{'time (UTC)':20}  {'kind':13}  {'value':>8}  {'unit':6}  {'flag':4}  observation"
    lines = [header, "-" * len(header)]
    for r in sorted(readings, key=lambda r: (r.time, r.kind)):
        value = "-" if r.value is None else f"{r.value:.1f}" if r.unit == "mmol/L" \
            else f"{r.value:.0f}"
        flag = {"<": "LO", ">": "HI", "L": "LO", "U": "HI"}.get(r.flag, "")
        if r.status == "preliminary":
            flag = (flag + " p").strip()
        lines.append(f"{iso(r.time):20}  {r.kind:13}  {value:>8}  {r.unit:6}  {flag:4}  "
                     f"{r.observation_id}")
    return "\n".join(lines)


def sparkline(readings: Sequence[Reading], width: int = 60) -> str:
    """One line of block characters: the mean mg/dL of each of ``width`` equal time slices
    (a space where a slice has no reading), with the range printed after it."""
    points = sorted((r.time, v) for r in readings if (v := mg_dl(r)) is not None)
    if not points:
        return "(no values)"
    width = max(1, width)
    first, last = points[0][0], points[-1][0]
    span = (last - first).total_seconds() or 1.0
    buckets: list[list[float]] = [[] for _ in range(width)]
    for time, value in points:
        index = min(width - 1, int((time - first).total_seconds() / span * width))
        buckets[index].append(value)
    means = [sum(b) / len(b) if b else None for b in buckets]
    present = [m for m in means if m is not None]
    low, high = min(present), max(present)
    scale = (high - low) or 1.0
    line = "".join(" " if m is None else _BLOCKS[round((m - low) / scale * (len(_BLOCKS) - 1))]
                   for m in means)
    return f"{line}  {low:.0f}-{high:.0f} mg/dL, {iso(first)} to {iso(last)}"


def svg(readings: Sequence[Reading], *, title: str = "Glucose", width: int = 900,
        height: int = 320) -> str:
    """A standalone SVG chart: CGM as a line, meter readings as dots, the 70-180 mg/dL
    target band, time and value axes."""
    left, right, top, bottom = 56, 16, 36, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    valued = sorted(((r, v) for r in readings if (v := mg_dl(r)) is not None),
                    key=lambda item: item[0].time)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{escape(title)}</text>']
    if not valued:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}">no values</text></svg>')
        return "\n".join(parts)
    t0 = valued[0][0].time
    t1 = valued[-1][0].time
    span = max((t1 - t0).total_seconds(), 1.0)
    y_max = max(250.0, max(v for _, v in valued) + 10)
    y_min = min(40.0, min(v for _, v in valued) - 10)

    def x(time: dt.datetime) -> float:
        return left + (time - t0).total_seconds() / span * plot_w

    def y(value: float) -> float:
        return top + (y_max - value) / (y_max - y_min) * plot_h

    parts.append(f'<rect x="{left}" y="{y(TARGET_HIGH):.1f}" width="{plot_w}" '
                 f'height="{y(TARGET_LOW) - y(TARGET_HIGH):.1f}" fill="#e3f4e3"/>')
    for level in range(int(y_min // 50 + 1) * 50, int(y_max) + 1, 50):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(level):.1f}" '
                     f'y2="{y(level):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(level) + 4:.1f}" '
                     f'text-anchor="end">{level}</text>')
    for i in range(5):
        tick = t0 + dt.timedelta(seconds=span * i / 4)
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 14}" text-anchor="{anchor}">'
                     f'{tick.strftime("%m-%d %H:%M")}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2:.0f}" transform="rotate(-90 14 '
                 f'{top + plot_h / 2:.0f})" text-anchor="middle">mg/dL</text>')
    cgm = [(r, v) for r, v in valued if r.kind == CGM]
    # One line per sensor (a new sensor is a new Device, retrieving-data.md "Changing
    # Devices"); a gap of more than 15 minutes breaks it (missing data is not drawn over).
    for index, device in enumerate(sorted({r.device for r, _ in cgm})):
        colour = _LINE_COLOURS[index % len(_LINE_COLOURS)]
        segment: list[str] = []
        previous: dt.datetime | None = None
        for r, v in cgm:
            if r.device != device:
                continue
            if previous is not None and (r.time - previous) > dt.timedelta(minutes=15):
                parts.append(_polyline(segment, colour))
                segment = []
            segment.append(f"{x(r.time):.1f},{y(v):.1f}")
            previous = r.time
        parts.append(_polyline(segment, colour))
    for r, v in valued:
        if r.kind == BLOOD_GLUCOSE:
            parts.append(f'<circle cx="{x(r.time):.1f}" cy="{y(v):.1f}" r="3.5" '
                         f'fill="#c0392b"><title>{escape(iso(r.time))} {v:.0f} mg/dL'
                         f'</title></circle>')
        if r.flag:
            parts.append(f'<text x="{x(r.time):.1f}" y="{y(v) - 6:.1f}" '
                         f'text-anchor="middle" fill="#c0392b">'
                         f'{"LO" if r.flag in {"<", "L"} else "HI"}</text>')
    parts.append(f'<text x="{left + plot_w}" y="22" text-anchor="end">'
                 f'CGM {len(cgm)} samples, meter {len(valued) - len(cgm)} readings</text>')
    parts.append("</svg>")
    return "\n".join(p for p in parts if p)


def _polyline(points: list[str], colour: str) -> str:
    if len(points) < 2:
        return ""
    return (f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{" ".join(points)}"/>')


def summary_lines(bundle: Mapping[str, Any]) -> list[str]:
    """The CGM summary report (``$hddt-cgm-summary`` Bundle) as lines: the reporting period
    once, then ``name: value`` per Observation (and per component), then the devices."""
    lines: list[str] = []
    devices: list[str] = []
    period_shown = False
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if kind == "Device":
            names = resource.get("deviceName") or [{}]
            devices.append(f"device: {names[0].get('name', resource.get('id', '?'))}")
            continue
        if kind != "Observation":
            continue
        period = resource.get("effectivePeriod") or {}
        if period and not period_shown:
            lines.append(f"period: {period.get('start', '?')} to {period.get('end', '?')}")
            period_shown = True
        value = _value(resource)
        lines.append(_display(resource) + ("" if value == "-" else f": {value}"))
        for component in resource.get("component") or []:
            lines.append(f"  {_display(component)}: {_value(component)}")
    return lines + devices


def _display(element: Mapping[str, Any]) -> str:
    code = element.get("code") or {}
    if code.get("text"):
        return str(code["text"])
    for coding in code.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return "?"


def _value(element: Mapping[str, Any]) -> str:
    quantity = element.get("valueQuantity")
    if isinstance(quantity, dict):
        return f"{quantity.get('value')} {quantity.get('unit') or quantity.get('code', '')}"
    for key in ("valueInteger", "valueString", "valueBoolean", "valueDateTime"):
        if key in element:
            return str(element[key])
    if "valueCodeableConcept" in element:
        return _display({"code": element["valueCodeableConcept"]})
    absent = element.get("dataAbsentReason")
    if absent:
        return f"absent ({_display({'code': absent})})"
    return "-"
