"""A virtual blood glucose meter: Glucose Service (GLS 1.0) peripheral with the GLP 1.0
record transfer, plus DIS, BAS and CTS.

Feeding: pass the meter's history as ``records`` (canonical
:class:`~bridge.records.BloodGlucoseReading`, oldest first) and call :meth:`add_record` for
each new reading as the simulated patient takes it (in real or accelerated time). A meter
sends nothing on its own: like a real one it stores readings and reports them when a
collector asks through the Record Access Control Point.

Device side, as on a real meter:

* a record memory of ``capacity`` readings; when full the oldest is dropped (wrap-around);
* 16-bit sequence numbers (GLS 1.0 §3.1.2), taken from the fed reading when it has one and
  counted on from there otherwise, wrapping 0xFFFF → 0;
* a device clock: a reading keeps the ``device_time`` the device model stamped on it (or
  the peripheral's clock gives one), then the clock faults are applied; the Glucose
  Measurement carries it as Base Time with a Time Offset of 0 min (GLS 1.0 §3.1.3–§3.1.4);
* concentration in kg/L (mg/dL × 10⁻⁵) by default or mol/L, at the meter's display
  resolution (1 mg/dL, 0.1 mmol/L);
* HI/LO readings (no number, ``RESULT_TOO_HIGH``/``RESULT_TOO_LOW``) are sent with the
  Sensor Status Annunciation bit "result higher/lower than the device can process" and the
  concentration SFLOAT +INF / −INF;
* a control-solution reading has Type "control solution" and Sample Location "control
  solution" (GLS 1.0 §3.1.6);
* a reading with a meal context is followed by a Glucose Measurement Context with the same
  sequence number (GLS 1.0 §3.1.1 flag bit 4, §3.2).

RACP support: op codes report, delete, abort, count; operators All, ≤, ≥, within range,
First, Last; filter types Sequence Number (0x01) and, unless ``time_filter=False``, User
Facing Time (0x02, Base Time + Time Offset). GLS 1.0 has no Feature bit for filter types;
a collector learns them from "Operand Not Supported".
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bumble.device import Connection
from bumble.gatt import Characteristic, Service

from bridge.protocols.date_time import DateTime
from bridge.protocols.gls import (
    GLUCOSE_SERVICE_UUID,
    GlsCharacteristic,
    GlucoseFeature,
    GlucoseFeatureFlags,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSampleType,
    Meal,
    SampleLocation,
    SensorStatusAnnunciation,
)
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.racp import FilterValue, GlsFilterType, RacpService
from bridge.records import Annunciation, BloodGlucoseReading, MealContext
from bridge.records import SampleLocation as CanonicalLocation
from simulators.ble.common import (
    Appearance,
    HciTransport,
    PeripheralConfig,
    RacpServer,
    VirtualPeripheral,
    uuid16,
)

#: Stored readings of a typical meter; GLS leaves the size to the device.
DEFAULT_CAPACITY = 500
#: Sequence number of the first reading when the fed readings carry none.
DEFAULT_FIRST_SEQUENCE = 1
_SEQUENCE_MODULO = 1 << 16

_ANNUNCIATION_BITS: dict[Annunciation, SensorStatusAnnunciation] = {
    Annunciation.BATTERY_LOW: SensorStatusAnnunciation.DEVICE_BATTERY_LOW,
    Annunciation.SENSOR_MALFUNCTION: SensorStatusAnnunciation.SENSOR_MALFUNCTION,
    Annunciation.SAMPLE_SIZE_INSUFFICIENT: SensorStatusAnnunciation.SAMPLE_SIZE_INSUFFICIENT,
    Annunciation.STRIP_INSERTION_ERROR: SensorStatusAnnunciation.STRIP_INSERTION_ERROR,
    Annunciation.STRIP_TYPE_INCORRECT: SensorStatusAnnunciation.STRIP_TYPE_INCORRECT,
    Annunciation.RESULT_TOO_HIGH: SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS,
    Annunciation.RESULT_TOO_LOW: SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS,
    Annunciation.TEMPERATURE_TOO_HIGH: SensorStatusAnnunciation.TEMPERATURE_TOO_HIGH,
    Annunciation.TEMPERATURE_TOO_LOW: SensorStatusAnnunciation.TEMPERATURE_TOO_LOW,
    Annunciation.READ_INTERRUPTED: SensorStatusAnnunciation.READ_INTERRUPTED_STRIP_PULLED_TOO_SOON,
    Annunciation.DEVICE_FAULT: SensorStatusAnnunciation.GENERAL_DEVICE_FAULT,
    Annunciation.TIME_FAULT: SensorStatusAnnunciation.TIME_FAULT,
}

_LOCATIONS: dict[CanonicalLocation, SampleLocation] = {
    CanonicalLocation.FINGER: SampleLocation.FINGER,
    CanonicalLocation.ALTERNATE_SITE: SampleLocation.ALTERNATE_SITE_TEST,
    CanonicalLocation.EARLOBE: SampleLocation.EARLOBE,
    CanonicalLocation.CONTROL_SOLUTION: SampleLocation.CONTROL_SOLUTION,
    # GLS has no subcutaneous site (a meter never measures there).
    CanonicalLocation.SUBCUTANEOUS: SampleLocation.NOT_AVAILABLE,
    CanonicalLocation.NOT_AVAILABLE: SampleLocation.NOT_AVAILABLE,
}

#: Byte offset of the Base Time month in a Glucose Measurement (flags 1 + sequence 2 +
#: year 2, GLS 1.0 §3.1). GLS has no CRC, so injected corruption hits this byte with bit 7,
#: which a collector sees as an invalid Date Time instead of silently wrong data.
_CORRUPT_OFFSET = 5
_CORRUPT_MASK = 0x80

#: Every condition this meter can detect (GLS 1.0 §3.3).
METER_FEATURES = (GlucoseFeatureFlags.LOW_BATTERY_DETECTION
                  | GlucoseFeatureFlags.SENSOR_MALFUNCTION_DETECTION
                  | GlucoseFeatureFlags.SENSOR_SAMPLE_SIZE
                  | GlucoseFeatureFlags.SENSOR_STRIP_INSERTION_ERROR_DETECTION
                  | GlucoseFeatureFlags.SENSOR_STRIP_TYPE_ERROR_DETECTION
                  | GlucoseFeatureFlags.SENSOR_RESULT_HIGH_LOW_DETECTION
                  | GlucoseFeatureFlags.SENSOR_TEMPERATURE_HIGH_LOW_DETECTION
                  | GlucoseFeatureFlags.SENSOR_READ_INTERRUPT_DETECTION
                  | GlucoseFeatureFlags.GENERAL_DEVICE_FAULT
                  | GlucoseFeatureFlags.TIME_FAULT)


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading in the meter's memory, as the meter numbered and time-stamped it."""

    sequence: int
    device_time: dt.datetime
    reading: BloodGlucoseReading

    @property
    def base_time(self) -> DateTime:
        return DateTime.from_datetime(self.device_time)


