"""The polling pattern of HDDT "Retrieving Data", as cursors that deliver each reading once.

Pure logic over decoded FHIR JSON: no I/O. :class:`bridge.diga.client.DigaClient` asks the
cursors what to request, performs the requests, and hands the Observations back.

Dedicated measurements (blood glucose, retrieving-data.md "Missing Values with Dedicated
Measurements"): the next search starts where the last one ended. The specification suggests
``date`` one second after the newest ``effectiveDateTime`` received; this cursor asks
``date=ge<newest − overlap>`` instead and drops the Observation ids it already delivered.
``ge`` keeps a second reading in the same second; the overlap (the Device Data Recorder's
``Delay-From-Real-Time``) picks up readings that reached the recorder late.

Continuous measurements (CGM, retrieving-data.md "Continuously Polling for New Data"): data
comes in chunks, one Observation with ``valueSampledData`` per chunk time span. While a chunk
is ``preliminary`` it is re-read by id; when it turns ``final`` a new search starts at its
``effectivePeriod.end``. The cursor remembers, per chunk, which sample positions it already
delivered, so a chunk that grows (or whose gap is filled later, measurement-cgm.md "Quality of
Data and Missing Values") yields only its new samples.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.diga.errors import BundleError

LOINC = "http://loinc.org"

#: MIV "Blood Glucose Measurement" (ValueSet hddt-miv-blood-glucose-measurement): LOINC code
#: → the UCUM unit its values must carry.
BLOOD_GLUCOSE_CODES: Mapping[str, str] = {
    "2339-0": "mg/dL", "15074-8": "mmol/L",    # blood
    "2345-7": "mg/dL", "14749-6": "mmol/L",    # serum or plasma
    "41653-7": "mg/dL", "14743-9": "mmol/L",   # capillary blood by glucometer
}
#: MIV "Continuous Glucose Measurement" (ValueSet hddt-miv-continuous-glucose-measurement).
CGM_CODES: Mapping[str, str] = {"99504-3": "mg/dL", "105272-9": "mmol/L"}

BLOOD_GLUCOSE = "blood-glucose"
CGM = "cgm"

# SampledData codes (FHIR R4 datatypes, SampledData.data): no value, below / above the
# detection limit (measurement-cgm.md "Lo and Hi Values").
_NO_VALUE = "E"
_BELOW = "L"
_ABOVE = "U"


@dataclass(frozen=True, slots=True)
class Reading:
    """One glucose value as the DiGA received it."""

    #: :data:`BLOOD_GLUCOSE` or :data:`CGM`.
    kind: str
    time: dt.datetime
    #: The value in ``unit``; for a value outside the measuring range the range limit (None
    #: when the recorder did not give it).
    value: float | None
    #: UCUM code (``mg/dL`` or ``mmol/L``).
    unit: str
    #: LOINC code of the Observation.
    code: str
    observation_id: str
    #: "" for a plain value; ``<`` / ``>`` (meter LO/HI, valueQuantity.comparator) or ``L`` /
    #: ``U`` (CGM sample below / above the measuring range).
    flag: str = ""
    #: Observation status (``final``, or ``preliminary`` for a chunk still filling).
    status: str = "final"
    #: ``Observation.device`` reference (a Device or the DeviceMetric of its sensor).
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        """The reading as a JSON object (times in ISO 8601 UTC)."""
        return {"kind": self.kind, "time": iso(self.time), "value": self.value,
                "unit": self.unit, "code": self.code, "observation": self.observation_id,
                "flag": self.flag, "status": self.status, "device": self.device}


@dataclass(frozen=True, slots=True)
class Rejected:
    """An Observation (or part of one) the client refused to use, and why."""

    observation_id: str
    reason: str


@dataclass(slots=True)
class PollResult:
    """What one poll delivered."""

    readings: list[Reading] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def extend(self, other: PollResult) -> None:
        """Append another poll's readings and refusals."""
        self.readings.extend(other.readings)
        self.rejected.extend(other.rejected)


# --- FHIR helpers ----------------------------------------------------------------------------

