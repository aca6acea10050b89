"""A recorded-data stand-in for the FHIR side of polling tests: it answers searches and reads
the way a Device Data Recorder does at a given moment (chunks per retrieving-data.md), so the
cursor logic can be checked over many polls without a server. The end-to-end test runs the
same client against the real resource server."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bridge.diga.polling import iso, parse_datetime


@dataclass
class Sample:
    time: dt.datetime
    value: float
    arrives: dt.datetime


@dataclass
class CgmRecorder:
    """CGM samples in chunks of ``span`` on a grid from ``origin``, one Observation each,
    with the recorder's rules: a chunk is ``final`` once a sample after its cell arrived
    (the edge delivers in order); an empty cell after the newest sample is announced as a
    ``preliminary`` chunk without data for ``pending_window``; other empty cells have no
    chunk in searches."""

    origin: dt.datetime
    span: dt.timedelta
    period: dt.timedelta
    samples: list[Sample] = field(default_factory=list)
    #: True: chunk end is start + span - 1 s (…:59:59); False: start + span (exclusive).
    inclusive_end: bool = True
    pending_window: dt.timedelta = dt.timedelta(hours=24)

    def chunk(self, index: int, now: dt.datetime, *, read: bool = False
              ) -> dict[str, Any] | None:
        start = self.origin + index * self.span
        if start > now:
            return None
        arrived = [s for s in self.samples if s.arrives <= now]
        newest = max((s.time for s in arrived), default=None)
        inside = {s.time: s.value for s in arrived if start <= s.time < start + self.span}
        # Final once a sample after the cell arrived (the edge delivers in order).
        done = newest is not None and newest >= start + self.span
        status = "final" if done else "preliminary"
        if not inside:
            newest_cell = (self.origin - self.span if newest is None
                           else self.origin + (newest - self.origin) // self.span * self.span)
            pending = start > newest_cell and start >= now - self.pending_window
            if not pending and not read:
                return None
            if not pending:
                status = "final"
        slots = int(self.span / self.period)
        tokens = [f"{inside[t]:g}" if (t := start + slot * self.period) in inside else "E"
                  for slot in range(slots)]
        while tokens and tokens[-1] == "E":
            tokens.pop()
        end = start + self.span - (dt.timedelta(seconds=1) if self.inclusive_end
                                   else dt.timedelta(0))
        observation: dict[str, Any] = {
            "resourceType": "Observation", "id": f"cgm-{index}", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
            "effectivePeriod": {"start": iso(start), "end": iso(end)},
            "device": {"reference": "Device/cgm-1"},
        }
        if tokens:
            observation["valueSampledData"] = {
                "origin": {"value": 0, "unit": "mg/dl", "system": "http://unitsofmeasure.org",
                           "code": "mg/dL"},
                "period": self.period.total_seconds() * 1000, "dimensions": 1,
                "data": " ".join(tokens)}
        else:
            observation["dataAbsentReason"] = {"coding": [{"code": "temp-unknown"}]}
        return observation

    def search(self, date: str, now: dt.datetime) -> dict[str, Any]:
        prefix, value = date[:2], parse_datetime(date[2:])
        found = []
        index = 0
        while self.origin + index * self.span <= now:
            chunk = self.chunk(index, now)
            index += 1
            if chunk is None:
                continue
            end = parse_datetime(chunk["effectivePeriod"]["end"])
            # FHIR search on a Period: the range above the value must overlap the period.
            if (prefix == "ge" and end >= value) or (prefix == "gt" and end > value):
                found.append(chunk)
        return bundle(found)

    def read(self, chunk_id: str, now: dt.datetime) -> dict[str, Any]:
        chunk = self.chunk(int(chunk_id.split("-")[1]), now, read=True)
        assert chunk is not None
        return chunk


@dataclass
class MeterRecorder:
    """Blood glucose readings, each an Observation, visible once they arrived."""

    samples: list[Sample] = field(default_factory=list)

    def search(self, date: str, now: dt.datetime) -> dict[str, Any]:
        assert date.startswith("ge")
        since = parse_datetime(date[2:])
        found = [{"resourceType": "Observation", "id": f"bg-{i}", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                  "effectiveDateTime": iso(s.time),
                  "valueQuantity": {"value": s.value, "unit": "mg/dl",
                                    "system": "http://unitsofmeasure.org", "code": "mg/dL"},
                  "device": {"reference": "Device/meter-1"}}
                 for i, s in enumerate(self.samples) if s.time >= since and s.arrives <= now]
        return bundle(found)


def bundle(observations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(observations),
            "entry": [{"fullUrl": f"https://ddr.example/fhir/Observation/{o['id']}",
                       "resource": o, "search": {"mode": "match"}} for o in observations]}