class GlucoseMeterPeripheral(VirtualPeripheral):
    """The virtual glucose meter (GLS 1.0 + GLP 1.0)."""

    APPEARANCE = Appearance.GENERIC_GLUCOSE_METER
    ADVERTISED_SERVICES = (GLUCOSE_SERVICE_UUID,)

    def __init__(self, config: PeripheralConfig, transport: HciTransport, *,
                 records: Iterable[BloodGlucoseReading] = (),
                 capacity: int = DEFAULT_CAPACITY,
                 first_sequence: int = DEFAULT_FIRST_SEQUENCE,
                 mmol_per_l: bool = False,
                 time_filter: bool = True,
                 record_interval_s: float = 0.0) -> None:
        super().__init__(config, transport)
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.first_sequence = first_sequence % _SEQUENCE_MODULO
        self.mmol_per_l = mmol_per_l
        self.time_filter = time_filter
        self.record_interval_s = record_interval_s
        self.memory: deque[StoredReading] = deque(maxlen=capacity)
        self._next_sequence = self.first_sequence
        self._renumber = False
        self._received = 0
        self.racp: RacpServer[StoredReading] | None = None
        self.measurement_characteristic: Characteristic[bytes] | None = None
        self.context_characteristic: Characteristic[bytes] | None = None
        for reading in records:
            self.add_record(reading)

    # --- feeding ------------------------------------------------------------------------

    def add_record(self, reading: BloodGlucoseReading) -> StoredReading:
        """Store a new reading (the oldest is dropped when the memory is full)."""
        index = self._received
        self._received += 1
        if self.faults.sequence_reset_due(index):
            # Memory cleared (e.g. battery out, factory reset): numbering starts over.
            self.memory.clear()
            self._renumber = True
            self._next_sequence = self.first_sequence
        if reading.sequence is not None and not self._renumber:
            sequence = reading.sequence % _SEQUENCE_MODULO
        else:
            sequence = self._next_sequence
        self._next_sequence = (sequence + 1) % _SEQUENCE_MODULO
        nominal = (reading.device_time if reading.device_time is not None
                   else self.nominal_device_time(reading.time))
        device_time = self.faults.device_time(nominal, reading.time, index)
        stored = StoredReading(sequence, device_time.replace(microsecond=0), reading)
        self.memory.append(stored)
        return stored

    # --- encoding -----------------------------------------------------------------------

    def sensor_status(self, stored: StoredReading) -> SensorStatusAnnunciation | None:
        bits = SensorStatusAnnunciation(0)
        for annunciation in self.faults.annunciations(stored.reading.annunciations):
            bits |= _ANNUNCIATION_BITS.get(annunciation, SensorStatusAnnunciation(0))
        return bits or None

    def measurement(self, stored: StoredReading) -> GlucoseMeasurement:
        reading = stored.reading
        sample_type = GlucoseSampleType[reading.sample_type.name]
        location = (SampleLocation.CONTROL_SOLUTION if reading.is_control_solution
                    else _LOCATIONS[reading.sample_location])
        status = self.sensor_status(stored)
        context = reading.meal is not None
        mg_dl = reading.glucose_mg_dl
        if mg_dl is None:
            # HI/LO: no number; the annunciation says which way (GLS 1.0 §3.1.7 bits 5/6).
            special = (Special.NEGATIVE_INFINITY if reading.below_range
                       else Special.POSITIVE_INFINITY)
            return GlucoseMeasurement(
                stored.sequence, stored.base_time, time_offset=0,
                concentration=SFloat.special_value(special), sample_type=sample_type,
                sample_location=location, sensor_status=status, context_follows=context)
        if self.mmol_per_l:
            mmol = round(mg_dl / 18.0156, 1)
            return GlucoseMeasurement.from_mmol_l(
                stored.sequence, stored.base_time, f"{mmol:.1f}", sample_type=sample_type,
                sample_location=location, time_offset=0, sensor_status=status,
                context_follows=context)
        return GlucoseMeasurement.from_mg_dl(
            stored.sequence, stored.base_time, round(mg_dl), sample_type=sample_type,
            sample_location=location, time_offset=0, sensor_status=status,
            context_follows=context)

    @staticmethod
    def context(stored: StoredReading) -> GlucoseMeasurementContext | None:
        meal = stored.reading.meal
        if meal is None:
            return None
        return GlucoseMeasurementContext(stored.sequence, meal=_MEALS[meal])

    # --- GATT ---------------------------------------------------------------------------

    def build_services(self) -> Sequence[Service]:
        notify = Characteristic.Properties.NOTIFY
        # GLS 1.0 §3.1/§3.2: Measurement and Context are notify-only (no read).
        self.measurement_characteristic = self.characteristic(
            GlsCharacteristic.GLUCOSE_MEASUREMENT, notify)
        self.context_characteristic = self.characteristic(
            GlsCharacteristic.GLUCOSE_MEASUREMENT_CONTEXT, notify)
        feature = self.characteristic(
            GlsCharacteristic.GLUCOSE_FEATURE, Characteristic.Properties.READ,
            read=lambda _c: bytes(GlucoseFeature(METER_FEATURES)))
        filters = [GlsFilterType.SEQUENCE_NUMBER]
        if self.time_filter:
            filters.append(GlsFilterType.USER_FACING_TIME)
        self.racp = RacpServer(
            self, RacpService.GLS, records=lambda: list(self.memory),
            filter_key=self._filter_key, send_report=self._send_report,
            delete=self._delete, supported_filter_types=filters)
        return [Service(uuid16(GLUCOSE_SERVICE_UUID),
                        [self.measurement_characteristic, self.context_characteristic,
                         feature, self.racp.characteristic])]

    def on_disconnection(self, connection: Connection) -> None:
        if self.racp is not None:
            self.racp.cancel()

    @staticmethod
    def _filter_key(stored: StoredReading, filter_type: int) -> FilterValue:
        if filter_type == GlsFilterType.USER_FACING_TIME:
            return stored.base_time  # Time Offset is always 0 here
        return stored.sequence

    def _delete(self, selected: Sequence[StoredReading]) -> None:
        doomed = {id(s) for s in selected}
        kept = [s for s in self.memory if id(s) not in doomed]
        self.memory.clear()
        self.memory.extend(kept)

    async def _send_report(self, connection: Connection,
                           selected: Sequence[StoredReading]) -> bool:
        assert self.measurement_characteristic is not None
        assert self.context_characteristic is not None
        assert self.racp is not None
        for sent, stored in enumerate(selected, start=1):
            if self.racp.abort_requested:
                return False
            if connection not in self.connections:
                return False
            copies = 2 if self.faults.should_duplicate() else 1
            for _ in range(copies):
                frame = bytes(self.measurement(stored))
                if self.faults.should_corrupt():
                    frame = self.faults.corrupt(frame, _CORRUPT_OFFSET, _CORRUPT_OFFSET + 1,
                                                mask=_CORRUPT_MASK)
                await self.notify(connection, self.measurement_characteristic, frame)
                context = self.context(stored)
                if context is not None:
                    await self.notify(connection, self.context_characteristic, bytes(context))
            if self.faults.disconnect_now(sent):
                await self.disconnect(connection)
                return False
            # Let the link deliver and an abort write come in between records.
            await asyncio.sleep(self.record_interval_s)
        return True


_MEALS: dict[MealContext, Meal] = {
    MealContext.PREPRANDIAL: Meal.PREPRANDIAL,
    MealContext.POSTPRANDIAL: Meal.POSTPRANDIAL,
    MealContext.FASTING: Meal.FASTING,
    MealContext.CASUAL: Meal.CASUAL,
    MealContext.BEDTIME: Meal.BEDTIME,
}
