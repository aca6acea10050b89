"""A virtual CGM sensor: Continuous Glucose Monitoring Service (CGMS 1.0.1) peripheral with
the CGMP 1.0.1 procedures, plus DIS, BAS and CTS.

Feeding: pass the sensor's history as ``records`` (canonical
:class:`~bridge.records.CgmReading`, oldest first) and call :meth:`add_record` for each new
value as the simulated sensor produces it (every communication interval, in real or
accelerated time). A new value is notified at once to every central that enabled CGM
Measurement notifications (CGMS 1.0.1 §3.1). Values produced while a bonded central was
away are sent to it when it subscribes again, several records per notification as far as the
ATT MTU allows (CGMS 1.0.1 §3.1: a notification may carry more than one record); a collector
fetches older history with the RACP.

Device side:

* a session: start instant from the records' ``session_start`` (else the first record's
  time, else ``session_start``), shown in the Session Start Time as the device's local
  time with its time zone and DST offset (CGMS 1.0.1 §3.4); each value's Time Offset is
  its minutes since that start (``CgmReading.time_offset_min`` when the model set it);
* a record memory of ``capacity`` values, oldest dropped when full;
* glucose at 1 mg/dL, trend at 0.1 (mg/dL)/min and quality at 1 % resolution;
  values out of the sensor's range (no number, ``ABOVE_DEVICE_RANGE``/``BELOW_DEVICE_RANGE``
  or ``RESULT_TOO_HIGH``/``RESULT_TOO_LOW``) are sent as SFLOAT +INF/−INF with Warning bit
  23/22 "result higher/lower than the device can process";
* E2E-CRC on or off (``e2e_crc``): when on, the CGM Feature says so and every CGM value
  carries the CRC (the codecs append it), and SOCP writes must carry a valid one.

RACP: report, delete, abort, count with All, ≤, ≥, range, First, Last; filter type Time
Offset (0x01) only, the one CGMS defines (CGMS 1.0.1 §3.6.2).

SOCP: get communication interval and get alert levels are answered; set communication
interval, set alert levels, reset device specific alert, start and stop session are carried
out and logged in ``control_point_log`` as a real sensor would; calibration and anything else
is answered "op code not supported".
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bumble.att import ATT_Error
from bumble.device import Connection
from bumble.gatt import Characteristic, Service

from bridge.errors import CrcMismatch, ProtocolError, TruncatedFrame
from bridge.protocols.cgms import (
    CGM_SERVICE_UUID,
    CgmCharacteristic,
    CgmFeature,
    CgmFeatureBits,
    CgmMeasurementRecord,
    CgmSampleLocation,
    CgmSampleType,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmSocp,
    CgmStatus,
    SensorStatusAnnunciation,
    SocpOpCode,
    SocpResponse,
    SocpResponseCode,
)
from bridge.protocols.date_time import DateTime
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.racp import CgmFilterType, FilterValue, RacpService
from bridge.records import Annunciation, CgmReading
from simulators.ble.common import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    Appearance,
    HciTransport,
    Indications,
    PeripheralConfig,
    RacpServer,
    VirtualPeripheral,
    uuid16,
)

#: Ten days of five-minute values.
DEFAULT_CAPACITY = 2880
#: Expected session length in hours (CGMS 1.0.1 §3.5); a 14-day sensor.
DEFAULT_RUN_TIME_HOURS = 14 * 24
#: ATT Application errors of CGMS 1.0.1 (§1.6): a written value lacks its E2E-CRC, or it
#: does not match.
ATT_MISSING_CRC = 0x80
ATT_INVALID_CRC = 0x81

_ANNUNCIATION_BITS: dict[Annunciation, SensorStatusAnnunciation] = {
    Annunciation.SESSION_STOPPED: SensorStatusAnnunciation.SESSION_STOPPED,
    Annunciation.BATTERY_LOW: SensorStatusAnnunciation.DEVICE_BATTERY_LOW,
    Annunciation.SENSOR_MALFUNCTION: SensorStatusAnnunciation.SENSOR_MALFUNCTION,
    Annunciation.DEVICE_FAULT: SensorStatusAnnunciation.GENERAL_DEVICE_FAULT,
    Annunciation.TIME_FAULT: SensorStatusAnnunciation.TIME_SYNCHRONIZATION_REQUIRED,
    Annunciation.CALIBRATION_RECOMMENDED: SensorStatusAnnunciation.CALIBRATION_RECOMMENDED,
    Annunciation.CALIBRATION_REQUIRED: SensorStatusAnnunciation.CALIBRATION_REQUIRED,
    Annunciation.TEMPERATURE_TOO_HIGH: SensorStatusAnnunciation.SENSOR_TEMPERATURE_TOO_HIGH,
    Annunciation.TEMPERATURE_TOO_LOW: SensorStatusAnnunciation.SENSOR_TEMPERATURE_TOO_LOW,
    Annunciation.BELOW_DEVICE_RANGE:
        SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS,
    Annunciation.RESULT_TOO_LOW: SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS,
    Annunciation.ABOVE_DEVICE_RANGE:
        SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS,
    Annunciation.RESULT_TOO_HIGH:
        SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS,
}

_LOW = frozenset({Annunciation.BELOW_DEVICE_RANGE, Annunciation.RESULT_TOO_LOW})

#: What this sensor supports (CGMS 1.0.1 §3.2), E2E-CRC added by configuration.
SENSOR_FEATURES = (CgmFeatureBits.PATIENT_HIGH_LOW_ALERTS | CgmFeatureBits.HYPO_ALERTS
                   | CgmFeatureBits.HYPER_ALERTS
                   | CgmFeatureBits.RATE_OF_INCREASE_DECREASE_ALERTS
                   | CgmFeatureBits.SENSOR_MALFUNCTION_DETECTION
                   | CgmFeatureBits.SENSOR_TEMPERATURE_HIGH_LOW_DETECTION
                   | CgmFeatureBits.SENSOR_RESULT_HIGH_LOW_DETECTION
                   | CgmFeatureBits.LOW_BATTERY_DETECTION
                   | CgmFeatureBits.GENERAL_DEVICE_FAULT
                   | CgmFeatureBits.CGM_TREND_INFORMATION | CgmFeatureBits.CGM_QUALITY)

#: SOCP "get" op code → (its response op code, the alert level it reads).
_ALERT_GETS: dict[SocpOpCode, tuple[SocpOpCode, str]] = {
    SocpOpCode.GET_PATIENT_HIGH_ALERT_LEVEL:
        (SocpOpCode.PATIENT_HIGH_ALERT_LEVEL_RESPONSE, "patient_high"),
    SocpOpCode.GET_PATIENT_LOW_ALERT_LEVEL:
        (SocpOpCode.PATIENT_LOW_ALERT_LEVEL_RESPONSE, "patient_low"),
    SocpOpCode.GET_HYPO_ALERT_LEVEL: (SocpOpCode.HYPO_ALERT_LEVEL_RESPONSE, "hypo"),
    SocpOpCode.GET_HYPER_ALERT_LEVEL: (SocpOpCode.HYPER_ALERT_LEVEL_RESPONSE, "hyper"),
    SocpOpCode.GET_RATE_OF_DECREASE_ALERT_LEVEL:
        (SocpOpCode.RATE_OF_DECREASE_ALERT_LEVEL_RESPONSE, "rate_of_decrease"),
    SocpOpCode.GET_RATE_OF_INCREASE_ALERT_LEVEL:
        (SocpOpCode.RATE_OF_INCREASE_ALERT_LEVEL_RESPONSE, "rate_of_increase"),
}
_ALERT_SETS: dict[SocpOpCode, str] = {
    SocpOpCode.SET_PATIENT_HIGH_ALERT_LEVEL: "patient_high",
    SocpOpCode.SET_PATIENT_LOW_ALERT_LEVEL: "patient_low",
    SocpOpCode.SET_HYPO_ALERT_LEVEL: "hypo",
    SocpOpCode.SET_HYPER_ALERT_LEVEL: "hyper",
    SocpOpCode.SET_RATE_OF_DECREASE_ALERT_LEVEL: "rate_of_decrease",
    SocpOpCode.SET_RATE_OF_INCREASE_ALERT_LEVEL: "rate_of_increase",
}


@dataclass(frozen=True, slots=True)
class StoredCgmValue:
    """One value in the sensor's memory: its Time Offset in the session and the reading."""

    time_offset_min: int
    reading: CgmReading


