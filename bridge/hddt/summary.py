"""The HDDT CGM summary: ``$hddt-cgm-summary`` parameters, metrics and result Bundle.

Pure functions; the resource server reads the points from the store and renders the result.

* :func:`parse_summary_parameters` reads the operation's FHIR ``Parameters`` body
  (measurement-cgm.md, "Operation $hddt-cgm-summary", "Request Parameters") and applies the
  defaults; bad input raises :class:`SummaryParameterError` carrying the OperationOutcome of
  the spec's examples (``MSG_PARAM_UNKNOWN``, ``MSG_PARAM_INVALID``, ``MSG_BAD_SYNTAX``).
* :func:`compute_cgm_metrics` computes the HL7 CGM IG summary metrics with numpy.
* :func:`cgm_summary_bundle` builds the ``collection`` Bundle of profile HddtCgmSummary
  (HddtCgmSummary.fsh): one HL7 CGM Summary Observation whose ``hasMember`` points at the
  mean glucose (mass and molar), times in ranges, GMI, CV, days of wear and sensor active
  percentage Observations, plus the contributing sensors' Device resources when ``related``
  is true. No readings in the period raises :class:`SummaryNoMatch` (``MSG_NO_MATCH``): the
  profile's ``entry 1..*`` rule means an empty result is an OperationOutcome, never a Bundle.

Metric definitions (docs/hddt-cgm-summary.md gives the reasoning):

* A reading counts when ``start <= time < end``. Readings without a number (``mg_dl`` None,
  e.g. a sensor's "LO"/"HI") count for sensor wear but not for glucose statistics.
* Times in ranges: share of readings with a number, in percent, in the consensus ranges the
  HL7 CGM IG's LOINC codes name: very low < 54, low 54 to < 70, target 70 to 180, high > 180
  to 250, very high > 250 mg/dL (bounds for fractional values: a reading of 180.4 is high).
* Mean glucose in mg/dL and mmol/L; GMI (%) = 3.31 + 0.02392 × mean (mg/dL); CV (%) =
  100 × sample standard deviation / mean (needs two readings).
* Sensor active percentage: readings received / readings expected over the period at the
  sensor's interval (given, or the median spacing of the readings), capped at 100.
* Days of wear: 24-hour slices of the period, counted from its start, that hold a reading.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.hddt.errors import HddtError
from bridge.records import MG_DL_PER_MMOL_L

# --- canonical URLs and codes (HDDT aliases.fsh; HL7 CGM IG profiles.fsh) -------------------

HDDT_CGM_SUMMARY_PROFILE = "https://gematik.de/fhir/hddt/StructureDefinition/hddt-cgm-summary"
HDDT_PERSONAL_HEALTH_DEVICE_PROFILE = (
    "https://gematik.de/fhir/hddt/StructureDefinition/hddt-personal-health-device")
_HL7_CGM = "http://hl7.org/fhir/uv/cgm/StructureDefinition/"
CGM_SUMMARY_PROFILE = _HL7_CGM + "cgm-summary"
MEAN_MASS_PROFILE = _HL7_CGM + "cgm-summary-mean-glucose-mass-per-volume"
MEAN_MOLES_PROFILE = _HL7_CGM + "cgm-summary-mean-glucose-moles-per-volume"
TIMES_IN_RANGES_PROFILE = _HL7_CGM + "cgm-summary-times-in-ranges"
GMI_PROFILE = _HL7_CGM + "cgm-summary-gmi"
CV_PROFILE = _HL7_CGM + "cgm-summary-coefficient-of-variation"
DAYS_OF_WEAR_PROFILE = _HL7_CGM + "cgm-summary-days-of-wear"
SENSOR_ACTIVE_PROFILE = _HL7_CGM + "cgm-summary-sensor-active-percentage"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OPERATION_OUTCOME_CODES = "http://terminology.hl7.org/CodeSystem/operation-outcome"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: LOINC codes of the HL7 CGM IG summary Observations (profiles.fsh inline CodeableConcepts).
LOINC_CGM_SUMMARY = ("107931-8",
                     "Continuous glucose monitoring summary panel - Reporting Period")
LOINC_MEAN_MASS = ("97507-8",
                   "Glucose [Mass/volume] in Serum or Plasma by Continuous glucose monitoring")
LOINC_MEAN_MOLES = ("105273-7",
                    "Glucose [Moles/volume] in Capillary blood by Continuous glucose monitoring")
LOINC_TIMES_IN_RANGES = ("106793-3", "Continuous glucose monitoring time in ranges panel")
LOINC_GMI = ("97506-0", "Glucose management indicator by Continuous glucose monitoring")
LOINC_CV = ("104638-2", "Coefficient of variation of glucose by Continuous glucose monitoring")
LOINC_DAYS_OF_WEAR = ("104636-6", "Continuous glucose monitoring duration of use")
LOINC_SENSOR_ACTIVE = ("104637-4", "Continuous glucose monitoring sensor wear time active")
#: Times-in-ranges component codes, very low … very high (HL7 CGM IG slices timeInVeryLow …
#: timeInVeryHigh). Sent without display: the IG states only the codes.
LOINC_TIR_COMPONENTS = ("104642-4", "104641-6", "97510-2", "104640-8", "104639-0")

#: Range bounds in mg/dL (international consensus ranges used by the HL7 CGM IG).
VERY_LOW_BELOW = 54.0
LOW_BELOW = 70.0
TARGET_UP_TO = 180.0
HIGH_UP_TO = 250.0

#: The operation's minimum supported period and default look-back (measurement-cgm.md).
DEFAULT_PERIOD = dt.timedelta(days=7)
#: Sensor interval assumed when it is neither given nor inferable (one reading or none).
FALLBACK_INTERVAL_MIN = 5.0

_PARAMETER_NAMES = ("effectivePeriodStart", "effectivePeriodEnd", "related")


# --- errors ---------------------------------------------------------------------------------

class SummaryError(HddtError):
    """A ``$hddt-cgm-summary`` request that gets an OperationOutcome instead of a Bundle.

    ``message_code`` is the operation-outcome code of the spec's example (``MSG_…``),
    ``severity`` and ``issue_code`` the issue's fields, ``http_status`` the status to answer
    with and ``text`` the ``details.text``.
    """

    def __init__(self, message_code: str, text: str, *, severity: str = "error",
                 issue_code: str = "invalid", http_status: int = 400,
                 parameter: str | None = None) -> None:
        self.message_code = message_code
        self.text = text
        self.severity = severity
        self.issue_code = issue_code
        self.http_status = http_status
        self.parameter = parameter
        super().__init__(f"{message_code}: {text}")

    def operation_outcome(self) -> dict[str, Any]:
        """The OperationOutcome body, shaped as the spec's examples (examples.fsh)."""
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.issue_code,
            "details": {
                "coding": [{"system": OPERATION_OUTCOME_CODES, "code": self.message_code}],
                "text": self.text,
            },
        }
        if self.parameter is not None:
            issue["expression"] = [f"Parameters.parameter.where(name = '{self.parameter}')"]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class SummaryParameterError(SummaryError):
    """The request body or one of its parameters is refused (HTTP 400)."""


