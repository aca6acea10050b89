"""Glucose Profile client (GLP 1.0 over GLS 1.0): a blood glucose meter's stored readings.

A sync follows the GLP record transfer (GLS 1.0 §3.4): subscribe to Glucose Measurement
and Measurement Context notifications and to RACP indications, ask with the RACP, receive
the records, finish on the RACP response.

* Incremental: with a stored ``last_sequence`` L the meter is asked for records with
  sequence number ≥ L + 1 (``01 03 01 <L+1>``); without state for all (``01 01``).
* Sequence reset / memory cleared: the meter is first asked how many records it holds
  numbered ≥ L (Report Number of Stored Records). None means its newest sequence number is
  below L — it was reset, or its memory cleared — and everything is read again, with a
  notice. The number of records announced for the transfer is compared with what arrived.
  A reset followed by more than L new readings before the next sync cannot be told apart
  from normal growth by sequence numbers alone.
* A Measurement Context (GLS 1.0 §3.2) is merged into the measurement with the same
  sequence number (its meal relation).
* The sync state advances only over records read completely: on a lost link the records
  read so far come back in :class:`~bridge.devices.device_information.TransferInterrupted`
  with the old state, and a record that fails to decode stops the state before it.
* Clock: CTS Current Time (+ Local Time Information) read at every sync.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.devices.base import (
    ClockObservation,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.device_information import (
    BleDriver,
    TransferInterrupted,
    lookup,
    provisional_utc,
    read_clock,
    state_int,
)
from bridge.devices.gatt import ATT_PROCEDURE_ALREADY_IN_PROGRESS, AttError, GattCharacteristic
from bridge.errors import ProtocolError
from bridge.protocols.gls import (
    GLUCOSE_SERVICE_UUID,
    GlsCharacteristic,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSampleType,
    Meal,
    SampleLocation,
    SensorStatusAnnunciation,
)
from bridge.protocols.mder_float import Special
from bridge.protocols.racp import (
    RACP_UUID,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    abort,
    count_all,
    count_from_sequence,
    parse_gls_racp,
    report_all,
    report_from_sequence,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceInfo,
    DeviceKind,
    MealContext,
    RecordError,
    SampleType,
    TimeQuality,
)
from bridge.records import SampleLocation as CanonicalLocation

logger = logging.getLogger(__name__)

MEASUREMENT: Final = "measurement"
CONTEXT: Final = "context"
RACP: Final = "racp"
_DATA_TAGS: Final = (MEASUREMENT, CONTEXT)
#: GLS sequence numbers are uint16 (GLS 1.0 §3.1.2).
MAX_SEQUENCE: Final = 0xFFFF

ANNUNCIATIONS: Final[Mapping[SensorStatusAnnunciation, Annunciation]] = {
    SensorStatusAnnunciation.DEVICE_BATTERY_LOW: Annunciation.BATTERY_LOW,
    SensorStatusAnnunciation.SENSOR_MALFUNCTION: Annunciation.SENSOR_MALFUNCTION,
    SensorStatusAnnunciation.SAMPLE_SIZE_INSUFFICIENT: Annunciation.SAMPLE_SIZE_INSUFFICIENT,
    SensorStatusAnnunciation.STRIP_INSERTION_ERROR: Annunciation.STRIP_INSERTION_ERROR,
    SensorStatusAnnunciation.STRIP_TYPE_INCORRECT: Annunciation.STRIP_TYPE_INCORRECT,
    SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS: Annunciation.RESULT_TOO_HIGH,
    SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS: Annunciation.RESULT_TOO_LOW,
    SensorStatusAnnunciation.TEMPERATURE_TOO_HIGH: Annunciation.TEMPERATURE_TOO_HIGH,
    SensorStatusAnnunciation.TEMPERATURE_TOO_LOW: Annunciation.TEMPERATURE_TOO_LOW,
    SensorStatusAnnunciation.READ_INTERRUPTED_STRIP_PULLED_TOO_SOON:
        Annunciation.READ_INTERRUPTED,
    SensorStatusAnnunciation.GENERAL_DEVICE_FAULT: Annunciation.DEVICE_FAULT,
    SensorStatusAnnunciation.TIME_FAULT: Annunciation.TIME_FAULT,
}

LOCATIONS: Final[Mapping[SampleLocation, CanonicalLocation]] = {
    SampleLocation.FINGER: CanonicalLocation.FINGER,
    SampleLocation.ALTERNATE_SITE_TEST: CanonicalLocation.ALTERNATE_SITE,
    SampleLocation.EARLOBE: CanonicalLocation.EARLOBE,
    SampleLocation.CONTROL_SOLUTION: CanonicalLocation.CONTROL_SOLUTION,
    SampleLocation.NOT_AVAILABLE: CanonicalLocation.NOT_AVAILABLE,
}

MEALS: Final[Mapping[Meal, MealContext]] = {
    Meal.PREPRANDIAL: MealContext.PREPRANDIAL,
    Meal.POSTPRANDIAL: MealContext.POSTPRANDIAL,
    Meal.FASTING: MealContext.FASTING,
    Meal.CASUAL: MealContext.CASUAL,
    Meal.BEDTIME: MealContext.BEDTIME,
}


def to_reading(measurement: GlucoseMeasurement, context: GlucoseMeasurementContext | None,
               device_id: str, *, utc_offset: dt.timedelta | None,
               received: dt.datetime) -> BloodGlucoseReading:
    """One canonical reading from a Glucose Measurement and its Context.

    ``device_time`` is Base Time + Time Offset (GLS 1.0 §3.1.3–§3.1.4); when that is unknown
    (parts of the Base Time unknown, offset overrun) the reading is stamped with the time it
    was ``received`` and marked ``DEVICE_TIME_UNKNOWN``. HI/LO results (SFLOAT ±INF, or the
    Sensor Status "result higher/lower than the device can process" bits, §3.1.7) carry no
    number and the matching annunciation.
    """
    annunciations: set[Annunciation] = set()
    status = measurement.sensor_status
    if status is not None:
        annunciations.update(a for bit, a in ANNUNCIATIONS.items() if bit in status)
    mg_dl: float | None = None
    concentration = measurement.concentration
    if concentration is not None:
        special = concentration.special
        if special is Special.POSITIVE_INFINITY:
            annunciations.add(Annunciation.RESULT_TOO_HIGH)
        elif special is Special.NEGATIVE_INFINITY:
            annunciations.add(Annunciation.RESULT_TOO_LOW)
        elif special is None:
            mg_dl = float(measurement.glucose_mg_dl())
    sample_type = SampleType.CAPILLARY_WHOLE_BLOOD
    location = CanonicalLocation.FINGER
    if isinstance(measurement.sample_type, GlucoseSampleType):
        sample_type = SampleType[measurement.sample_type.name]
    elif measurement.sample_type is not None:
        sample_type = SampleType.UNDETERMINED_WHOLE_BLOOD  # a reserved Type code
    if measurement.sample_location is not None:
        location = (lookup(LOCATIONS, measurement.sample_location)
                    or CanonicalLocation.NOT_AVAILABLE)
    if (sample_type is SampleType.CONTROL_SOLUTION
            or location is CanonicalLocation.CONTROL_SOLUTION):
        # GLS 1.0 §3.1.6: control solution is a Type and a Sample Location; either marks a
        # reading that is no patient value.
        sample_type, location = SampleType.CONTROL_SOLUTION, CanonicalLocation.CONTROL_SOLUTION
    meal = None
    if context is not None and context.meal is not None:
        meal = lookup(MEALS, context.meal)
    quality: frozenset[TimeQuality] = frozenset()
    try:
        device_time: dt.datetime | None = measurement.time()
    except ProtocolError:
        device_time = None
    if device_time is None:
        time = received
        quality = frozenset({TimeQuality.DEVICE_TIME_UNKNOWN})
    else:
        time = provisional_utc(device_time, utc_offset)
    return BloodGlucoseReading(
        device_id=device_id, time=time, sequence=measurement.sequence_number,
        device_time=device_time, time_quality=quality, glucose_mg_dl=mg_dl,
        sample_type=sample_type, sample_location=location, meal=meal,
        annunciations=frozenset(annunciations))


@dataclass(slots=True)
class _Transfer:
    """What one RACP report delivered, in arrival order."""

    readings: list[BloodGlucoseReading] = field(default_factory=list)
    rejected: int = 0
    #: Sequence number of the last reading before the first rejected frame (or of the last
    #: reading when none was rejected): the state may advance to it.
    complete_through: int | None = None
    notices: list[str] = field(default_factory=list)


class RacpClient(BleDriver):
    """The client side of the Record Access Control Point shared by GLS and CGMS (GLS 1.0
    §3.4, CGMS 1.0.1 §3.6): requests, their answers, counts and abort. Records arrive on the
    inbox tags in ``DATA_TAGS`` meanwhile."""

    DATA_TAGS: tuple[str, ...] = ()

    _racp: GattCharacteristic | None = None

    async def _racp_exchange(self, request: RacpRequest,
                             what: str) -> RacpNumberOfRecords | RacpResponse:
        """Write a request and wait for its answer."""
        if self._racp is None:
            raise DeviceError("RACP not subscribed", self.address)
        self.inbox.clear(RACP)
        try:
            await self.central.write(self._racp, bytes(request))
        except AttError as exc:
            if (exc.code != ATT_PROCEDURE_ALREADY_IN_PROGRESS
                    or request.op_code == RacpOpCode.ABORT_OPERATION):
                raise
            # A procedure of an earlier, abandoned sync still runs (GLS 1.0 §3.4.1: the
            # server refuses a new one meanwhile): abort it, then ask again.
            await self._abort_and_wait()
            await self.central.write(self._racp, bytes(request))
        while True:
            value = await self._await_response(RACP, self.DATA_TAGS, what)
            try:
                answer = parse_gls_racp(value)
            except ProtocolError as exc:
                raise DeviceError(f"{what}: unreadable RACP answer ({exc})",
                                  self.address) from exc
            if isinstance(answer, RacpNumberOfRecords):
                if request.op_code == RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
                    return answer
            elif (isinstance(answer, RacpResponse)
                  and answer.request_op_code == request.op_code):
                return answer
            logger.info("%s: ignoring stray RACP value %s", self.address, value.hex(" "))

    async def _count(self, request: RacpRequest) -> int | None:
        """Report Number of Stored Records; ``None`` when the device does not support it."""
        answer = await self._racp_exchange(request, "RACP count")
        if isinstance(answer, RacpNumberOfRecords):
            return answer.count
        if answer.response_code == RacpResponseCode.NO_RECORDS_FOUND:
            return 0
        logger.info("%s: RACP count answered %r", self.address, answer.response_code)
        return None

    async def _abort_and_wait(self) -> None:
        """Abort the procedure in progress and wait for the abort's answer; answers of the
        aborted procedure that come first are dropped."""
        assert self._racp is not None
        await self.central.write(self._racp, bytes(abort()))
        while True:
            value = await self.inbox.next(RACP, self.options.procedure_timeout_s, "RACP abort")
            with contextlib.suppress(ProtocolError):
                answer = parse_gls_racp(value)
                if (isinstance(answer, RacpResponse)
                        and answer.request_op_code == RacpOpCode.ABORT_OPERATION):
                    self.inbox.clear(RACP)
                    return

    async def _abort_quietly(self) -> None:
        """Best effort after a stalled transfer: ask the device to stop (GLS 1.0 §3.4.2.3)."""
        if self._racp is None or not self.central.is_connected:
            return
        try:
            await self.central.write(self._racp, bytes(abort()))
        except DeviceError as exc:
            logger.info("%s: abort not sent: %s", self.address, exc)

    def _check_report_answer(self, answer: RacpNumberOfRecords | RacpResponse) -> None:
        if isinstance(answer, RacpResponse) and answer.response_code not in (
                RacpResponseCode.SUCCESS, RacpResponseCode.NO_RECORDS_FOUND):
            raise DeviceError(f"the device refused the report: {answer.response_code!r}",
                              self.address)


class GlucoseMeterDriver(RacpClient):
    """A blood glucose meter over GLS. State: ``{"last_sequence": int}``."""

    KIND = DeviceKind.BLOOD_GLUCOSE_METER
    SERVICE_UUID = GLUCOSE_SERVICE_UUID
    DATA_TAGS = _DATA_TAGS

    async def _on_ready(self) -> None:
        await self._subscribe(GlsCharacteristic.GLUCOSE_MEASUREMENT, MEASUREMENT,
                              indicate=False)
        # GLS 1.0 §3.2: the Context characteristic is optional for a meter.
        await self._subscribe(GlsCharacteristic.GLUCOSE_MEASUREMENT_CONTEXT, CONTEXT,
                              indicate=False, required=False)
        self._racp = await self._subscribe(RACP_UUID, RACP, indicate=True)

    # --- sync -----------------------------------------------------------------------------

    async def sync(self, state: Mapping[str, Any]) -> SyncResult:
        await self.connect()
        info = await self.read_info()
        clock = await read_clock(self.central)
        notices: list[str] = []
        last = state_int(state, "last_sequence", MAX_SEQUENCE)
        full = last is None
        if last is not None:
            if last == MAX_SEQUENCE:
                # GLS 1.0 §3.1.2: the number rolls over to 0 after 0xFFFF; ≥ 0x10000 cannot
                # be asked for, so the whole memory is read.
                notices.append("sequence number reached 0xFFFF and rolls over: reading all "
                               "records")
                full = True
            else:
                remaining = await self._count(count_from_sequence(last))
                if remaining == 0:
                    notices.append(
                        f"sequence reset or memory cleared: the meter holds no record "
                        f"numbered {last} or higher any more; reading all records again")
                    full = True
        if full:
            expected = await self._count(count_all())
            request = report_all()
        else:
            assert last is not None
            expected = await self._count(count_from_sequence(last + 1))
            request = report_from_sequence(last + 1)
        if expected == 0:
            new_state: dict[str, Any] = {} if full else dict(state)
            return SyncResult(info, (), new_state, clock, tuple(notices))
        transfer = await self._transfer(request, info, clock, state, notices)
        received = len({r.sequence for r in transfer.readings}) + transfer.rejected
        if expected is not None and received < expected:
            notices.append(f"meter announced {expected} record(s), {received} arrived")
        notices.extend(transfer.notices)
        through = transfer.complete_through
        if through is not None:
            new_state = {"last_sequence": through}
        else:
            new_state = {} if full else dict(state)
        return SyncResult(info, tuple(transfer.readings), new_state, clock, tuple(notices))

    async def _transfer(self, request: RacpRequest, info: DeviceInfo,
                        clock: ClockObservation | None, state: Mapping[str, Any],
                        notices: list[str]) -> _Transfer:
        self.inbox.clear(MEASUREMENT, CONTEXT)
        try:
            answer = await self._racp_exchange(request, "RACP report")
        except DeviceDisconnected as exc:
            partial = self._collect(info, clock)
            raise TransferInterrupted(
                f"link lost after {len(partial.readings)} record(s): {exc}",
                SyncResult(info, tuple(partial.readings), dict(state), clock,
                           (*notices, *partial.notices)), self.address) from exc
        except DeviceTimeout:
            await self._abort_quietly()
            raise
        self._check_report_answer(answer)
        return self._collect(info, clock)

    def _collect(self, info: DeviceInfo, clock: ClockObservation | None) -> _Transfer:
        """Decode what arrived; contexts merged by sequence number, repeats dropped."""
        received = dt.datetime.now(dt.UTC)
        utc_offset = clock.utc_offset if clock is not None else None
        out = _Transfer()
        contexts: dict[int, GlucoseMeasurementContext] = {}
        for raw in self.inbox.take_all(CONTEXT):
            try:
                decoded = GlucoseMeasurementContext.from_bytes(raw)
            except ProtocolError as exc:
                out.notices.append(f"unreadable Glucose Measurement Context ignored: {exc}")
                continue
            contexts[decoded.sequence_number] = decoded
        seen: set[int] = set()
        stopped = False
        for raw in self.inbox.take_all(MEASUREMENT):
            try:
                measurement = GlucoseMeasurement.from_bytes(raw)
                context = contexts.get(measurement.sequence_number)
                reading = to_reading(measurement, context, info.device_id,
                                     utc_offset=utc_offset, received=received)
            except (ProtocolError, RecordError) as exc:
                out.rejected += 1
                stopped = True
                out.notices.append(f"Glucose Measurement rejected: {exc}")
                continue
            if measurement.sequence_number in seen:
                continue
            seen.add(measurement.sequence_number)
            if measurement.context_follows and context is None:
                out.notices.append(f"record {measurement.sequence_number}: the announced "
                                   "Measurement Context did not arrive")
            out.readings.append(reading)
            if not stopped:
                out.complete_through = measurement.sequence_number
        out.readings.sort(key=lambda r: r.sequence or 0)
        return out

