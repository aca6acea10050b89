"""Reading the dashboard's HTML back: element counts and data attributes, and the checks a
patient page must pass against the simulator's records (shared by the SQLite, PostgreSQL
and real-HTTP tests)."""

from __future__ import annotations

import datetime as dt
import math
import re
from zoneinfo import ZoneInfo

import lxml.html  # type: ignore[import-untyped]  # no stubs installed
import sqlalchemy as sa
from lxml.html import HtmlElement

from bridge.backend.store import Store, cgm_readings, glucose_readings
from tests.dashboard.fill import (
    PATIENT,
    Filled,
    cgm_values,
    delivered_boluses,
    in_window,
    meter_values,
)

BERLIN = ZoneInfo("Europe/Berlin")


def parse(html: str) -> HtmlElement:
    return lxml.html.fromstring(html)


def by_class(doc: HtmlElement, tag: str, css: str) -> list[HtmlElement]:
    found: list[HtmlElement] = doc.xpath(
        f'//{tag}[contains(concat(" ", normalize-space(@class), " "), " {css} ")]')
    return found


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (written out here, independent of numpy)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def tir_expected(values: list[float]) -> dict[str, tuple[int, float]]:
    """Counts and percentages in the HL7 CGM IG ranges, on whole mg/dL."""
    names = {"very-low": 0, "low": 0, "target": 0, "high": 0, "very-high": 0}
    for v in values:
        mg = int(v + 0.5)  # whole mg/dL (values are non-negative)
        if mg < 54:
            names["very-low"] += 1
        elif mg <= 69:
            names["low"] += 1
        elif mg <= 180:
            names["target"] += 1
        elif mg <= 250:
            names["high"] += 1
        else:
            names["very-high"] += 1
    total = len(values)
    return {k: (n, round(100 * n / total, 1)) for k, n in names.items()}


def db_rows(store: Store, table: sa.Table, start: dt.datetime, end: dt.datetime) -> int:
    with store.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(
            table.c.patient_id == PATIENT, table.c.time >= start, table.c.time < end,
            table.c.value.is_not(None))).scalar_one())


def check_patient_page(html: str, filled: Filled, store: Store, days: int) -> None:
    """Everything the patient page draws equals the simulator's records in the window."""
    end = filled.now
    start = end - dt.timedelta(days=days)
    window = in_window(filled.sim.records, start, end)
    cgm, meter = cgm_values(window), meter_values(window)
    boluses = delivered_boluses(window)
    assert cgm and meter and boluses, "the window should hold every kind of data"
    doc = parse(html)

    # Glucose chart: the CGM line has one vertex per reading, one circle per meter reading.
    (line,) = by_class(doc, "path", "cgm-line")
    assert int(line.get("data-points")) == len(cgm) == db_rows(store, cgm_readings, start, end)
    assert len(re.findall(r"[ML]", line.get("d"))) == len(cgm)
    points = by_class(doc, "circle", "meter-point")
    assert len(points) == len(meter) == db_rows(store, glucose_readings, start, end)
    assert sorted(float(p.get("data-value")) for p in points) == sorted(
        r.glucose_mg_dl for r in meter if r.glucose_mg_dl is not None)
    bars = by_class(doc, "rect", "bolus-bar")
    assert [(b.get("data-time"), float(b.get("data-units"))) for b in bars] == [
        (r.time.isoformat().replace("+00:00", "Z"), round(r.total_iu, 3)) for r in boluses]
    (band,) = by_class(doc, "svg", "glucose-chart")[0].xpath(".//rect[@class='target-band']")
    assert (band.get("data-low"), band.get("data-high")) == ("70", "180")
    (basal,) = by_class(doc, "path", "basal-line")
    assert int(basal.get("data-steps")) >= 1

    # Daily overlay: per 30-minute bin of Berlin time, the 5/25/50/75/95 percentiles.
    bins: dict[int, list[float]] = {}
    for r in cgm:
        local = r.time.astimezone(BERLIN)
        assert r.glucose_mg_dl is not None
        bins.setdefault((local.hour * 60 + local.minute) // 30 * 30, []).append(r.glucose_mg_dl)
    shown = by_class(doc, "rect", "agp-bin")
    assert {int(b.get("data-start-min")) for b in shown} == set(bins)
    for b in shown:
        values = bins[int(b.get("data-start-min"))]
        assert int(b.get("data-count")) == len(values)
        for p in (5, 25, 50, 75, 95):
            assert math.isclose(float(b.get(f"data-p{p}")), percentile(values, p),
                                abs_tol=0.0015), (b.get("data-start-min"), p)
    assert len(by_class(doc, "path", "agp-median")) >= 1
    assert len(by_class(doc, "path", "agp-band-outer")) == len(
        by_class(doc, "path", "agp-band-inner")) >= 1

    # Time in ranges: counts and percentages of the CGM readings.
    expected = tir_expected([r.glucose_mg_dl for r in cgm if r.glucose_mg_dl is not None])
    segments = {s.get("data-range"): (int(s.get("data-count")), float(s.get("data-percent")))
                for s in by_class(doc, "rect", "tir-segment")}
    assert segments == expected
    rows = {r.get("data-range"): r.xpath("./td/text()") for r in doc.xpath(
        '//table[@id="tir-table"]/tbody/tr')}
    assert {k: (int(v[1]), float(v[2])) for k, v in rows.items()} == expected
    assert doc.get_element_by_id("cgm-count").text_content() == str(len(cgm))