class SummaryNoMatch(SummaryError):
    """No CGM readings in the requested period (``MSG_NO_MATCH``, severity information).

    Answered with 404: the profile forbids an empty Bundle (HddtCgmSummary ``entry 1..*``)
    and the spec's example outcome uses the issue code ``not-found``.
    """

    def __init__(self, start: dt.datetime, end: dt.datetime) -> None:
        self.start = start
        self.end = end
        super().__init__(
            "MSG_NO_MATCH",
            "No CGM summary observations found for the given effective period "
            f"({_instant(start)} to {_period_end(end)}).",
            severity="information", issue_code="not-found", http_status=404)


# --- request --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """A parsed ``$hddt-cgm-summary`` request.

    The period is half-open, ``start <= t < end``, in UTC: a partial or second-precision
    ``effectivePeriodEnd`` covers its whole day, month or second (FHIR dateTime precision).
    """

    start: dt.datetime
    end: dt.datetime
    related: bool = False
    #: Whether the client gave each bound (False: the spec's default was applied).
    start_given: bool = False
    end_given: bool = False

    @property
    def duration(self) -> dt.timedelta:
        """Length of the period."""
        return self.end - self.start


_DATETIME_RE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?$")


def parse_fhir_datetime(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The half-open UTC interval ``[first, after)`` a FHIR dateTime covers.

    ``2025-08`` covers the month, ``2025-08-31`` the day, ``…T23:59:59Z`` the second.
    A time needs a zone (FHIR R4 dateTime); dates without one are read as UTC. Raises
    ValueError on anything else.
    """
    m = _DATETIME_RE.match(text)
    if m is None:
        raise ValueError(f"not a FHIR dateTime: {text!r}")
    year = int(m["year"])
    if m["month"] is None:
        first = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        return first, first.replace(year=year + 1)
    month = int(m["month"])
    if m["day"] is None:
        first = dt.datetime(year, month, 1, tzinfo=dt.UTC)
        after = (first.replace(year=year + 1, month=1) if month == 12
                 else first.replace(month=month + 1))
        return first, after
    day = int(m["day"])
    if m["hour"] is None:
        first = dt.datetime(year, month, day, tzinfo=dt.UTC)
        return first, first + dt.timedelta(days=1)
    tz = m["tz"]
    zone = dt.UTC if tz == "Z" else dt.timezone(
        (1 if tz[0] == "+" else -1) * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    second = 0 if m["second"] is None else int(m["second"])
    fraction = m["fraction"] or ""
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if int(m["hour"]) == 24 or second == 60:
        raise ValueError(f"time out of range: {text!r}")
    first = dt.datetime(year, month, day, int(m["hour"]), int(m["minute"]), second, micro,
                        tzinfo=zone).astimezone(dt.UTC)
    if fraction:
        step = dt.timedelta(microseconds=10 ** max(0, 6 - (len(fraction) - 1)))
    elif m["second"] is not None:
        step = dt.timedelta(seconds=1)
    else:
        step = dt.timedelta(minutes=1)
    return first, first + step


def parse_summary_parameters(parameters: Mapping[str, Any], *,
                             now: dt.datetime) -> SummaryRequest:
    """Read the operation's ``Parameters`` body and apply the spec's defaults.

    Defaults (measurement-cgm.md, "Request Parameters"): no end → now; no start → seven days
    before the end. ``related`` defaults to false. An end after ``now`` is cut to ``now``
    (the summary covers recorded data only). Periods shorter than seven days are served (the
    spec permits, but does not require, refusing them).

    Raises :class:`SummaryParameterError`: ``MSG_BAD_SYNTAX`` when the body is not a
    Parameters resource; ``MSG_PARAM_UNKNOWN`` for a parameter the operation does not define
    (``subject`` and ``patient`` included: the patient comes from the access token);
    ``MSG_PARAM_INVALID`` for a wrong value type, an unparsable date, a repeated parameter,
    or a start not before the end.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(dt.UTC)
    if not isinstance(parameters, Mapping) or parameters.get("resourceType") != "Parameters":
        raise SummaryParameterError(
            "MSG_BAD_SYNTAX", "The request is malformed: the body must be a FHIR Parameters "
            "resource.")
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise SummaryParameterError(
            "MSG_BAD_SYNTAX", "The request is malformed: Parameters.parameter must be a list.")
    seen: dict[str, Mapping[str, Any]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise SummaryParameterError(
                "MSG_BAD_SYNTAX",
                f"The request is malformed: parameter #{index + 1} has no name.")
        name = entry["name"]
        if name not in _PARAMETER_NAMES:
            raise SummaryParameterError(
                "MSG_PARAM_UNKNOWN", f"Unknown input parameter '{name}'.", parameter=name)
        if name in seen:
            raise SummaryParameterError(
                "MSG_PARAM_INVALID", f"Parameter '{name}' is given more than once.",
                parameter=name)
        seen[name] = entry

    def period_bound(name: str) -> tuple[dt.datetime, dt.datetime] | None:
        entry = seen.get(name)
        if entry is None:
            return None
        value = entry.get("valueDateTime")
        others = sorted(k for k in entry if k.startswith("value") and k != "valueDateTime")
        if not isinstance(value, str) or others:
            raise SummaryParameterError(
                "MSG_PARAM_INVALID", f"Parameter '{name}' must carry a valueDateTime.",
                parameter=name)
        try:
            return parse_fhir_datetime(value)
        except (ValueError, OverflowError):
            raise SummaryParameterError(
                "MSG_PARAM_INVALID", f"Invalid date format in {name}.",
                parameter=name) from None

    start_bound = period_bound("effectivePeriodStart")
    end_bound = period_bound("effectivePeriodEnd")
    related = False
    if "related" in seen:
        entry = seen["related"]
        value = entry.get("valueBoolean")
        others = [k for k in entry if k.startswith("value") and k != "valueBoolean"]
        if not isinstance(value, bool) or others:
            raise SummaryParameterError(
                "MSG_PARAM_INVALID", "Parameter 'related' must carry a valueBoolean.",
                parameter="related")
        related = value

    end = now if end_bound is None else min(end_bound[1], now)
    start = end - DEFAULT_PERIOD if start_bound is None else start_bound[0]
    if start >= end:
        bad = "effectivePeriodStart" if start_bound is not None else "effectivePeriodEnd"
        raise SummaryParameterError(
            "MSG_PARAM_INVALID",
            f"effectivePeriodStart ({_instant(start)}) must lie before effectivePeriodEnd "
            f"({_period_end(end)}) and before the current time.", parameter=bad)
    return SummaryRequest(start=start, end=end, related=related,
                          start_given=start_bound is not None,
                          end_given=end_bound is not None)


# --- metrics --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CgmPoint:
    """One CGM reading: UTC time, value in mg/dL (None: no valid value, e.g. flagged "LO"
    or "HI"), and the backend id of the sensor that measured it."""

    time: dt.datetime
    mg_dl: float | None
    device_id: str

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError(f"CgmPoint time must be timezone-aware: {self.time!r}")
        if self.mg_dl is not None and not (math.isfinite(self.mg_dl) and self.mg_dl >= 0):
            raise ValueError(f"CgmPoint mg_dl must be a finite non-negative number: "
                             f"{self.mg_dl!r}")
        object.__setattr__(self, "time", self.time.astimezone(dt.UTC))


@dataclass(frozen=True, slots=True)
class TimesInRanges:
    """Percent of readings (with a number) per glucose range."""

    very_low: float
    low: float
    target: float
    high: float
    very_high: float

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """The five shares, very low first."""
        return (self.very_low, self.low, self.target, self.high, self.very_high)


@dataclass(frozen=True, slots=True)
class CgmMetrics:
    """The HL7 CGM IG summary metrics of one period (unrounded)."""

    start: dt.datetime
    end: dt.datetime
    #: Readings in the period, with or without a number.
    readings: int
    #: Readings with a number (the basis of every glucose statistic).
    valid_readings: int
    mean_mg_dl: float | None
    gmi_percent: float | None
    cv_percent: float | None
    times_in_ranges: TimesInRanges | None
    days_of_wear: int
    sensor_active_percent: float
    expected_interval_min: float
    #: Sensors that contributed a reading, in order of first reading.
    device_ids: tuple[str, ...]

    @property
    def mean_mmol_l(self) -> float | None:
        """Mean glucose in mmol/L."""
        return None if self.mean_mg_dl is None else self.mean_mg_dl / MG_DL_PER_MMOL_L


def _infer_interval_min(times_s: np.ndarray[Any, np.dtype[np.float64]],
                        devices: np.ndarray[Any, np.dtype[np.int64]]) -> float | None:
    """Median spacing of consecutive readings of the same sensor, in minutes."""
    order = np.lexsort((times_s, devices))
    t = times_s[order]
    d = devices[order]
    steps = np.diff(t)[np.diff(d) == 0]
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    return float(np.median(steps)) / 60.0


def compute_cgm_metrics(points: Sequence[CgmPoint], *, start: dt.datetime, end: dt.datetime,
                        expected_interval_min: float | None = None) -> CgmMetrics:
    """The summary metrics of the readings in ``[start, end)`` (see the module docstring)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if not start < end:
        raise ValueError(f"empty period: {start.isoformat()} .. {end.isoformat()}")
    if expected_interval_min is not None and not expected_interval_min > 0:
        raise ValueError(f"expected_interval_min must be positive: {expected_interval_min}")
    start = start.astimezone(dt.UTC)
    end = end.astimezone(dt.UTC)
    inside = [p for p in points if start <= p.time < end]
    device_ids: dict[str, int] = {}
    for p in sorted(inside, key=lambda p: p.time):
        device_ids.setdefault(p.device_id, len(device_ids))
    offsets = np.fromiter(((p.time - start).total_seconds() for p in inside),
                          dtype=np.float64, count=len(inside))
    devices = np.fromiter((device_ids[p.device_id] for p in inside), dtype=np.int64,
                          count=len(inside))
    values = np.fromiter((math.nan if p.mg_dl is None else p.mg_dl for p in inside),
                         dtype=np.float64, count=len(inside))
    valid = values[~np.isnan(values)]
    n_valid = int(valid.size)

    mean = float(valid.mean()) if n_valid else None
    gmi = None if mean is None else 3.31 + 0.02392 * mean
    cv = (float(100.0 * valid.std(ddof=1) / mean)
          if n_valid >= 2 and mean is not None and mean > 0 else None)
    tir = None
    if n_valid:
        shares = 100.0 * np.array([
            np.count_nonzero(valid < VERY_LOW_BELOW),
            np.count_nonzero((valid >= VERY_LOW_BELOW) & (valid < LOW_BELOW)),
            np.count_nonzero((valid >= LOW_BELOW) & (valid <= TARGET_UP_TO)),
            np.count_nonzero((valid > TARGET_UP_TO) & (valid <= HIGH_UP_TO)),
            np.count_nonzero(valid > HIGH_UP_TO),
        ], dtype=np.float64) / n_valid
        tir = TimesInRanges(*(float(s) for s in shares))

    interval = expected_interval_min
    if interval is None:
        interval = _infer_interval_min(offsets, devices) or FALLBACK_INTERVAL_MIN
    period_s = (end - start).total_seconds()
    expected = period_s / (interval * 60.0)
    active = min(100.0, 100.0 * len(inside) / expected) if expected > 0 else 0.0
    days = int(np.unique(np.floor(offsets / 86400.0)).size)
    return CgmMetrics(
        start=start, end=end, readings=len(inside), valid_readings=n_valid,
        mean_mg_dl=mean, gmi_percent=gmi, cv_percent=cv, times_in_ranges=tir,
        days_of_wear=days, sensor_active_percent=active, expected_interval_min=interval,
        device_ids=tuple(device_ids))


# --- bundle ---------------------------------------------------------------------------------

def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _period_end(end: dt.datetime) -> str:
    """The inclusive FHIR ``Period.end`` of a half-open end: the last whole second before it
    (FHIR Period ends are inclusive at their precision)."""
    last = end - dt.timedelta(microseconds=1)
    return _instant(last)


def _quantity(value: float, unit: str, code: str, digits: int) -> dict[str, Any]:
    return {"value": round(value, digits), "unit": unit, "system": UCUM, "code": code}


_UNKNOWN = {"coding": [{"system": DATA_ABSENT_REASON, "code": "unknown",
                        "display": "Unknown"}]}


def cgm_summary_bundle(request: SummaryRequest, points: Sequence[CgmPoint], *,
                       patient_reference: str | None, device_references: Mapping[str, str],
                       now: dt.datetime, id_factory: Callable[[], str],
                       devices: Mapping[str, Mapping[str, Any]] | None = None,
                       expected_interval_min: float | None = None) -> dict[str, Any]:
    """The HddtCgmSummary Bundle for ``request`` over ``points``, as a plain dict.

    ``patient_reference`` becomes each Observation's ``subject`` (the HL7 CGM profiles make
    it 1..1; None leaves it out). ``id_factory`` gives the Bundle's and each Observation's
    logical id; use UUIDs: entries are not addressable (the report is computed per request,
    measurement-cgm.md) so their ``fullUrl`` is ``urn:uuid:<id>``. When ``request.related``
    is true, the Device resource of every contributing sensor is added from ``devices``
    (backend device id → HddtPersonalHealthDevice dict) with ``device_references[device id]``
    (its absolute URL) as ``fullUrl``; a contributing sensor missing from either mapping
    raises KeyError. Metrics without a value (no reading with a number; CV with fewer than
    two) carry ``dataAbsentReason`` ``unknown`` (measurement-cgm.md, operation table).

    Raises :class:`SummaryNoMatch` when the period holds no reading at all.
    """
    metrics = compute_cgm_metrics(points, start=request.start, end=request.end,
                                  expected_interval_min=expected_interval_min)
    if metrics.readings == 0:
        raise SummaryNoMatch(request.start, request.end)
    period = {"start": _instant(request.start), "end": _period_end(request.end)}

    def observation(profile: str, code: tuple[str, str]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": id_factory(),
            "meta": {"profile": [profile]},
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory",
                                      "display": "Laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code[0], "display": code[1]}]},
        }
        if patient_reference is not None:
            resource["subject"] = {"reference": patient_reference}
        resource["effectivePeriod"] = dict(period)
        return resource

    def with_value(resource: dict[str, Any], quantity: dict[str, Any] | None
                   ) -> dict[str, Any]:
        if quantity is None:
            resource["dataAbsentReason"] = _UNKNOWN
        else:
            resource["valueQuantity"] = quantity
        return resource

    m = metrics
    summary = observation(CGM_SUMMARY_PROFILE, LOINC_CGM_SUMMARY)
    mean_mass = with_value(observation(MEAN_MASS_PROFILE, LOINC_MEAN_MASS),
                           None if m.mean_mg_dl is None
                           else _quantity(m.mean_mg_dl, "mg/dl", "mg/dL", 1))
    mean_moles = with_value(observation(MEAN_MOLES_PROFILE, LOINC_MEAN_MOLES),
                            None if m.mean_mmol_l is None
                            else _quantity(m.mean_mmol_l, "mmol/l", "mmol/L", 2))
    tir = observation(TIMES_IN_RANGES_PROFILE, LOINC_TIMES_IN_RANGES)
    shares = None if m.times_in_ranges is None else m.times_in_ranges.as_tuple()
    components = []
    for i, code in enumerate(LOINC_TIR_COMPONENTS):
        component: dict[str, Any] = {"code": {"coding": [{"system": LOINC, "code": code}]}}
        if shares is None:
            component["dataAbsentReason"] = _UNKNOWN
        else:
            # The IG asks for at least two decimal places of precision.
            component["valueQuantity"] = _quantity(shares[i], "%", "%", 2)
        components.append(component)
    tir["component"] = components
    gmi = with_value(observation(GMI_PROFILE, LOINC_GMI),
                     None if m.gmi_percent is None else _quantity(m.gmi_percent, "%", "%", 2))
    cv = with_value(observation(CV_PROFILE, LOINC_CV),
                    None if m.cv_percent is None else _quantity(m.cv_percent, "%", "%", 2))
    wear = with_value(observation(DAYS_OF_WEAR_PROFILE, LOINC_DAYS_OF_WEAR),
                      _quantity(m.days_of_wear, "days", "d", 0))
    active = with_value(observation(SENSOR_ACTIVE_PROFILE, LOINC_SENSOR_ACTIVE),
                        _quantity(m.sensor_active_percent, "%", "%", 2))
    members = [mean_mass, mean_moles, tir, gmi, cv, wear, active]
    summary["hasMember"] = [{"reference": f"urn:uuid:{r['id']}"} for r in members]

    entries: list[dict[str, Any]] = [
        {"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in [summary, *members]]
    if request.related:
        for device_id in m.device_ids:
            device = dict((devices or {})[device_id])
            entries.append({"fullUrl": device_references[device_id], "resource": device})
    return {
        "resourceType": "Bundle",
        "id": id_factory(),
        "meta": {"profile": [HDDT_CGM_SUMMARY_PROFILE]},
        "type": "collection",
        "timestamp": _instant(now),
        "entry": entries,
    }


def metrics_dict(metrics: CgmMetrics) -> dict[str, Any]:
    """The metrics as plain JSON values (for logs and the dashboard)."""
    out = dataclasses.asdict(metrics)
    out["start"] = _instant(metrics.start)
    out["end"] = _instant(metrics.end)
    out["mean_mmol_l"] = metrics.mean_mmol_l
    return out
