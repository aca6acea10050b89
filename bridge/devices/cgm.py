"""CGM Profile client (CGMP 1.0.1 over CGMS 1.0.1): live sensor values and RACP backfill.

* Session: CGM Session Start Time (CGMS 1.0.1 §3.4) gives the start as the sensor's local
  time with its time zone and DST offset; every value's Time Offset (§3.1, minutes) counts
  from it, so ``device_time`` = session start (local) + offset and the reading's
  ``session_start`` is that start in UTC. A start with an unknown zone is taken as UTC and
  reported in a notice.
* E2E-CRC: when the CGM Feature announces it (§3.2) every value is checked; a record whose
  CRC fails is dropped and counted in a notice, the other records of the notification are
  kept (each record carries its own Size and CRC).
* Sync (backfill): with state ``{"session_start", "last_offset"}`` of the same session the
  sensor is asked for records with Time Offset ≥ last + 1 (RACP filter 0x01, §3.6.2); for a
  new session, or without state, for all records.
* Live: :meth:`CgmDriver.listen` first backfills, then yields each notification's values as
  they come; a jump in Time Offsets beyond the communication interval (read with the SOCP
  "get communication interval", the one SOCP request a read-only bridge sends) means
  values were missed, and they are backfilled through the RACP.

The state advances only over values read completely: a rejected record stops it before
that record, so the next backfill asks for it again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.device_information import TransferInterrupted, read_clock, state_int
from bridge.devices.glucose import RACP, RacpClient
from bridge.errors import CrcMismatch, ProtocolError
from bridge.protocols.cgms import (
    CGM_RECORD_MIN_SIZE,
    CGM_SERVICE_UUID,
    CgmCharacteristic,
    CgmFeature,
    CgmMeasurementRecord,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmSocp,
    CgmStatus,
    SensorStatusAnnunciation,
    SocpOpCode,
)
from bridge.protocols.mder_float import SFloat
from bridge.protocols.racp import (
    RACP_UUID,
    CgmFilterType,
    RacpFilter,
    RacpOpCode,
    RacpOperator,
    RacpRequest,
    count_all,
    report_all,
    report_from_time_offset,
)
from bridge.records import Annunciation, CgmReading, DeviceInfo, DeviceKind, RecordError

logger = logging.getLogger(__name__)

MEASUREMENT: Final = "measurement"
SOCP: Final = "socp"
#: Time Offset is uint16 minutes (CGMS 1.0.1 §3.1).
MAX_TIME_OFFSET: Final = 0xFFFF
#: Interval assumed when the sensor does not tell its communication interval.
DEFAULT_INTERVAL_MIN: Final = 5

ANNUNCIATIONS: Final[Mapping[SensorStatusAnnunciation, Annunciation]] = {
    SensorStatusAnnunciation.SESSION_STOPPED: Annunciation.SESSION_STOPPED,
    SensorStatusAnnunciation.DEVICE_BATTERY_LOW: Annunciation.BATTERY_LOW,
    SensorStatusAnnunciation.SENSOR_TYPE_INCORRECT: Annunciation.SENSOR_MALFUNCTION,
    SensorStatusAnnunciation.SENSOR_MALFUNCTION: Annunciation.SENSOR_MALFUNCTION,
    SensorStatusAnnunciation.GENERAL_DEVICE_FAULT: Annunciation.DEVICE_FAULT,
    SensorStatusAnnunciation.TIME_SYNCHRONIZATION_REQUIRED: Annunciation.TIME_FAULT,
    SensorStatusAnnunciation.CALIBRATION_RECOMMENDED: Annunciation.CALIBRATION_RECOMMENDED,
    SensorStatusAnnunciation.CALIBRATION_REQUIRED: Annunciation.CALIBRATION_REQUIRED,
    SensorStatusAnnunciation.SENSOR_TEMPERATURE_TOO_HIGH: Annunciation.TEMPERATURE_TOO_HIGH,
    SensorStatusAnnunciation.SENSOR_TEMPERATURE_TOO_LOW: Annunciation.TEMPERATURE_TOO_LOW,
    SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS:
        Annunciation.BELOW_DEVICE_RANGE,
    SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS:
        Annunciation.ABOVE_DEVICE_RANGE,
}


@dataclass(frozen=True, slots=True)
class CgmSession:
    """What the sensor says about its session, read at every sync."""

    e2e: bool
    start_local: dt.datetime
    start_utc: dt.datetime
    utc_offset: dt.timedelta | None
    run_time_hours: int | None
    status: CgmStatus | None

    @property
    def key(self) -> str:
        """Identifies the session in the sync state."""
        return self.start_utc.isoformat()


def split_records(data: bytes, e2e: bool) -> tuple[list[CgmMeasurementRecord | None], list[str]]:
    """The records of one CGM Measurement notification in order, ``None`` for each record
    that failed its check, plus what went wrong.

    Each record starts with its Size (CGMS 1.0.1 §3.1), so a record with a bad E2E-CRC is
    skipped without losing the ones after it; a Size that cannot be right ends the
    notification there.
    """
    out: list[CgmMeasurementRecord | None] = []
    problems: list[str] = []
    offset = 0
    while offset < len(data):
        size = data[offset]
        if size < CGM_RECORD_MIN_SIZE or offset + size > len(data):
            problems.append(f"CGM Measurement: {len(data) - offset} octet(s) unreadable "
                            f"(record Size {size} at offset {offset})")
            out.append(None)
            break
        chunk = data[offset:offset + size]
        try:
            out.append(CgmMeasurementRecord.from_bytes(chunk, e2e))
        except CrcMismatch:
            out.append(None)
            problems.append("CGM Measurement record rejected: E2E-CRC mismatch")
        except ProtocolError as exc:
            out.append(None)
            problems.append(f"CGM Measurement record rejected: {exc}")
        offset += size
    return out, problems


def summarize(notices: Sequence[str]) -> list[str]:
    """Repeated notices once each, with how often they occurred."""
    counts: dict[str, int] = {}
    for notice in notices:
        counts[notice] = counts.get(notice, 0) + 1
    return [text if n == 1 else f"{text} (×{n})" for text, n in counts.items()]


def _finite(value: SFloat | None) -> float | None:
    return float(value) if value is not None and value.is_finite else None


def to_reading(record: CgmMeasurementRecord, session: CgmSession,
               device_id: str) -> CgmReading:
    """One canonical CGM value; out-of-range results (SFLOAT ±INF with Warning bits 22/23)
    carry no number and the matching annunciation."""
    annunciations = {a for bit, a in ANNUNCIATIONS.items() if bit in record.annunciation}
    glucose = _finite(record.glucose)
    if glucose is None and record.glucose.is_finite is False:
        if float(record.glucose) > 0:
            annunciations.add(Annunciation.ABOVE_DEVICE_RANGE)
        elif float(record.glucose) < 0:
            annunciations.add(Annunciation.BELOW_DEVICE_RANGE)
    quality = _finite(record.quality)
    if quality is not None and not 0 <= quality <= 100:
        quality = None
    offset = dt.timedelta(minutes=record.time_offset_minutes)
    return CgmReading(
        device_id=device_id, time=session.start_utc + offset,
        device_time=session.start_local + offset, glucose_mg_dl=glucose,
        trend_mg_dl_per_min=_finite(record.trend), quality_percent=quality,
        annunciations=frozenset(annunciations), session_start=session.start_utc,
        time_offset_min=record.time_offset_minutes)


@dataclass(slots=True)
class _Batch:
    readings: list[CgmReading] = field(default_factory=list)
    #: Highest Time Offset before the first rejected record (the state may advance to it).
    complete_through: int | None = None
    rejected: int = 0
    notices: list[str] = field(default_factory=list)


def count_from_time_offset(time_offset: int) -> RacpRequest:
    """``04 03 01 <u16>``: number of CGM records with Time Offset ≥ N."""
    return RacpRequest(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
                       RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                       RacpFilter(CgmFilterType.TIME_OFFSET, minimum=time_offset))


class CgmDriver(RacpClient):
    """A CGM sensor over CGMS. State: ``{"session_start": iso UTC, "last_offset": int}``."""

    KIND = DeviceKind.CGM
    SERVICE_UUID = CGM_SERVICE_UUID
    DATA_TAGS = (MEASUREMENT,)

    session: CgmSession | None = None

    async def _on_ready(self) -> None:
        await self._subscribe(CgmCharacteristic.CGM_MEASUREMENT, MEASUREMENT, indicate=False)
        self._racp = await self._subscribe(RACP_UUID, RACP, indicate=True)
        await self._subscribe(CgmCharacteristic.CGM_SPECIFIC_OPS_CONTROL_POINT, SOCP,
                              indicate=True, required=False)

    async def read_session(self) -> tuple[CgmSession, list[str]]:
        """Feature, Session Start Time, Session Run Time and Status (CGMS 1.0.1 §3.2–§3.5)."""
        await self.connect()
        notices: list[str] = []
        central = self.central
        try:
            feature = CgmFeature.from_bytes(await central.read(
                self._char(CgmCharacteristic.CGM_FEATURE)))
            e2e = feature.e2e_crc_supported
            start = CgmSessionStartTime.from_bytes(await central.read(
                self._char(CgmCharacteristic.CGM_SESSION_START_TIME)), e2e)
            start_local = start.start_time.to_datetime()
        except ProtocolError as exc:
            raise DeviceError(f"CGM session unreadable: {exc}", self.address) from exc
        offset: dt.timedelta | None
        try:
            offset = start.utc_offset
        except ProtocolError:
            offset = None
            notices.append("CGM Session Start Time has no known time zone: taken as UTC")
        start_utc = (start_local - (offset or dt.timedelta(0))).replace(tzinfo=dt.UTC)
        run_time: int | None = None
        run_char = central.find(CgmCharacteristic.CGM_SESSION_RUN_TIME, CGM_SERVICE_UUID)
        if run_char is not None:
            try:
                run_time = CgmSessionRunTime.from_bytes(await central.read(run_char), e2e).hours
            except ProtocolError as exc:
                notices.append(f"CGM Session Run Time unreadable: {exc}")
        status: CgmStatus | None = None
        status_char = central.find(CgmCharacteristic.CGM_STATUS, CGM_SERVICE_UUID)
        if status_char is not None:
            try:
                status = CgmStatus.from_bytes(await central.read(status_char), e2e)
            except ProtocolError as exc:
                notices.append(f"CGM Status unreadable: {exc}")
        if status is not None and SensorStatusAnnunciation.SESSION_STOPPED in status.status:
            notices.append("the sensor session is stopped")
        session = CgmSession(e2e, start_local, start_utc, offset, run_time, status)
        self.session = session
        return session, notices

    async def communication_interval(self) -> int | None:
        """The sensor's communication interval in minutes through the SOCP "get"
        (CGMS 1.0.1 §3.7); ``None`` when the sensor has no SOCP or does not answer."""
        await self.connect()
        socp = self.central.find(CgmCharacteristic.CGM_SPECIFIC_OPS_CONTROL_POINT,
                                 CGM_SERVICE_UUID)
        if socp is None or not self.central.is_subscribed(socp):
            return None
        e2e = self.session.e2e if self.session is not None else False
        self.inbox.clear(SOCP)
        await self.central.write(socp, bytes(CgmSocp(
            SocpOpCode.GET_COMMUNICATION_INTERVAL, None, e2e)))
        try:
            answer = CgmSocp.from_bytes(await self.inbox.next(
                SOCP, self.options.timeout_s, "SOCP communication interval"), e2e)
        except (ProtocolError, DeviceTimeout) as exc:
            logger.info("%s: no communication interval: %s", self.address, exc)
            return None
        if answer.op_code is SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE and isinstance(
                answer.operand, int):
            return answer.operand
        return None

    def _decode(self, values: Sequence[bytes], session: CgmSession,
                info: DeviceInfo) -> _Batch:
        batch = _Batch()
        seen: set[int] = set()
        stopped = False
        for raw in values:
            records, problems = split_records(raw, session.e2e)
            batch.notices.extend(problems)
            for record in records:
                reading: CgmReading | None = None
                if record is not None:
                    try:
                        reading = to_reading(record, session, info.device_id)
                    except RecordError as exc:
                        batch.notices.append(f"CGM value rejected: {exc}")
                if reading is None or record is None:
                    batch.rejected += 1
                    stopped = True
                    continue
                if record.time_offset_minutes in seen:
                    continue
                seen.add(record.time_offset_minutes)
                batch.readings.append(reading)
                if not stopped:
                    batch.complete_through = max(batch.complete_through or 0,
                                                 record.time_offset_minutes)
        batch.readings.sort(key=lambda r: r.time_offset_min or 0)
        return batch

    async def _clock(self, session: CgmSession) -> ClockObservation | None:
        clock = await read_clock(self.central)
        if clock is not None or session.status is None:
            return clock
        # No CTS: the sensor's own "now" is the session start plus the Status time offset
        # (CGMS 1.0.1 §3.3), good to a minute.
        return ClockObservation(
            device_time=session.start_local + session.status.time_offset,
            gateway_time=dt.datetime.now(dt.UTC), source=ClockSource.CGM_SESSION,
            utc_offset=session.utc_offset)

    async def sync(self, state: Mapping[str, Any]) -> SyncResult:
        await self.connect()
        info = await self.read_info()
        session, notices = await self.read_session()
        clock = await self._clock(session)
        same_session = state.get("session_start") == session.key
        last = state_int(state, "last_offset", MAX_TIME_OFFSET) if same_session else None
        if state.get("session_start") is not None and not same_session:
            notices.append(f"new sensor session started {session.key}: reading all its values")
        base_state: dict[str, Any] = (dict(state) if same_session
                                      else {"session_start": session.key})
        if last is not None and last >= MAX_TIME_OFFSET:
            return SyncResult(info, (), base_state, clock, tuple(notices))
        if last is None:
            expected = await self._count(count_all())
            request = report_all()
        else:
            expected = await self._count(count_from_time_offset(last + 1))
            request = report_from_time_offset(last + 1)
        if expected == 0:
            # Nothing stored; values notified live meanwhile are still taken.
            batch = self._decode(self.inbox.take_all(MEASUREMENT), session, info)
            return self._result(info, batch, base_state, clock, notices, last=last)
        try:
            answer = await self._racp_exchange(request, "RACP report")
        except DeviceDisconnected as exc:
            batch = self._decode(self.inbox.take_all(MEASUREMENT), session, info)
            raise TransferInterrupted(
                f"link lost after {len(batch.readings)} value(s): {exc}",
                SyncResult(info, tuple(batch.readings), dict(state), clock,
                           (*notices, *batch.notices)), self.address) from exc
        except DeviceTimeout:
            await self._abort_quietly()
            raise
        self._check_report_answer(answer)
        batch = self._decode(self.inbox.take_all(MEASUREMENT), session, info)
        got = len(batch.readings) + batch.rejected
        if expected is not None and got < expected:
            notices.append(f"sensor announced {expected} value(s), {got} arrived")
        return self._result(info, batch, base_state, clock, notices, last=last)

    @staticmethod
    def _result(info: DeviceInfo, batch: _Batch, base_state: dict[str, Any],
                clock: ClockObservation | None, notices: list[str], *,
                last: int | None) -> SyncResult:
        readings = [r for r in batch.readings
                    if last is None or (r.time_offset_min or 0) > last]
        state = dict(base_state)
        through = batch.complete_through
        if through is not None and (last is None or through > last):
            state["last_offset"] = through
        return SyncResult(info, tuple(readings), state, clock,
                          (*notices, *summarize(batch.notices)))

    async def listen(self, state: Mapping[str, Any]) -> AsyncIterator[SyncResult]:
        """Backfill from ``state``, then yield the live values as they are notified, each
        batch with the state that covers it. Ends with :class:`DeviceDisconnected` when the
        link drops (call again with the last state to backfill and go on)."""
        result = await self.sync(state)
        yield result
        current: Mapping[str, Any] = result.state
        interval = await self.communication_interval() or DEFAULT_INTERVAL_MIN
        # Values missing between two notifications: more than one interval plus slack.
        tolerance = interval + max(1, interval // 2)
        while True:
            first = await self.inbox.next(MEASUREMENT, None, "live CGM values")
            values = [first, *self.inbox.take_all(MEASUREMENT)]
            session = self.session
            info = await self.read_info()
            if session is None or current.get("session_start") != session.key:
                result = await self.sync(current)
                yield result
                current = result.state
                continue
            last = state_int(current, "last_offset", MAX_TIME_OFFSET)
            batch = self._decode(values, session, info)
            offsets = [r.time_offset_min or 0 for r in batch.readings]
            restarted = last is not None and any(o < last for o in offsets) and not all(
                o <= last for o in offsets)
            gap = last is None or (bool(offsets) and min(
                (o for o in offsets if o > last), default=last) > last + tolerance)
            if batch.rejected or gap or restarted:
                # Values were missed or damaged, or the session restarted: the RACP backfill
                # from the last good value covers them (the sensor stores what it notified)
                # and re-reads the session.
                result = await self.sync(current)
            else:
                result = self._result(info, batch, dict(current), None, [], last=last)
            if result.records or result.notices:
                yield result
            current = result.state