def iso(value: dt.datetime) -> str:
    """A FHIR instant in UTC with a ``Z``, to the second when there are no microseconds."""
    utc = value.astimezone(dt.UTC)
    text = utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_datetime(text: Any) -> dt.datetime:
    """A FHIR ``dateTime``/``instant`` as an aware UTC datetime (a date alone is its
    midnight in UTC)."""
    if not isinstance(text, str) or not text:
        raise BundleError(f"not a FHIR dateTime: {text!r}")
    try:
        if len(text) == 4:
            value = dt.datetime(int(text), 1, 1)
        elif len(text) == 7:
            value = dt.datetime(int(text[:4]), int(text[5:7]), 1)
        else:
            value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BundleError(f"not a FHIR dateTime: {text!r}") from None
    if value.tzinfo is None:
        # FHIR: a time without zone is not allowed; a bare date has none to carry.
        if "T" in text:
            raise BundleError(f"a FHIR dateTime with a time needs a zone: {text!r}")
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def bundle_observations(bundle: Any) -> list[dict[str, Any]]:
    """The Observations a search Bundle matched (``_include``\\ d resources left out)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BundleError("the search did not answer with a Bundle")
    found: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            continue
        mode = (entry.get("search") or {}).get("mode", "match")
        if mode == "match":
            found.append(resource)
    return found


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of the next page of a paged search (FHIR R4 http.html#paging), if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def loinc_code(observation: Mapping[str, Any]) -> str | None:
    """The LOINC code of an Observation (None when it has none)."""
    for coding in (observation.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == LOINC and coding.get("code"):
            return str(coding["code"])
    return None


def device_reference(observation: Mapping[str, Any]) -> str:
    """``Observation.device.reference`` ("" when absent)."""
    device = observation.get("device")
    return str(device.get("reference", "")) if isinstance(device, dict) else ""


def code_parameter(codes: Iterable[str]) -> str:
    """A ``code`` search value naming each LOINC code (comma: OR, FHIR search.html#token)."""
    return ",".join(f"{LOINC}|{code}" for code in sorted(codes))


def _observation_id(observation: Mapping[str, Any]) -> str:
    value = observation.get("id")
    if not isinstance(value, str) or not value:
        raise BundleError("an Observation without a logical id")
    return value


# --- dedicated measurements: blood glucose ---------------------------------------------------

@dataclass(slots=True)
class DedicatedCursor:
    """Where blood glucose polling stands: the newest reading time delivered and the ids
    delivered near it (to drop them when the next, overlapping search returns them)."""

    newest: dt.datetime | None = None
    #: Observation id → effective time, for readings within the overlap of ``newest``.
    delivered: dict[str, dt.datetime] = field(default_factory=dict)

    def search_date(self, start: dt.datetime, overlap: dt.timedelta) -> str:
        """The ``date`` search value of the next poll (``start`` on the first one)."""
        since = start if self.newest is None else self.newest - overlap
        return f"ge{iso(since)}"

    def take(self, observations: Sequence[Mapping[str, Any]], overlap: dt.timedelta
             ) -> PollResult:
        """Deliver the readings not delivered before; advance the cursor."""
        result = PollResult()
        fresh: list[Reading] = []
        for observation in observations:
            code = loinc_code(observation)
            if code is None or code not in BLOOD_GLUCOSE_CODES:
                continue
            oid = _observation_id(observation)
            if oid in self.delivered:
                continue
            reading = _dedicated_reading(observation, oid, code, result)
            self.delivered[oid] = reading.time if reading else _effective_time(observation)
            if reading is not None:
                fresh.append(reading)
        fresh.sort(key=lambda r: (r.time, r.observation_id))
        result.readings.extend(fresh)
        if self.delivered:
            newest = max(self.delivered.values())
            self.newest = newest if self.newest is None else max(self.newest, newest)
        if self.newest is not None:
            horizon = self.newest - overlap
            self.delivered = {k: t for k, t in self.delivered.items() if t >= horizon}
        return result

    def to_json(self) -> dict[str, Any]:
        """The cursor as JSON for the pairing state file."""
        return {"newest": None if self.newest is None else iso(self.newest),
                "delivered": {k: iso(t) for k, t in sorted(self.delivered.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> DedicatedCursor:
        """The cursor stored by :meth:`to_json` (a fresh one for None)."""
        if not data:
            return cls()
        newest = data.get("newest")
        return cls(newest=None if newest is None else parse_datetime(newest),
                   delivered={str(k): parse_datetime(v)
                              for k, v in (data.get("delivered") or {}).items()})


def _effective_time(observation: Mapping[str, Any]) -> dt.datetime:
    if "effectiveDateTime" in observation:
        return parse_datetime(observation["effectiveDateTime"])
    period = observation.get("effectivePeriod") or {}
    return parse_datetime(period.get("start"))


def _dedicated_reading(observation: Mapping[str, Any], oid: str, code: str,
                       result: PollResult) -> Reading | None:
    status = str(observation.get("status", ""))
    if status in {"entered-in-error", "cancelled"}:
        result.rejected.append(Rejected(oid, f"status {status}"))
        return None
    if "dataAbsentReason" in observation:
        # measurement-blood-glucose.md "Quality of Data and Missing Values": no valid value.
        reason = _absent_reason(observation)
        result.rejected.append(Rejected(oid, f"no value ({reason})"))
        return None
    quantity = observation.get("valueQuantity")
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        result.rejected.append(Rejected(oid, "no valueQuantity.value"))
        return None
    unit = str(quantity.get("code", ""))
    expected = BLOOD_GLUCOSE_CODES[code]
    if unit != expected:
        # measurement-blood-glucose.md: a unit that does not match the LOINC code's unit
        # MUST NOT be used for calculations or display.
        result.rejected.append(Rejected(oid, f"unit {unit!r} does not match LOINC {code} "
                                             f"({expected})"))
        return None
    comparator = str(quantity.get("comparator", ""))
    return Reading(kind=BLOOD_GLUCOSE, time=_effective_time(observation),
                   value=float(quantity["value"]), unit=unit, code=code, observation_id=oid,
                   flag=comparator if comparator in {"<", ">"} else "", status=status,
                   device=device_reference(observation))


def _absent_reason(observation: Mapping[str, Any]) -> str:
    codings = (observation.get("dataAbsentReason") or {}).get("coding") or [{}]
    return str(codings[0].get("code", "unknown"))


# --- continuous measurements: CGM chunks -----------------------------------------------------

@dataclass(slots=True)
class ChunkMark:
    """One chunk the cursor knows: its period, status and which samples it delivered."""

    start: dt.datetime
    end: dt.datetime
    status: str
    #: Offsets from ``start`` (milliseconds) of the samples already delivered: by time, not
    #: by position, so a chunk whose sample period the recorder re-derives stays exact.
    delivered: set[int] = field(default_factory=set)

    @property
    def preliminary(self) -> bool:
        """Whether the chunk may still change (re-read it by id)."""
        return self.status not in {"final", "amended", "corrected"}

    def to_json(self) -> dict[str, Any]:
        """The mark as JSON."""
        return {"start": iso(self.start), "end": iso(self.end), "status": self.status,
                "delivered": sorted(self.delivered)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkMark:
        """The mark stored by :meth:`to_json`."""
        return cls(start=parse_datetime(data["start"]), end=parse_datetime(data["end"]),
                   status=str(data["status"]),
                   delivered={int(v) for v in data.get("delivered") or []})


#: The date prefix of the search after a chunk turned final. The specification's pseudo code
#: asks ``gt[end + 1 s]``; ``ge[end]`` returns the same next chunk whichever convention the
#: recorder uses for chunk ends (inclusive …:59:59 or exclusive …:00:00), and the chunk already
#: held is recognised by its id.
NEXT_CHUNK_PREFIX = "ge"


@dataclass(slots=True)
class ContinuousCursor:
    """Where CGM polling stands: the end of the newest final chunk and the chunks still
    open (preliminary) or at the search boundary."""

    search_from: dt.datetime | None = None
    chunks: dict[str, ChunkMark] = field(default_factory=dict)

    def open_chunks(self) -> list[str]:
        """Ids of the preliminary chunks to re-read (oldest first)."""
        return [cid for cid, mark in sorted(self.chunks.items(), key=lambda i: i[1].start)
                if mark.preliminary]

    def needs_search(self, now: dt.datetime) -> bool:
        """Whether to search for newer chunks: no chunk open, or an open chunk whose period
        is over (the recorder keeps a chunk with a gap preliminary, retrieving-data.md
        "Missing Values with Continuous Measurements", and starts the next one)."""
        marks = [self.chunks[cid] for cid in self.open_chunks()]
        return not marks or any(mark.end <= now for mark in marks)

    def search_date(self, start: dt.datetime,
                    overlap: dt.timedelta = dt.timedelta(0)) -> str:
        """The ``date`` search value for the next search (``start`` on the first one).

        ``overlap`` reaches back before the boundary, for data the recorder receives late
        into chunk cells it had not announced; chunks seen again are recognised by id."""
        if self.search_from is None:
            return f"ge{iso(start)}"
        return f"{NEXT_CHUNK_PREFIX}{iso(self.search_from - overlap)}"

    def forget(self, chunk_id: str) -> None:
        """Stop following a chunk the recorder no longer serves (404/410: outside the
        historic data period)."""
        self.chunks.pop(chunk_id, None)

    def take(self, observations: Sequence[Mapping[str, Any]], *, searched: bool = True,
             overlap: dt.timedelta = dt.timedelta(0)) -> PollResult:
        """Deliver the samples of these chunks not delivered before; advance the cursor.

        ``searched``: the chunks are a search's complete answer from the cursor's boundary
        on, so the boundary may move to the newest final one. Chunks re-read by id say
        nothing about the chunks between them and must not move it."""
        result = PollResult()
        ends: list[dt.datetime] = []
        for observation in observations:
            code = loinc_code(observation)
            if code is None or code not in CGM_CODES:
                continue
            oid = _observation_id(observation)
            self._take_chunk(observation, oid, code, result)
            mark = self.chunks.get(oid)
            if mark is not None and not mark.preliminary:
                ends.append(mark.end)
        result.readings.sort(key=lambda r: (r.time, r.observation_id))
        if searched and ends:
            newest = max(ends)
            if self.search_from is None or newest > self.search_from:
                self.search_from = newest
        if self.search_from is not None:
            boundary = self.search_from - overlap
            # Final chunks before the boundary cannot come back from the next search.
            self.chunks = {cid: m for cid, m in self.chunks.items()
                           if m.preliminary or m.end >= boundary}
        return result

    def _take_chunk(self, observation: Mapping[str, Any], oid: str, code: str,
                    result: PollResult) -> None:
        status = str(observation.get("status", ""))
        period = observation.get("effectivePeriod") or {}
        try:
            start = parse_datetime(period.get("start"))
            end = parse_datetime(period.get("end"))
        except BundleError as exc:
            result.rejected.append(Rejected(oid, f"chunk without a valid effectivePeriod: "
                                                 f"{exc.reason}"))
            return
        mark = self.chunks.get(oid)
        if mark is None:
            mark = ChunkMark(start=start, end=end, status=status)
            self.chunks[oid] = mark
        mark.start, mark.end, mark.status = start, end, status
        if status in {"entered-in-error", "cancelled"}:
            result.rejected.append(Rejected(oid, f"status {status}"))
            mark.status = "final"
            return
        sampled = observation.get("valueSampledData")
        if sampled is None:
            # dataAbsentReason temp-unknown: nothing yet; the chunk stays preliminary.
            return
        readings, problem = _samples(sampled, start=start, code=code, oid=oid, status=status,
                                     delivered=mark.delivered,
                                     device=device_reference(observation))
        if problem:
            result.rejected.append(Rejected(oid, problem))
        result.readings.extend(readings)


def _samples(sampled: Any, *, start: dt.datetime, code: str, oid: str, status: str,
             delivered: set[int], device: str) -> tuple[list[Reading], str]:
    """The new samples of a chunk; marks them in ``delivered``. Returns a refusal reason for
    samples the client must not use (then marking them, so the refusal is reported once)."""
    if not isinstance(sampled, dict):
        return [], "valueSampledData is not an object"
    origin = sampled.get("origin") or {}
    unit = str(origin.get("code", ""))
    expected = CGM_CODES[code]
    try:
        base = float(origin.get("value", 0))
        factor = float(sampled.get("factor", 1))
        period_ms = float(sampled["period"])
        dimensions = int(sampled.get("dimensions", 1))
    except (KeyError, TypeError, ValueError):
        return [], "valueSampledData without a valid origin, period or factor"
    tokens = str(sampled.get("data", "")).split()
    if dimensions != 1 or period_ms <= 0:
        return [], f"valueSampledData with {dimensions} dimensions, period {period_ms} ms"
    refusal = ""
    if unit != expected:
        # measurement-cgm.md: origin.code must match the unit of the LOINC code; otherwise
        # the values MUST NOT be used for calculations or display.
        refusal = f"unit {unit!r} does not match LOINC {code} ({expected})"
    lower = _number(sampled.get("lowerLimit"))
    upper = _number(sampled.get("upperLimit"))
    readings: list[Reading] = []
    refused = 0
    for index, token in enumerate(tokens):
        offset = round(index * period_ms)
        if offset in delivered or token == _NO_VALUE:
            continue
        delivered.add(offset)
        if refusal:
            refused += 1
            continue
        time = start + dt.timedelta(milliseconds=offset)
        if token == _BELOW:
            value, flag = lower, "L"
        elif token == _ABOVE:
            value, flag = upper, "U"
        else:
            try:
                value, flag = base + float(token) * factor, ""
            except ValueError:
                refusal = refusal or f"sample {index} is not a number: {token!r}"
                refused += 1
                continue
        readings.append(Reading(kind=CGM, time=time, value=value, unit=unit, code=code,
                                observation_id=oid, flag=flag, status=status, device=device))
    return readings, refusal if refused else ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