def _quarter_hours(delta: dt.timedelta | None) -> int:
    return 0 if delta is None else int(delta / dt.timedelta(minutes=15))


class CgmSensorPeripheral(VirtualPeripheral):
    """The virtual CGM sensor (CGMS 1.0.1 + CGMP 1.0.1)."""

    APPEARANCE = Appearance.CONTINUOUS_GLUCOSE_MONITOR
    ADVERTISED_SERVICES = (CGM_SERVICE_UUID,)

    def __init__(self, config: PeripheralConfig, transport: HciTransport, *,
                 records: Iterable[CgmReading] = (),
                 session_start: dt.datetime | None = None,
                 e2e_crc: bool = False,
                 communication_interval_min: int = 5,
                 capacity: int = DEFAULT_CAPACITY,
                 run_time_hours: int = DEFAULT_RUN_TIME_HOURS,
                 max_records_per_notification: int = 8,
                 record_interval_s: float = 0.0) -> None:
        super().__init__(config, transport)
        if capacity <= 0 or max_records_per_notification <= 0:
            raise ValueError("capacity and max_records_per_notification must be positive")
        self.e2e_crc = e2e_crc
        self.communication_interval_min = communication_interval_min
        self.run_time_hours = run_time_hours
        self.max_records_per_notification = max_records_per_notification
        self.record_interval_s = record_interval_s
        self.capacity = capacity
        self.memory: deque[StoredCgmValue] = deque(maxlen=capacity)
        self.session_start: dt.datetime | None = (
            None if session_start is None else session_start.astimezone(dt.UTC))
        self.session_running = True
        self.alert_levels: dict[str, float] = {
            "patient_high": 250.0, "patient_low": 70.0, "hypo": 55.0, "hyper": 300.0,
            "rate_of_decrease": 2.0, "rate_of_increase": 2.0}
        self._received = 0
        self._renumbered_start: dt.datetime | None = None
        # Values a bonded central has not received yet, by peer address (live backlog).
        self._pending: dict[str, list[StoredCgmValue]] = {}
        self._flush_tasks: dict[str, asyncio.Task[None]] = {}
        self.racp: RacpServer[StoredCgmValue] | None = None
        self.measurement_characteristic: Characteristic[bytes] | None = None
        self.socp_characteristic: Characteristic[bytes] | None = None
        self.socp_indications: Indications | None = None
        for reading in records:
            self.add_record(reading)

    # --- feeding ------------------------------------------------------------------------

    def add_record(self, reading: CgmReading) -> StoredCgmValue:
        """Store a new sensor value and notify it to subscribed centrals."""
        index = self._received
        self._received += 1
        if self.faults.sequence_reset_due(index):
            # Memory cleared and a new session begun: time offsets restart at 0.
            self.memory.clear()
            self._renumbered_start = reading.time.replace(second=0, microsecond=0)
            self.session_start = self._renumbered_start
        if self.session_start is None:
            self.session_start = reading.session_start or reading.time
        if (reading.time_offset_min is not None and self._renumbered_start is None
                and reading.session_start in (None, self.session_start)):
            offset = reading.time_offset_min
        else:
            offset = int((reading.time - self.session_start).total_seconds() // 60)
        stored = StoredCgmValue(max(0, min(offset, 0xFFFF)), reading)
        self.memory.append(stored)
        for backlog in self._pending.values():
            backlog.append(stored)
            if len(backlog) > self.capacity:
                del backlog[0]
        if self.device is not None:
            for connection in list(self.connections):
                self._schedule_flush(connection)
        return stored

    # --- encoding -----------------------------------------------------------------------

    def annunciation(self, reading: CgmReading | None) -> SensorStatusAnnunciation:
        nominal = frozenset() if reading is None else reading.annunciations
        bits = SensorStatusAnnunciation(0)
        for annunciation in self.faults.annunciations(nominal):
            bits |= _ANNUNCIATION_BITS.get(annunciation, SensorStatusAnnunciation(0))
        if not self.session_running:
            bits |= SensorStatusAnnunciation.SESSION_STOPPED
        return bits

    def record(self, stored: StoredCgmValue) -> CgmMeasurementRecord:
        reading = stored.reading
        annunciation = self.annunciation(reading)
        if reading.glucose_mg_dl is None:
            low = bool(reading.annunciations & _LOW)
            glucose = SFloat.special_value(Special.NEGATIVE_INFINITY if low
                                           else Special.POSITIVE_INFINITY)
            annunciation |= (
                SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS if low
                else SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS)
        else:
            glucose = SFloat.from_value(round(reading.glucose_mg_dl))
        trend = (None if reading.trend_mg_dl_per_min is None
                 else SFloat.from_value(round(reading.trend_mg_dl_per_min, 1)))
        quality = (None if reading.quality_percent is None
                   else SFloat.from_value(round(reading.quality_percent)))
        return CgmMeasurementRecord.create(glucose, stored.time_offset_min,
                                           annunciation=annunciation, trend=trend,
                                           quality=quality, e2e_crc=self.e2e_crc)

    def record_frame(self, stored: StoredCgmValue) -> bytes:
        """One encoded record, damaged when the corruption fault strikes."""
        frame = bytes(self.record(stored))
        if self.faults.should_corrupt():
            if self.e2e_crc:
                # A byte after Size and Flags and before the CRC: the CRC check fails.
                return self.faults.corrupt(frame, 2, len(frame) - 2)
            # Without a CRC: a Size field that runs past the notification.
            return self.faults.corrupt(frame, 0, 1, mask=0x80)
        return frame

    def pack(self, connection: Connection, frames: Sequence[bytes]) -> list[bytes]:
        """Group record frames into notifications within ATT_MTU − 3 (CGMS 1.0.1 §3.1)."""
        limit = self.max_payload(connection)
        out: list[bytes] = []
        current = b""
        count = 0
        for frame in frames:
            if current and (len(current) + len(frame) > limit
                            or count >= self.max_records_per_notification):
                out.append(current)
                current, count = b"", 0
            current += frame
            count += 1
        if current:
            out.append(current)
        return out

    def session_start_time(self) -> CgmSessionStartTime:
        start = self.session_start or self.true_now()
        local = self.faults.device_time(self.nominal_device_time(start), start)
        clock = self.config.clock
        time_zone = dst = 0
        if clock is not None:
            aware = start.astimezone(clock.zone.tzinfo)
            dst_delta = aware.dst() or dt.timedelta(0)
            time_zone = _quarter_hours((aware.utcoffset() or dt.timedelta(0)) - dst_delta)
            dst = _quarter_hours(dst_delta)
        return CgmSessionStartTime(DateTime.from_datetime(local), time_zone, dst, self.e2e_crc)

    def current_time_offset(self) -> int:
        if self.session_start is None:
            return 0
        minutes = int((self.true_now() - self.session_start).total_seconds() // 60)
        return max(0, min(minutes, 0xFFFF))

    def status(self) -> CgmStatus:
        latest = self.memory[-1].reading if self.memory else None
        return CgmStatus(self.current_time_offset(), self.annunciation(latest), self.e2e_crc)

    # --- GATT ---------------------------------------------------------------------------

    def build_services(self) -> Sequence[Service]:
        read = Characteristic.Properties.READ
        self.measurement_characteristic = self.characteristic(
            CgmCharacteristic.CGM_MEASUREMENT, Characteristic.Properties.NOTIFY)
        features = SENSOR_FEATURES | (CgmFeatureBits.E2E_CRC if self.e2e_crc else 0)
        feature = self.characteristic(
            CgmCharacteristic.CGM_FEATURE, read,
            read=lambda _c: bytes(CgmFeature(CgmFeatureBits(features),
                                             CgmSampleType.INTERSTITIAL_FLUID,
                                             CgmSampleLocation.SUBCUTANEOUS_TISSUE)))
        status = self.characteristic(CgmCharacteristic.CGM_STATUS, read,
                                     read=lambda _c: bytes(self.status()))
        start = self.characteristic(CgmCharacteristic.CGM_SESSION_START_TIME, read,
                                    read=lambda _c: bytes(self.session_start_time()))
        run_time = self.characteristic(
            CgmCharacteristic.CGM_SESSION_RUN_TIME, read,
            read=lambda _c: bytes(CgmSessionRunTime(self.run_time_hours, self.e2e_crc)))
        self.racp = RacpServer(
            self, RacpService.CGM, records=lambda: list(self.memory),
            filter_key=self._filter_key, send_report=self._send_report,
            delete=self._delete, supported_filter_types=[CgmFilterType.TIME_OFFSET])
        self.socp_characteristic = self.characteristic(
            CgmCharacteristic.CGM_SPECIFIC_OPS_CONTROL_POINT,
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            write=self._on_socp_write)
        self.socp_indications = Indications(self, self.socp_characteristic)
        self.measurement_characteristic.on(
            Characteristic.EVENT_SUBSCRIPTION, self._on_measurement_subscription)
        return [Service(uuid16(CGM_SERVICE_UUID),
                        [self.measurement_characteristic, feature, status, start, run_time,
                         self.racp.characteristic, self.socp_characteristic])]

    def on_disconnection(self, connection: Connection) -> None:
        if self.racp is not None:
            self.racp.cancel()
        task = self._flush_tasks.pop(str(connection.peer_address), None)
        if task is not None:
            task.cancel()

    def _on_measurement_subscription(self, bearer: object, notify: bool,
                                     _indicate: bool) -> None:
        connection = next((c for c in self.connections if c is bearer), None)
        if connection is None:
            return
        key = str(connection.peer_address)
        if notify:
            # From now on this central gets every new value; what it missed while away (and
            # bonded) is sent first.
            self._pending.setdefault(key, [])
            self._schedule_flush(connection)

    def _schedule_flush(self, connection: Connection) -> None:
        key = str(connection.peer_address)
        running = self._flush_tasks.get(key)
        if running is not None and not running.done():
            return
        if not self._pending.get(key):
            return
        self._flush_tasks[key] = self.spawn(self._flush(connection, key))

    async def _flush(self, connection: Connection, key: str) -> None:
        assert self.measurement_characteristic is not None
        while connection in self.connections and self._pending.get(key):
            if not self.is_subscribed(connection, self.measurement_characteristic):
                return
            backlog = self._pending[key]
            batch, self._pending[key] = backlog, []
            frames = self._frames_with_duplicates(batch)
            for notification in self.pack(connection, frames):
                await self.notify(connection, self.measurement_characteristic, notification)
                await asyncio.sleep(self.record_interval_s)

    def _frames_with_duplicates(self, values: Sequence[StoredCgmValue]) -> list[bytes]:
        frames: list[bytes] = []
        for stored in values:
            frame = self.record_frame(stored)
            frames.append(frame)
            if self.faults.should_duplicate():
                frames.append(frame)
        return frames

    @staticmethod
    def _filter_key(stored: StoredCgmValue, _filter_type: int) -> FilterValue:
        return stored.time_offset_min

    def _delete(self, selected: Sequence[StoredCgmValue]) -> None:
        doomed = {id(s) for s in selected}
        kept = [s for s in self.memory if id(s) not in doomed]
        self.memory.clear()
        self.memory.extend(kept)

    async def _send_report(self, connection: Connection,
                           selected: Sequence[StoredCgmValue]) -> bool:
        assert self.measurement_characteristic is not None and self.racp is not None
        sent = 0
        limit = self.faults.config.disconnect_after_records
        chunk = self.max_records_per_notification
        for start in range(0, len(selected), chunk):
            part = list(selected[start:start + chunk])
            if limit is not None:
                part = part[:max(0, limit - sent)]
            for notification in self.pack(connection, self._frames_with_duplicates(part)):
                if self.racp.abort_requested or connection not in self.connections:
                    return False
                await self.notify(connection, self.measurement_characteristic, notification)
                await asyncio.sleep(self.record_interval_s)
            sent += len(part)
            if self.faults.disconnect_now(sent):
                await self.disconnect(connection)
                return False
        return True

    # --- SOCP ---------------------------------------------------------------------------

    def _on_socp_write(self, connection: Connection, value: bytes) -> None:
        data = bytes(value)
        assert self.socp_characteristic is not None
        if not self.is_subscribed(connection, self.socp_characteristic, indicate=True):
            self.log_write("socp", data, accepted=False)
            raise ATT_Error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        request: CgmSocp | None = None
        try:
            request = CgmSocp.from_bytes(data, self.e2e_crc)
        except CrcMismatch:
            self.log_write("socp", data, accepted=False)
            raise ATT_Error(ATT_INVALID_CRC) from None
        except TruncatedFrame:
            if self.e2e_crc and len(data) >= 1:
                self.log_write("socp", data, accepted=False)
                raise ATT_Error(ATT_MISSING_CRC) from None
        except ProtocolError:
            request = None
        self.spawn(self._socp_procedure(connection, data, request))

    async def _socp_respond(self, connection: Connection, reply: CgmSocp) -> None:
        assert self.socp_indications is not None
        if self.faults.should_drop():
            return
        await self.socp_indications.send(connection, bytes(reply))

    def _socp_result(self, op: SocpOpCode | int, code: SocpResponseCode) -> CgmSocp:
        return CgmSocp(SocpOpCode.RESPONSE_CODE, SocpResponse(op, code), self.e2e_crc)

    async def _socp_procedure(self, connection: Connection, data: bytes,
                              request: CgmSocp | None) -> None:
        delay = self.faults.response_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if request is None:
            # A reserved op code, or an operand of the wrong size (CGMS 1.0.1 §3.7).
            op = data[0] if data else 0
            code = (SocpResponseCode.INVALID_OPERAND if op in SocpOpCode._value2member_map_
                    else SocpResponseCode.OP_CODE_NOT_SUPPORTED)
            self.log_write("socp", data, accepted=False)
            await self._socp_respond(connection, self._socp_result(op, code))
            return
        op = request.op_code
        reply: CgmSocp
        accepted = True
        if op is SocpOpCode.GET_COMMUNICATION_INTERVAL:
            reply = CgmSocp(SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE,
                            self.communication_interval_min, self.e2e_crc)
        elif op in _ALERT_GETS:
            response_op, name = _ALERT_GETS[op]
            reply = CgmSocp(response_op, SFloat.from_value(self.alert_levels[name]),
                            self.e2e_crc)
        elif op is SocpOpCode.SET_COMMUNICATION_INTERVAL and isinstance(request.operand, int):
            self.communication_interval_min = request.operand
            reply = self._socp_result(op, SocpResponseCode.SUCCESS)
        elif op in _ALERT_SETS and isinstance(request.operand, SFloat):
            self.alert_levels[_ALERT_SETS[op]] = float(request.operand)
            reply = self._socp_result(op, SocpResponseCode.SUCCESS)
        elif op is SocpOpCode.START_SESSION:
            self.session_running = True
            self.session_start = self.true_now().replace(second=0, microsecond=0)
            self._renumbered_start = self.session_start
            self.memory.clear()
            reply = self._socp_result(op, SocpResponseCode.SUCCESS)
        elif op is SocpOpCode.STOP_SESSION:
            self.session_running = False
            reply = self._socp_result(op, SocpResponseCode.SUCCESS)
        elif op is SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT:
            reply = self._socp_result(op, SocpResponseCode.SUCCESS)
        else:
            # Calibration is not in this sensor's features; responses are not requests.
            accepted = False
            reply = self._socp_result(op, SocpResponseCode.OP_CODE_NOT_SUPPORTED)
        self.log_write("socp", data, accepted=accepted)
        await self._socp_respond(connection, reply)
