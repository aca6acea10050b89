"""Tables, sparklines and SVG charts of readings."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from bridge.diga.polling import BLOOD_GLUCOSE, CGM, Reading
from bridge.diga.render import mg_dl, sparkline, summary_lines, svg, table

T0 = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)


def _cgm(minutes: int, value: float, flag: str = "", device: str = "Device/s1") -> Reading:
    return Reading(kind=CGM, time=T0 + dt.timedelta(minutes=minutes), value=value,
                   unit="mg/dL", code="99504-3", observation_id="c1", flag=flag,
                   device=device)


def test_table_lists_each_reading_in_its_unit() -> None:
    readings = [_cgm(5, 120), Reading(kind=BLOOD_GLUCOSE, time=T0, value=6.4, unit="mmol/L",
                                      code="15074-8", observation_id="bg-1", flag="<")]
    lines = table(readings).splitlines()
    assert len(lines) == 4
    assert "6.4" in lines[2] and "LO" in lines[2] and "bg-1" in lines[2]
    assert "120" in lines[3] and "2027-03-01T00:05:00Z" in lines[3]
    assert round(mg_dl(readings[1]) or 0) == 115


def test_sparkline_follows_the_values() -> None:
    rising = [_cgm(5 * i, 60 + 10 * i) for i in range(20)]
    line = sparkline(rising, width=20).split()[0]
    assert line[0] == "▁" and line[-1] == "█"
    assert list(line) == sorted(line)
    assert "60-250 mg/dL" in sparkline(rising, width=20)
    assert sparkline([]) == "(no values)"


def test_svg_is_well_formed_and_breaks_the_line_at_gaps() -> None:
    readings = [_cgm(5 * i, 100 + i) for i in range(10)]
    readings += [_cgm(200 + 5 * i, 150) for i in range(10)]  # after a 155-minute gap
    readings.append(Reading(kind=BLOOD_GLUCOSE, time=T0 + dt.timedelta(minutes=30),
                            value=20, unit="mg/dL", code="2339-0", observation_id="b",
                            flag="<"))
    readings += [_cgm(5 * i + 2, 90, device="Device/s2") for i in range(10)]  # 2nd sensor
    root = ET.fromstring(svg(readings, title="A <title>"))
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 3
    assert len({line.get("stroke") for line in lines}) == 2
    assert len(root.findall(f"{ns}circle")) == 1
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "A <title>" in texts and "LO" in texts
    assert ET.fromstring(svg([])).find(f"{ns}text") is not None


def test_summary_lines() -> None:
    report = {"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Observation",
                      "code": {"coding": [{"display": "CGM Summary"}]},
                      "effectivePeriod": {"start": "2027-02-15", "end": "2027-03-01"}}},
        {"resource": {"resourceType": "Observation",
                      "code": {"coding": [{"code": "97507-8", "display": "Mean glucose"}]},
                      "valueQuantity": {"value": 142, "unit": "mg/dL"}}},
        {"resource": {"resourceType": "Observation", "code": {"text": "GMI"},
                      "dataAbsentReason": {"coding": [{"code": "unknown"}]}}},
        {"resource": {"resourceType": "Device", "deviceName": [{"name": "Sensor X"}]}}]}
    assert summary_lines(report) == [
        "period: 2027-02-15 to 2027-03-01", "CGM Summary", "Mean glucose: 142 mg/dL",
        "GMI: absent (unknown)", "device: Sensor X"]
