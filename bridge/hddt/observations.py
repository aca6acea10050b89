"""Store rows → HDDT Observations (plain dicts, FHIR JSON form).

* :func:`blood_glucose` — a meter reading as HddtBloodGlucoseMeasurement.
* :func:`cell_chunks` — CGM readings of one device in one chunk cell as
  HddtContinuousGlucoseMeasurement chunks with SampledData.

CGM chunks (retrieving-data.md "Continuous Measurements", measurement-cgm.md): time is cut
into cells of the fixed chunk span on the UTC grid; each cell of a device is one chunk,
split where the calibration state changes (the chunk before the change ends there and is
``final``). A chunk is ``final`` once readings after its cell have arrived (the edge syncs
in order), or when it was closed early, or when its device was replaced; otherwise it is
``preliminary`` and keeps its logical id while it fills, so a DiGA can re-read it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.hddt.data import CgmRow, DeviceRow
from bridge.records import CODINGS, RecordKind

BG_PROFILE = "https://gematik.de/fhir/hddt/StructureDefinition/hddt-blood-glucose-measurement"
CGM_PROFILE = (
    "https://gematik.de/fhir/hddt/StructureDefinition/hddt-continuous-glucose-measurement")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
MG_DL = "mg/dL"

#: LOINC code and display of a meter reading by specimen (hddt-miv-blood-glucose-measurement,
#: mass/volume codes only: values are served in mg/dL). Control solution and interstitial
#: fluid are no blood glucose measurement of the patient and are not exported.
BG_LOINC_BY_SAMPLE: dict[str, tuple[str, str]] = {
    "capillary-whole-blood": ("41653-7", "Glucose [Mass/volume] in Capillary blood by "
                                         "Glucometer"),
    "venous-whole-blood": ("2339-0", "Glucose [Mass/volume] in Blood"),
    "arterial-whole-blood": ("2339-0", "Glucose [Mass/volume] in Blood"),
    "undetermined-whole-blood": ("2339-0", "Glucose [Mass/volume] in Blood"),
    "capillary-plasma": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    "venous-plasma": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    "arterial-plasma": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    "undetermined-plasma": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
}
#: Every LOINC code of the blood glucose MIV (the value set, both units).
BG_MIV_CODES = frozenset({"2339-0", "15074-8", "2345-7", "14749-6", "41653-7", "14743-9"})
CGM_CODE = CODINGS[RecordKind.CGM_GLUCOSE].loinc or "99504-3"
CGM_DISPLAY = CODINGS[RecordKind.CGM_GLUCOSE].loinc_display or ""
CGM_MIV_CODES = frozenset({"99504-3", "105272-9"})

#: Rank of each source in the sort key (ties at the same instant).
RANK_BG, RANK_CGM, RANK_INSULIN = 0, 1, 2


def instant(value: dt.datetime) -> str:
    """A FHIR instant in UTC with fixed width, so that text order is time order."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fhir_time(value: dt.datetime) -> str:
    """A FHIR dateTime in UTC, seconds unless the value has a fraction."""
    value = value.astimezone(dt.UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def number(value: float) -> float | int:
    """A glucose value as sent: one decimal, whole numbers without it."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded


def metric_id(device: DeviceRow, state: str) -> str:
    """The DeviceMetric of a device in one calibration state (a new state is a new
    DeviceMetric: retrieving-data.md "Versioning of DeviceMetric Resources")."""
    return f"dm-{device.key}-{state}"


def device_id(device: DeviceRow) -> str:
    return f"dev-{device.key}"


# --- blood glucose ---------------------------------------------------------------------------

def bg_id(row_id: int) -> str:
    return f"bg-{row_id}"


def blood_glucose(row: Any, device: DeviceRow, *, lower_limit: float,
                  upper_limit: float) -> dict[str, Any]:
    """A ``glucose_readings`` row as HddtBloodGlucoseMeasurement.

    "LO"/"HI" readings carry the meter's limit with comparator ``<``/``>``
    (measurement-blood-glucose.md "Lo and Hi Values"); a reading without a number and
    without such a flag carries ``dataAbsentReason`` ``error`` and no value."""
    code, display = BG_LOINC_BY_SAMPLE[row.sample_type]
    flags = set(row.annunciations.split(",")) if row.annunciations else set()
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": bg_id(row.id),
        "meta": {"profile": [BG_PROFILE], "lastUpdated": instant(row.inserted_at)},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "effectiveDateTime": fhir_time(row.time),
    }
    quantity: dict[str, Any] | None = None
    if "result-too-low" in flags:
        quantity = {"value": number(row.value if row.value is not None else lower_limit),
                    "comparator": "<"}
    elif "result-too-high" in flags:
        quantity = {"value": number(row.value if row.value is not None else upper_limit),
                    "comparator": ">"}
    elif row.value is not None:
        quantity = {"value": number(row.value)}
    if quantity is None:
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "error",
                                               "display": "Error"}]}
    else:
        obs["valueQuantity"] = quantity | {"unit": MG_DL, "system": UCUM, "code": MG_DL}
    obs["device"] = {"reference": f"DeviceMetric/{metric_id(device, 'calibrated')}"}
    return obs


# --- CGM chunks ------------------------------------------------------------------------------

def calibration_state(annunciations: str) -> str:
    """DeviceMetric calibration state of a reading from its annunciations."""
    flags = annunciations.split(",") if annunciations else ()
    if "calibration-required" in flags:
        return "calibration-required"
    if "sensor-warmup" in flags:
        return "not-calibrated"
    return "calibrated"


def cell_start(time: dt.datetime, span: dt.timedelta) -> dt.datetime:
    """Start of the grid cell holding ``time`` (cells are aligned on the UTC epoch)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    step = int(span.total_seconds())
    seconds = int((time - epoch).total_seconds() // 1)
    return epoch + dt.timedelta(seconds=seconds - seconds % step)


def _floor_second(time: dt.datetime) -> dt.datetime:
    return time.replace(microsecond=0)


def chunk_id(device: DeviceRow, start: dt.datetime) -> str:
    return f"cgm-{device.key}-{int(start.timestamp())}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of one device: ``rows`` are its readings (empty: data absent)."""

    id: str
    device: DeviceRow
    start: dt.datetime
    end: dt.datetime
    status: str
    state: str
    rows: tuple[CgmRow, ...]
    absent: str | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (instant(self.start), RANK_CGM, self.id)


@dataclass(frozen=True, slots=True)
class DeviceTimeline:
    """What decides chunk status beyond the cell's own readings."""

    device: DeviceRow
    #: When a newer sensor of the patient took over (None: still the current one).
    retired_at: dt.datetime | None


def timelines(devices: Sequence[DeviceRow]) -> dict[str, DeviceTimeline]:
    """CGM devices with their replacement instant: a device is replaced by the next sensor
    that started after it and has readings at least as new (retrieving-data.md "Changing
    Devices")."""
    cgm = [d for d in devices if d.first_cgm is not None and d.last_cgm is not None]
    out: dict[str, DeviceTimeline] = {}
    for d in cgm:
        assert d.first_cgm is not None and d.last_cgm is not None
        successors = [e.first_cgm for e in cgm
                      if e is not d and e.first_cgm is not None and e.last_cgm is not None
                      and e.first_cgm > d.first_cgm and e.last_cgm >= d.last_cgm]
        out[d.id] = DeviceTimeline(d, min(successors) if successors else None)
    return out


def cell_chunks(line: DeviceTimeline, start: dt.datetime, rows: Sequence[CgmRow], *,
                span: dt.timedelta, now: dt.datetime, pending_window: dt.timedelta,
                for_read: bool = False) -> list[Chunk]:
    """The chunks of one device in the cell starting at ``start``.

    An empty cell after the device's newest reading (up to now, and starting less than
    ``pending_window`` after that reading) is one ``preliminary`` chunk with
    ``dataAbsentReason`` ``temp-unknown``: data may still come (measurement-cgm.md). Any
    other empty cell has no chunk in searches; a read of its id (a chunk announced as
    pending whose data never came) answers ``final`` with ``dataAbsentReason``
    ``unknown``."""
    device = line.device
    end = start + span
    if not rows:
        last = device.last_cgm
        if last is None:
            return []
        pending = (line.retired_at is None and start >= cell_start(last, span) + span
                   and start <= now and start < last + pending_window)
        if pending:
            return [Chunk(chunk_id(device, start), device, start, end, "preliminary",
                          device.calibration_state or "calibrated", (), "temp-unknown")]
        if for_read and device.first_cgm is not None and start >= cell_start(
                device.first_cgm, span) and start <= now:
            return [Chunk(chunk_id(device, start), device, start, end, "final",
                          device.calibration_state or "calibrated", (), "unknown")]
        return []
    runs: list[list[CgmRow]] = []
    states: list[str] = []
    for row in rows:
        state = calibration_state(row.annunciations)
        if not states or state != states[-1]:
            runs.append([])
            states.append(state)
        runs[-1].append(row)
    starts = [start] + [_floor_second(run[0].time) for run in runs[1:]]
    chunks: list[Chunk] = []
    assert device.last_cgm is not None
    for i, run in enumerate(runs):
        last_run = i == len(runs) - 1
        chunk_end = end if last_run else starts[i + 1]
        if not last_run:
            status = "final"  # closed early by a change of calibration state
        elif line.retired_at is not None and device.last_cgm < end:
            status = "final"  # the sensor was replaced: its last chunk closes
            chunk_end = min(end, max(_floor_second(device.last_cgm) + dt.timedelta(seconds=1),
                                     line.retired_at))
        elif device.last_cgm >= end:
            status = "final"
        else:
            status = "preliminary"
        chunks.append(Chunk(chunk_id(device, starts[i]), device, starts[i], chunk_end, status,
                            states[i], tuple(run)))
    return chunks


def sample_period(rows: Sequence[CgmRow], default: dt.timedelta) -> dt.timedelta:
    """The device's sample period: the most common gap between consecutive readings, in
    whole minutes (sensors sample every 1 to 15 minutes)."""
    gaps = Counter(
        round((b.time - a.time).total_seconds() / 60) for a, b in itertools.pairwise(rows)
        if b.device_id == a.device_id)
    gaps.pop(0, None)
    if not gaps:
        return default
    minutes = gaps.most_common(1)[0][0]
    return dt.timedelta(minutes=min(max(minutes, 1), 15))


def sampled_data(chunk: Chunk, period: dt.timedelta, *, lower: float,
                 upper: float) -> dict[str, Any]:
    """The chunk's readings on the grid ``start + k·period``: a number per reading, ``L``
    or ``U`` for values below or above the sensor's range, ``E`` for a reading without a
    value and for a missed slot between readings; nothing after the newest reading."""
    step = period.total_seconds()
    slots: dict[int, str] = {}
    flagged = False
    for row in chunk.rows:
        k = max(0, round((row.time - chunk.start).total_seconds() / step))
        while k in slots:  # a reading off the grid: the next free slot keeps it
            k += 1
        if not row.annunciations and row.value is not None:  # the common case
            slots[k] = str(number(row.value))
            continue
        flags = row.annunciations.split(",") if row.annunciations else ()
        if "below-device-range" in flags:
            text, flagged = "L", True
        elif "above-device-range" in flags:
            text, flagged = "U", True
        elif row.value is None:
            text = "E"
        else:
            text = str(number(row.value))
        slots[k] = text
    data = " ".join(slots.get(k, "E") for k in range(max(slots) + 1))
    out: dict[str, Any] = {
        "origin": {"value": 0, "unit": MG_DL, "system": UCUM, "code": MG_DL},
        "period": int(step * 1000), "dimensions": 1, "data": data}
    if flagged:
        out["lowerLimit"] = number(lower)
        out["upperLimit"] = number(upper)
    return out


def chunk_resource(chunk: Chunk, period: dt.timedelta, *, lower: float,
                   upper: float) -> dict[str, Any]:
    """A chunk as HddtContinuousGlucoseMeasurement."""
    updated = max((r.inserted_at for r in chunk.rows), default=chunk.start)
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": chunk.id,
        "meta": {"profile": [CGM_PROFILE], "lastUpdated": instant(updated)},
        "status": chunk.status,
        "code": {"coding": [{"system": LOINC, "code": CGM_CODE, "display": CGM_DISPLAY}]},
        "effectivePeriod": {"start": fhir_time(chunk.start), "end": fhir_time(chunk.end)},
    }
    if chunk.rows:
        obs["valueSampledData"] = sampled_data(chunk, period, lower=lower, upper=upper)
    else:
        display = "Temporarily Unknown" if chunk.absent == "temp-unknown" else "Unknown"
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON,
                                               "code": chunk.absent, "display": display}]}
    obs["device"] = {"reference": f"DeviceMetric/{metric_id(chunk.device, chunk.state)}"}
    return obs
