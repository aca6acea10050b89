"""Bluetooth Continuous Glucose Monitoring Service (0x181F, CGMS 1.0.1).

Characteristics (CGMS 1.0.1 §3): CGM Measurement 0x2AA7 (notify), CGM Feature 0x2AA8,
CGM Status 0x2AA9, CGM Session Start Time 0x2AAA, CGM Session Run Time 0x2AAB and the CGM
Specific Ops Control Point 0x2AAC. The Record Access Control Point 0x2A52 is shared with the
Glucose Service and lives in :mod:`bridge.protocols.racp`. All fields are little-endian.

E2E-CRC
    A sensor that sets "E2E-CRC supported" (bit 12) in the CGM Feature appends a
    CRC-16/MCRF4XX to every CGM characteristic value it sends and expects one on every value
    written to it (CGMS 1.0.1 §3.1–§3.7). The CRC covers all preceding octets of the value
    (for a CGM Measurement: of the record, from its Size field on). Decoders take
    ``e2e: bool | None``: ``True``/``False`` when the collector has read the Feature, ``None``
    to infer it from the length — for a fixed layout "the two octets after the fields are a
    CRC", for a measurement record "Size leaves exactly two octets after the fields".
    Every value object keeps ``e2e_crc`` (whether it carried a CRC) so re-encoding is
    byte-exact; the CRC value itself is never stored, since a wrong one is refused with
    :class:`~bridge.errors.CrcMismatch`.

Sensor Status Annunciation octet order
    The annunciation is one 24-bit field (CGMS 1.0.1 §3.1, also used whole by the CGM Status
    §3.3): Status octet = bits 0–7, Cal/Temp octet = bits 8–15, Warning octet = bits 16–23.
    In a measurement record only the octets whose flag (bit 7 Status, bit 6 Cal/Temp, bit 5
    Warning) is set are sent. The characteristic definition lists its fields from least to
    most significant octet, so this module writes and reads the present octets in the order
    **Status, Cal/Temp, Warning**, each only if present. Implementations disagree on how
    flag bits and octets pair up: Zephyr sends Status, Cal/Temp, Warning as here, while a
    widely used Android collector library reads the octet announced by flag bit 5 (the
    Warning-Octet flag) first and gives its bits the Status meanings (session stopped, …).
    With all three octets present the byte stream is the same; with a subset the two
    conventions put the bits in different octets. This codec keeps one order only; tolerance
    for the other convention belongs in the simulator's collector-facing tests.

CGM Measurement flags are stored as received (reserved bits 2–4 included), because whether
an annunciation octet is present cannot be derived from its value (a present all-zero octet
is a spec deviation, but it must still round-trip). :meth:`CgmMeasurementRecord.create`
derives the flags for a new record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Self

from bridge.errors import (
    CrcMismatch,
    MalformedFrame,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.crc import crc16_mcrf4xx
from bridge.protocols.date_time import DateTime
from bridge.protocols.mder_float import SFloat
from bridge.protocols.wire import Reader, Writer

CGM_SERVICE_UUID = 0x181F


class CgmCharacteristic(IntEnum):
    """16-bit UUIDs of the CGMS characteristics (CGMS 1.0.1 §3)."""

    CGM_MEASUREMENT = 0x2AA7
    CGM_FEATURE = 0x2AA8
    CGM_STATUS = 0x2AA9
    CGM_SESSION_START_TIME = 0x2AAA
    CGM_SESSION_RUN_TIME = 0x2AAB
    RECORD_ACCESS_CONTROL_POINT = 0x2A52
    CGM_SPECIFIC_OPS_CONTROL_POINT = 0x2AAC






def _read_sfloat(r: Reader, what: str) -> SFloat:
    return SFloat.from_int(r.u16(what))


def _write_sfloat(w: Writer, value: SFloat) -> None:
    w.u16(int(value))


# --------------------------------------------------------------------------------------------
# E2E-CRC (CGMS 1.0.1 §3.1–§3.7: CRC-16/MCRF4XX over all preceding octets of the value)
# --------------------------------------------------------------------------------------------

E2E_CRC_SIZE = 2
#: The CGM Feature's CRC field when E2E-CRC is not supported (CGMS 1.0.1 §3.2).
E2E_CRC_NOT_SUPPORTED = 0xFFFF


def append_e2e_crc(payload: bytes) -> bytes:
    """``payload`` followed by its E2E-CRC, little-endian."""
    return payload + crc16_mcrf4xx(payload).to_bytes(2, "little")


def check_e2e_crc(data: bytes, start: int, crc_offset: int) -> None:
    """Check the CRC at ``crc_offset`` against ``data[start:crc_offset]``.

    Raises :class:`CrcMismatch` (at the CRC's offset) or :class:`TruncatedFrame`.
    """
    if crc_offset < start or crc_offset + E2E_CRC_SIZE > len(data):
        raise TruncatedFrame("E2E-CRC needs 2 bytes", data, crc_offset)
    received = int.from_bytes(data[crc_offset:crc_offset + E2E_CRC_SIZE], "little")
    expected = crc16_mcrf4xx(data[start:crc_offset])
    if expected != received:
        raise CrcMismatch("E2E-CRC does not match", data, crc_offset,
                          expected=expected, received=received)


def _read_e2e_tail(r: Reader, e2e: bool | None, start: int, what: str) -> bool:
    """After a value's fields: read and check the optional E2E-CRC, then expect the end.

    With ``e2e=None`` anything after the fields is taken to be the CRC (so one stray byte is a
    truncated CRC and three or more are trailing bytes).
    """
    has_crc = r.remaining > 0 if e2e is None else e2e
    if not has_crc:
        r.expect_end(what)
        return False
    crc_offset = r.offset
    r.take(E2E_CRC_SIZE, f"{what} E2E-CRC")
    r.expect_end(what)
    check_e2e_crc(r.data, start, crc_offset)
    return True


def _finish(w: Writer, e2e_crc: bool) -> bytes:
    body = bytes(w)
    return append_e2e_crc(body) if e2e_crc else body


# --------------------------------------------------------------------------------------------
# Shared field types
# --------------------------------------------------------------------------------------------


class SensorStatusAnnunciation(IntFlag):
    """The 24-bit Sensor Status Annunciation (CGMS 1.0.1 §3.1, §3.3).

    Bits 0–7 are the Status octet, 8–15 the Cal/Temp octet, 16–23 the Warning octet;
    bits 6–7 and 14–15 are reserved (kept, shown as bitN).
    """

    # Status octet
    SESSION_STOPPED = 1 << 0
    DEVICE_BATTERY_LOW = 1 << 1
    SENSOR_TYPE_INCORRECT = 1 << 2
    SENSOR_MALFUNCTION = 1 << 3
    DEVICE_SPECIFIC_ALERT = 1 << 4
    GENERAL_DEVICE_FAULT = 1 << 5
    # Cal/Temp octet
    TIME_SYNCHRONIZATION_REQUIRED = 1 << 8
    CALIBRATION_NOT_ALLOWED = 1 << 9
    CALIBRATION_RECOMMENDED = 1 << 10
    CALIBRATION_REQUIRED = 1 << 11
    SENSOR_TEMPERATURE_TOO_HIGH = 1 << 12
    SENSOR_TEMPERATURE_TOO_LOW = 1 << 13
    # Warning octet
    RESULT_LOWER_THAN_PATIENT_LOW = 1 << 16
    RESULT_HIGHER_THAN_PATIENT_HIGH = 1 << 17
    RESULT_LOWER_THAN_HYPO = 1 << 18
    RESULT_HIGHER_THAN_HYPER = 1 << 19
    RATE_OF_DECREASE_EXCEEDED = 1 << 20
    RATE_OF_INCREASE_EXCEEDED = 1 << 21
    RESULT_LOWER_THAN_DEVICE_CAN_PROCESS = 1 << 22
    RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS = 1 << 23


#: The empty annunciation (no octet needs to be sent).
NO_ANNUNCIATION = SensorStatusAnnunciation(0)


class CgmSampleType(IntEnum):
    """Type nibble (low nibble of the Type-Sample Location octet, CGMS 1.0.1 §3.2);
    the same codes as GLS. 0 and 11–15 are reserved."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class CgmSampleLocation(IntEnum):
    """Sample Location nibble (high nibble, CGMS 1.0.1 §3.2): the GLS codes plus
    subcutaneous tissue (5), where a CGM sensor sits. 0 and 6–14 are reserved."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    SUBCUTANEOUS_TISSUE = 5
    NOT_AVAILABLE = 15


def _split_type_location(octet: int) -> tuple[CgmSampleType | int, CgmSampleLocation | int]:
    return known(CgmSampleType, octet & 0x0F), known(CgmSampleLocation, octet >> 4)


def _join_type_location(sample_type: int, sample_location: int) -> int:
    if not 0 <= sample_type <= 0x0F or not 0 <= sample_location <= 0x0F:
        raise ValueOutOfRange(
            f"type {sample_type} / sample location {sample_location} must each fit a nibble")
    return sample_location << 4 | sample_type


# --------------------------------------------------------------------------------------------
# CGM Measurement (CGMS 1.0.1 §3.1)
# --------------------------------------------------------------------------------------------


class CgmMeasurementFlags(IntFlag):
    """Flags octet of a CGM Measurement record (CGMS 1.0.1 §3.1); bits 2–4 are reserved."""

    TREND_INFORMATION_PRESENT = 0x01
    QUALITY_PRESENT = 0x02
    WARNING_OCTET_PRESENT = 0x20
    CAL_TEMP_OCTET_PRESENT = 0x40
    STATUS_OCTET_PRESENT = 0x80


#: Size of a record without any optional part: Size, Flags, Glucose SFLOAT, Time Offset.
CGM_RECORD_MIN_SIZE = 6

# (flag, bit shift of the octet inside the 24-bit annunciation), in wire order: least
# significant octet first, as the characteristic's fields are listed (CGMS 1.0.1 §3.1).
_ANNUNCIATION_OCTETS = (
    (CgmMeasurementFlags.STATUS_OCTET_PRESENT, 0),
    (CgmMeasurementFlags.CAL_TEMP_OCTET_PRESENT, 8),
    (CgmMeasurementFlags.WARNING_OCTET_PRESENT, 16),
)


def _fields_size(flags: int) -> int:
    """Octets the flags announce, Size field included, E2E-CRC excluded."""
    size = CGM_RECORD_MIN_SIZE
    size += sum(1 for flag, _ in _ANNUNCIATION_OCTETS if flags & flag)
    if flags & CgmMeasurementFlags.TREND_INFORMATION_PRESENT:
        size += 2
    if flags & CgmMeasurementFlags.QUALITY_PRESENT:
        size += 2
    return size


def _present_octets_mask(flags: int) -> int:
    mask = 0
    for flag, shift in _ANNUNCIATION_OCTETS:
        if flags & flag:
            mask |= 0xFF << shift
    return mask


@dataclass(frozen=True, slots=True)
class CgmMeasurementRecord:
    """One CGM Measurement record.

    ``glucose`` is in mg/dL, ``trend`` in (mg/dL)/min, ``quality`` in %; ``time_offset_minutes``
    counts from the session start (CGM Session Start Time). ``flags`` is as received and must
    agree with the fields: ``trend``/``quality`` present exactly when their bit is set, and
    ``annunciation`` bits only inside the octets whose present-bit is set.
    """

    flags: CgmMeasurementFlags
    glucose: SFloat
    time_offset_minutes: int
    annunciation: SensorStatusAnnunciation = NO_ANNUNCIATION
    trend: SFloat | None = None
    quality: SFloat | None = None
    e2e_crc: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.flags <= 0xFF:
            raise ValueOutOfRange(f"flags=0x{int(self.flags):X} does not fit one octet")
        if not 0 <= self.time_offset_minutes <= 0xFFFF:
            raise ValueOutOfRange(f"time offset {self.time_offset_minutes} min outside uint16")
        if (self.trend is not None) != bool(
                self.flags & CgmMeasurementFlags.TREND_INFORMATION_PRESENT):
            raise ValueOutOfRange("trend must be given exactly when flag bit 0 is set")
        if (self.quality is not None) != bool(self.flags & CgmMeasurementFlags.QUALITY_PRESENT):
            raise ValueOutOfRange("quality must be given exactly when flag bit 1 is set")
        if self.annunciation & ~_present_octets_mask(self.flags):
            raise ValueOutOfRange(
                f"annunciation 0x{int(self.annunciation):06X} has bits in an octet the flags "
                "do not mark present (CGMS 1.0.1 §3.1 flag bits 5–7)")
        object.__setattr__(self, "flags", CgmMeasurementFlags(self.flags))
        object.__setattr__(self, "annunciation", SensorStatusAnnunciation(self.annunciation))

    @classmethod
    def create(cls, glucose: SFloat, time_offset_minutes: int, *,
               annunciation: SensorStatusAnnunciation = NO_ANNUNCIATION,
               trend: SFloat | None = None, quality: SFloat | None = None,
               e2e_crc: bool = False) -> Self:
        """A record with derived flags: only annunciation octets with a set bit are sent,
        as CGMS 1.0.1 §3.1 requires."""
        flags = CgmMeasurementFlags(0)
        for flag, shift in _ANNUNCIATION_OCTETS:
            if int(annunciation) >> shift & 0xFF:
                flags |= flag
        if trend is not None:
            flags |= CgmMeasurementFlags.TREND_INFORMATION_PRESENT
        if quality is not None:
            flags |= CgmMeasurementFlags.QUALITY_PRESENT
        return cls(flags, glucose, time_offset_minutes, annunciation, trend, quality, e2e_crc)

    # --- wire ---------------------------------------------------------------------------
    @classmethod
    def read(cls, r: Reader, e2e: bool | None = None) -> Self:
        start = r.offset
        size = r.u8("record Size")
        if size < CGM_RECORD_MIN_SIZE:
            raise MalformedFrame(
                f"record Size {size} is below the minimum of {CGM_RECORD_MIN_SIZE}",
                r.data, start)
        if size - 1 > r.remaining:
            raise TruncatedFrame(
                f"record Size {size} runs past the end of the notification "
                f"({r.remaining + 1} byte(s) left)", r.data, start)
        body = r.sub(size - 1, "record")
        flags = CgmMeasurementFlags(body.u8("flags"))
        surplus = size - _fields_size(flags)
        if surplus < 0:
            raise MalformedFrame(
                f"record Size {size} is smaller than the {_fields_size(flags)} octets the "
                f"flags 0x{int(flags):02X} announce", r.data, start)
        if surplus not in (0, E2E_CRC_SIZE):
            raise MalformedFrame(
                f"record Size {size} leaves {surplus} octet(s) after the fields; only an "
                "E2E-CRC (2) may follow", r.data, start)
        has_crc = surplus == E2E_CRC_SIZE
        if e2e is not None and e2e != has_crc:
            raise MalformedFrame(
                f"record {'has' if has_crc else 'lacks'} an E2E-CRC but the CGM Feature says "
                f"E2E-CRC is {'not ' if not e2e else ''}supported", r.data, start)
        glucose = _read_sfloat(body, "glucose concentration")
        time_offset = body.u16("time offset")
        annunciation = 0
        for flag, shift in _ANNUNCIATION_OCTETS:
            if flags & flag:
                annunciation |= body.u8("annunciation octet") << shift
        trend = (_read_sfloat(body, "trend")
                 if flags & CgmMeasurementFlags.TREND_INFORMATION_PRESENT else None)
        quality = (_read_sfloat(body, "quality")
                   if flags & CgmMeasurementFlags.QUALITY_PRESENT else None)
        if has_crc:
            crc_offset = body.offset
            body.take(E2E_CRC_SIZE, "E2E-CRC")
            check_e2e_crc(r.data, start, crc_offset)
        body.expect_end("record")
        return cls(flags, glucose, time_offset, SensorStatusAnnunciation(annunciation), trend,
                   quality, has_crc)

    def write(self, w: Writer) -> None:
        w.raw(bytes(self))

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        value = cls.read(r, e2e)
        r.expect_end("CGM Measurement record")
        return value

    def __bytes__(self) -> bytes:
        fields = Writer()
        fields.u8(int(self.flags), "flags")
        _write_sfloat(fields, self.glucose)
        fields.u16(self.time_offset_minutes, "time offset")
        for flag, shift in _ANNUNCIATION_OCTETS:
            if self.flags & flag:
                fields.u8(int(self.annunciation) >> shift & 0xFF)
        if self.trend is not None:
            _write_sfloat(fields, self.trend)
        if self.quality is not None:
            _write_sfloat(fields, self.quality)
        body = bytes(fields)
        size = 1 + len(body) + (E2E_CRC_SIZE if self.e2e_crc else 0)
        record = bytes([size]) + body
        return append_e2e_crc(record) if self.e2e_crc else record

    # --- convenience --------------------------------------------------------------------
    @property
    def glucose_mg_dl(self) -> float:
        """The glucose concentration in mg/dL (NaN/±inf for the SFLOAT special values)."""
        return float(self.glucose)

    @property
    def trend_mg_dl_per_min(self) -> float | None:
        return None if self.trend is None else float(self.trend)

    @property
    def quality_percent(self) -> float | None:
        return None if self.quality is None else float(self.quality)

    @property
    def time_offset(self) -> dt.timedelta:
        """Time since the session start (CGMS 1.0.1 §3.1: minutes, uint16)."""
        return dt.timedelta(minutes=self.time_offset_minutes)

    @property
    def below_device_range(self) -> bool:
        """Warning bit 22: the sensor result is lower than the device can process."""
        return bool(self.annunciation
                    & SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS)

    @property
    def above_device_range(self) -> bool:
        """Warning bit 23: the sensor result is higher than the device can process."""
        return bool(self.annunciation
                    & SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS)


@dataclass(frozen=True, slots=True)
class CgmMeasurement:
    """One CGM Measurement notification (0x2AA7): one or more records back to back
    (CGMS 1.0.1 §3.1). All records of one notification agree on carrying an E2E-CRC, since
    that follows from the sensor's CGM Feature."""

    records: tuple[CgmMeasurementRecord, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))
        if not self.records:
            raise ValueOutOfRange("a CGM Measurement carries at least one record")
        if len({rec.e2e_crc for rec in self.records}) > 1:
            raise ValueOutOfRange("records of one notification disagree on the E2E-CRC")

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        if r.remaining == 0:
            raise TruncatedFrame("a CGM Measurement needs at least one record", r.data, 0)
        records: list[CgmMeasurementRecord] = []
        while r.remaining > 0:
            start = r.offset
            record = CgmMeasurementRecord.read(r, e2e)
            if records and record.e2e_crc != records[0].e2e_crc:
                raise MalformedFrame(
                    "records of one notification disagree on carrying an E2E-CRC "
                    "(a Size field is probably wrong)", r.data, start)
            records.append(record)
        r.expect_end("CGM Measurement")
        return cls(tuple(records))

    def __bytes__(self) -> bytes:
        return b"".join(bytes(rec) for rec in self.records)


# --------------------------------------------------------------------------------------------
# CGM Feature (CGMS 1.0.1 §3.2)
# --------------------------------------------------------------------------------------------


class CgmFeatureBits(IntFlag):
    """The 24-bit CGM Feature field (CGMS 1.0.1 §3.2); bits 17–23 are reserved."""

    CALIBRATION = 1 << 0
    PATIENT_HIGH_LOW_ALERTS = 1 << 1
    HYPO_ALERTS = 1 << 2
    HYPER_ALERTS = 1 << 3
    RATE_OF_INCREASE_DECREASE_ALERTS = 1 << 4
    DEVICE_SPECIFIC_ALERT = 1 << 5
    SENSOR_MALFUNCTION_DETECTION = 1 << 6
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = 1 << 7
    SENSOR_RESULT_HIGH_LOW_DETECTION = 1 << 8
    LOW_BATTERY_DETECTION = 1 << 9
    SENSOR_TYPE_ERROR_DETECTION = 1 << 10
    GENERAL_DEVICE_FAULT = 1 << 11
    E2E_CRC = 1 << 12
    MULTIPLE_BOND = 1 << 13
    MULTIPLE_SESSIONS = 1 << 14
    CGM_TREND_INFORMATION = 1 << 15
    CGM_QUALITY = 1 << 16


@dataclass(frozen=True, slots=True)
class CgmFeature:
    """CGM Feature (0x2AA8): features, Type-Sample Location, and a CRC field that always
    exists — the E2E-CRC over the first four octets when bit 12 is set, else 0xFFFF
    (CGMS 1.0.1 §3.2). The CRC is derived on encode, so it is not a field here."""

    features: CgmFeatureBits
    sample_type: CgmSampleType | int
    sample_location: CgmSampleLocation | int

    SIZE = 6

    def __post_init__(self) -> None:
        if not 0 <= self.features <= 0xFFFFFF:
            raise ValueOutOfRange(f"features=0x{int(self.features):X} does not fit 24 bits")
        _join_type_location(self.sample_type, self.sample_location)
        object.__setattr__(self, "features", CgmFeatureBits(self.features))
        object.__setattr__(self, "sample_type", known(CgmSampleType, self.sample_type))
        object.__setattr__(self, "sample_location",
                           known(CgmSampleLocation, self.sample_location))

    @property
    def e2e_crc_supported(self) -> bool:
        return bool(self.features & CgmFeatureBits.E2E_CRC)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        features = CgmFeatureBits(r.u24("features"))
        sample_type, sample_location = _split_type_location(r.u8("type-sample location"))
        crc_offset = r.offset
        crc = r.u16("E2E-CRC")
        r.expect_end("CGM Feature")
        if features & CgmFeatureBits.E2E_CRC:
            check_e2e_crc(r.data, 0, crc_offset)
        elif crc != E2E_CRC_NOT_SUPPORTED:
            # §3.2: without E2E-CRC support the field is fixed at 0xFFFF and is not a CRC.
            raise ValueOutOfRange(
                f"E2E-CRC field 0x{crc:04X} must be 0xFFFF when E2E-CRC is not supported",
                r.data, crc_offset)
        return cls(features, sample_type, sample_location)

    def __bytes__(self) -> bytes:
        w = Writer()
        w.u24(int(self.features), "features")
        w.u8(_join_type_location(self.sample_type, self.sample_location))
        if self.e2e_crc_supported:
            return append_e2e_crc(bytes(w))
        return bytes(w.u16(E2E_CRC_NOT_SUPPORTED))


# --------------------------------------------------------------------------------------------
# CGM Status (CGMS 1.0.1 §3.3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgmStatus:
    """CGM Status (0x2AA9): time offset of the status, the full 24-bit annunciation and the
    optional E2E-CRC (CGMS 1.0.1 §3.3)."""

    time_offset_minutes: int
    status: SensorStatusAnnunciation
    e2e_crc: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.time_offset_minutes <= 0xFFFF:
            raise ValueOutOfRange(f"time offset {self.time_offset_minutes} min outside uint16")
        if not 0 <= self.status <= 0xFFFFFF:
            raise ValueOutOfRange(f"status 0x{int(self.status):X} does not fit 24 bits")
        object.__setattr__(self, "status", SensorStatusAnnunciation(self.status))

    @property
    def time_offset(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.time_offset_minutes)

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        time_offset = r.u16("time offset")
        status = SensorStatusAnnunciation(r.u24("status"))
        has_crc = _read_e2e_tail(r, e2e, 0, "CGM Status")
        return cls(time_offset, status, has_crc)

    def __bytes__(self) -> bytes:
        w = Writer().u16(self.time_offset_minutes, "time offset").u24(int(self.status))
        return _finish(w, self.e2e_crc)


# --------------------------------------------------------------------------------------------
# CGM Session Start Time (CGMS 1.0.1 §3.4)
# --------------------------------------------------------------------------------------------


class DstOffset(IntEnum):
    """DST Offset in 15-minute units (GATT DST Offset, used by CGMS 1.0.1 §3.4)."""

    STANDARD_TIME = 0
    HALF_AN_HOUR_DAYLIGHT_TIME = 2
    DAYLIGHT_TIME = 4
    DOUBLE_DAYLIGHT_TIME = 8
    UNKNOWN = 255


#: Time Zone: offset from UTC in 15-minute units, −48…+56 (−12 h…+14 h), −128 unknown.
TIME_ZONE_MIN = -48
TIME_ZONE_MAX = 56
TIME_ZONE_UNKNOWN = -128
_QUARTER_HOUR = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class CgmSessionStartTime:
    """CGM Session Start Time (0x2AAA): local Date Time, Time Zone, DST Offset, optional
    E2E-CRC (CGMS 1.0.1 §3.4). Time zones outside −48…56 other than −128 and undefined DST
    values are kept as received; :meth:`to_utc` refuses them."""

    start_time: DateTime
    time_zone: int
    dst_offset: DstOffset | int
    e2e_crc: bool = False

    def __post_init__(self) -> None:
        if not -128 <= self.time_zone <= 127:
            raise ValueOutOfRange(f"time zone {self.time_zone} does not fit sint8")
        if not 0 <= self.dst_offset <= 0xFF:
            raise ValueOutOfRange(f"DST offset {self.dst_offset} does not fit uint8")
        object.__setattr__(self, "dst_offset", known(DstOffset, self.dst_offset))

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        start_time = DateTime.read(r)
        time_zone = r.s8("time zone")
        dst = known(DstOffset, r.u8("DST offset"))
        has_crc = _read_e2e_tail(r, e2e, 0, "CGM Session Start Time")
        return cls(start_time, time_zone, dst, has_crc)

    def __bytes__(self) -> bytes:
        w = Writer()
        self.start_time.write(w)
        w.s8(self.time_zone, "time zone").u8(int(self.dst_offset), "DST offset")
        return _finish(w, self.e2e_crc)

    @property
    def utc_offset(self) -> dt.timedelta:
        """Time zone plus DST offset; ``ValueOutOfRange`` if either is unknown or reserved."""
        if not TIME_ZONE_MIN <= self.time_zone <= TIME_ZONE_MAX:
            raise ValueOutOfRange(f"time zone {self.time_zone} is unknown or reserved")
        if not isinstance(self.dst_offset, DstOffset) or self.dst_offset is DstOffset.UNKNOWN:
            raise ValueOutOfRange(f"DST offset {int(self.dst_offset)} is unknown or reserved")
        return (self.time_zone + int(self.dst_offset)) * _QUARTER_HOUR

    def to_utc(self) -> dt.datetime:
        """The session start as an aware UTC datetime: local time − time zone − DST."""
        offset = self.utc_offset
        local = self.start_time.to_datetime()
        return (local - offset).replace(tzinfo=dt.UTC)

    @classmethod
    def from_utc(cls, when: dt.datetime, time_zone: int = 0,
                 dst_offset: DstOffset = DstOffset.STANDARD_TIME, *,
                 e2e_crc: bool = False) -> Self:
        """The value a sensor in ``time_zone`` (15-minute units) with ``dst_offset`` would
        send for a session that started at the aware instant ``when`` (seconds kept,
        sub-seconds dropped, as Date Time has no finer field)."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueOutOfRange("from_utc needs an aware datetime")
        value = cls(DateTime(0, 0, 0, 0, 0, 0), time_zone, dst_offset, e2e_crc)
        local = when.astimezone(dt.UTC).replace(tzinfo=None) + value.utc_offset
        return cls(DateTime.from_datetime(local), time_zone, dst_offset, e2e_crc)


# --------------------------------------------------------------------------------------------
# CGM Session Run Time (CGMS 1.0.1 §3.5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgmSessionRunTime:
    """CGM Session Run Time (0x2AAB): expected session length in hours, optional E2E-CRC
    (CGMS 1.0.1 §3.5)."""

    hours: int
    e2e_crc: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.hours <= 0xFFFF:
            raise ValueOutOfRange(f"run time {self.hours} h outside uint16")

    @property
    def run_time(self) -> dt.timedelta:
        return dt.timedelta(hours=self.hours)

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        hours = r.u16("run time")
        return cls(hours, _read_e2e_tail(r, e2e, 0, "CGM Session Run Time"))

    def __bytes__(self) -> bytes:
        return _finish(Writer().u16(self.hours, "run time"), self.e2e_crc)


# --------------------------------------------------------------------------------------------
# CGM Specific Ops Control Point (CGMS 1.0.1 §3.7)
# --------------------------------------------------------------------------------------------


class SocpOpCode(IntEnum):
    """SOCP op codes (CGMS 1.0.1 §3.7); 0 and 29–255 are reserved (→ ``UnknownOpCode``)."""

    SET_COMMUNICATION_INTERVAL = 1
    GET_COMMUNICATION_INTERVAL = 2
    COMMUNICATION_INTERVAL_RESPONSE = 3
    SET_GLUCOSE_CALIBRATION_VALUE = 4
    GET_GLUCOSE_CALIBRATION_VALUE = 5
    GLUCOSE_CALIBRATION_VALUE_RESPONSE = 6
    SET_PATIENT_HIGH_ALERT_LEVEL = 7
    GET_PATIENT_HIGH_ALERT_LEVEL = 8
    PATIENT_HIGH_ALERT_LEVEL_RESPONSE = 9
    SET_PATIENT_LOW_ALERT_LEVEL = 10
    GET_PATIENT_LOW_ALERT_LEVEL = 11
    PATIENT_LOW_ALERT_LEVEL_RESPONSE = 12
    SET_HYPO_ALERT_LEVEL = 13
    GET_HYPO_ALERT_LEVEL = 14
    HYPO_ALERT_LEVEL_RESPONSE = 15
    SET_HYPER_ALERT_LEVEL = 16
    GET_HYPER_ALERT_LEVEL = 17
    HYPER_ALERT_LEVEL_RESPONSE = 18
    SET_RATE_OF_DECREASE_ALERT_LEVEL = 19
    GET_RATE_OF_DECREASE_ALERT_LEVEL = 20
    RATE_OF_DECREASE_ALERT_LEVEL_RESPONSE = 21
    SET_RATE_OF_INCREASE_ALERT_LEVEL = 22
    GET_RATE_OF_INCREASE_ALERT_LEVEL = 23
    RATE_OF_INCREASE_ALERT_LEVEL_RESPONSE = 24
    RESET_DEVICE_SPECIFIC_ALERT = 25
    START_SESSION = 26
    STOP_SESSION = 27
    RESPONSE_CODE = 28

    @property
    def changes_device(self) -> bool:
        """True for the op codes that change the sensor (set, reset, start, stop)."""
        return self in SOCP_WRITE_OP_CODES

    @property
    def is_read_request(self) -> bool:
        """True for the get op codes: requests a collector may send without changing anything."""
        return self in SOCP_READ_OP_CODES


#: Requests that change the sensor's state or settings; a read-only bridge never sends them.
SOCP_WRITE_OP_CODES: frozenset[SocpOpCode] = frozenset({
    SocpOpCode.SET_COMMUNICATION_INTERVAL,
    SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE,
    SocpOpCode.SET_PATIENT_HIGH_ALERT_LEVEL,
    SocpOpCode.SET_PATIENT_LOW_ALERT_LEVEL,
    SocpOpCode.SET_HYPO_ALERT_LEVEL,
    SocpOpCode.SET_HYPER_ALERT_LEVEL,
    SocpOpCode.SET_RATE_OF_DECREASE_ALERT_LEVEL,
    SocpOpCode.SET_RATE_OF_INCREASE_ALERT_LEVEL,
    SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT,
    SocpOpCode.START_SESSION,
    SocpOpCode.STOP_SESSION,
})

#: The requests that only read (the allowlist for a read-only collector).
SOCP_READ_OP_CODES: frozenset[SocpOpCode] = frozenset({
    SocpOpCode.GET_COMMUNICATION_INTERVAL,
    SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE,
    SocpOpCode.GET_PATIENT_HIGH_ALERT_LEVEL,
    SocpOpCode.GET_PATIENT_LOW_ALERT_LEVEL,
    SocpOpCode.GET_HYPO_ALERT_LEVEL,
    SocpOpCode.GET_HYPER_ALERT_LEVEL,
    SocpOpCode.GET_RATE_OF_DECREASE_ALERT_LEVEL,
    SocpOpCode.GET_RATE_OF_INCREASE_ALERT_LEVEL,
})


def socp_write_is_read_only(frame: bytes) -> bool:
    """Whether a SOCP value a collector is about to write only reads (allowlist: the first
    octet is a get op code). Never raises; anything else — set, reset, start, stop, responses,
    reserved or empty — is False."""
    return len(frame) > 0 and frame[0] in SOCP_READ_OP_CODES


class SocpResponseCode(IntEnum):
    """Response Code values of op code 28 (CGMS 1.0.1 §3.7); others are reserved (kept)."""

    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERAND = 3
    PROCEDURE_NOT_COMPLETED = 4
    PARAMETER_OUT_OF_RANGE = 5


class CalibrationStatus(IntFlag):
    """Calibration Status octet of a calibration record (CGMS 1.0.1 §3.7); bits 3–7 reserved."""

    CALIBRATION_DATA_REJECTED = 1 << 0
    CALIBRATION_DATA_OUT_OF_RANGE = 1 << 1
    CALIBRATION_PROCESS_PENDING = 1 << 2


#: Calibration Status with no bit set: calibration accepted and complete.
CALIBRATION_OK = CalibrationStatus(0)

#: Communication interval operand values with a special meaning (CGMS 1.0.1 §3.7).
COMMUNICATION_INTERVAL_DISABLED = 0x00
COMMUNICATION_INTERVAL_FASTEST = 0xFF
#: Calibration Data Record Number asking for the most recent calibration (CGMS 1.0.1 §3.7).
CALIBRATION_RECORD_LAST = 0xFFFF


@dataclass(frozen=True, slots=True)
class CgmCalibrationRecord:
    """The 10-octet Calibration Value of op codes 4 and 6 (CGMS 1.0.1 §3.7).

    ``glucose`` is the reference concentration in mg/dL; times are minutes relative to the
    session start.
    """

    glucose: SFloat
    calibration_time_minutes: int
    sample_type: CgmSampleType | int
    sample_location: CgmSampleLocation | int
    next_calibration_time_minutes: int
    record_number: int
    status: CalibrationStatus = CALIBRATION_OK

    SIZE = 10

    def __post_init__(self) -> None:
        for name in ("calibration_time_minutes", "next_calibration_time_minutes",
                     "record_number"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ValueOutOfRange(f"{name}={getattr(self, name)} outside uint16")
        if not 0 <= self.status <= 0xFF:
            raise ValueOutOfRange(f"calibration status 0x{int(self.status):X} exceeds one octet")
        _join_type_location(self.sample_type, self.sample_location)
        object.__setattr__(self, "sample_type", known(CgmSampleType, self.sample_type))
        object.__setattr__(self, "sample_location",
                           known(CgmSampleLocation, self.sample_location))
        object.__setattr__(self, "status", CalibrationStatus(self.status))

    @classmethod
    def read(cls, r: Reader) -> Self:
        glucose = _read_sfloat(r, "calibration glucose concentration")
        calibration_time = r.u16("calibration time")
        sample_type, sample_location = _split_type_location(r.u8("type-sample location"))
        next_time = r.u16("next calibration time")
        record_number = r.u16("calibration data record number")
        status = CalibrationStatus(r.u8("calibration status"))
        return cls(glucose, calibration_time, sample_type, sample_location, next_time,
                   record_number, status)

    def write(self, w: Writer) -> None:
        _write_sfloat(w, self.glucose)
        w.u16(self.calibration_time_minutes, "calibration time")
        w.u8(_join_type_location(self.sample_type, self.sample_location))
        w.u16(self.next_calibration_time_minutes, "next calibration time")
        w.u16(self.record_number, "calibration data record number")
        w.u8(int(self.status), "calibration status")


@dataclass(frozen=True, slots=True)
class SocpResponse:
    """Operand of op code 28: the request op code answered and the result (CGMS 1.0.1 §3.7).

    ``request_op_code`` stays a plain int for reserved codes — a sensor answers an unknown
    request with "op code not supported" and echoes it.
    """

    request_op_code: SocpOpCode | int
    response_code: SocpResponseCode | int

    def __post_init__(self) -> None:
        if not 0 <= self.request_op_code <= 0xFF or not 0 <= self.response_code <= 0xFF:
            raise ValueOutOfRange("request op code and response code are one octet each")
        object.__setattr__(self, "request_op_code",
                           known(SocpOpCode, self.request_op_code))
        object.__setattr__(self, "response_code",
                           known(SocpResponseCode, self.response_code))

    @property
    def success(self) -> bool:
        return self.response_code == SocpResponseCode.SUCCESS


SocpOperand = int | SFloat | CgmCalibrationRecord | SocpResponse | None


class _Operand(IntEnum):
    NONE = 0
    U8 = 1
    U16 = 2
    SFLOAT = 3
    CALIBRATION = 4
    RESPONSE = 5


def _operand_kind(op: SocpOpCode) -> _Operand:
    """The operand layout of each op code (CGMS 1.0.1 §3.7)."""
    if op in (SocpOpCode.SET_COMMUNICATION_INTERVAL, SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE):
        return _Operand.U8
    if op in (SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE,
              SocpOpCode.GLUCOSE_CALIBRATION_VALUE_RESPONSE):
        return _Operand.CALIBRATION
    if op is SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE:
        return _Operand.U16
    if op is SocpOpCode.RESPONSE_CODE:
        return _Operand.RESPONSE
    first, last = (SocpOpCode.SET_PATIENT_HIGH_ALERT_LEVEL,
                   SocpOpCode.RATE_OF_INCREASE_ALERT_LEVEL_RESPONSE)
    if first <= op <= last:
        # Each alert level is a set/get/response triple; set and response carry the SFLOAT.
        return _Operand.NONE if (op - first) % 3 == 1 else _Operand.SFLOAT
    return _Operand.NONE


@dataclass(frozen=True, slots=True)
class CgmSocp:
    """One CGM Specific Ops Control Point value (0x2AAC, CGMS 1.0.1 §3.7): op code, operand,
    optional E2E-CRC over both.

    ``operand`` by op code: communication interval (1, 3) an ``int`` minutes (0 = periodic
    communication off, 0xFF = fastest); calibration (4, 6) a :class:`CgmCalibrationRecord`;
    get calibration (5) an ``int`` record number (0xFFFF = last); alert level set/response
    (7, 9, …, 24) an :class:`SFloat` in mg/dL (rates in (mg/dL)/min); response code (28) a
    :class:`SocpResponse`; every other op code ``None``.
    """

    op_code: SocpOpCode
    operand: SocpOperand = None
    e2e_crc: bool = False

    def __post_init__(self) -> None:
        if self.op_code not in SocpOpCode._value2member_map_:
            raise ValueOutOfRange(f"SOCP op code {self.op_code} is reserved")
        op = SocpOpCode(self.op_code)
        object.__setattr__(self, "op_code", op)
        kind = _operand_kind(op)
        operand = self.operand
        ok = {
            _Operand.NONE: operand is None,
            _Operand.U8: isinstance(operand, int) and not isinstance(operand, bool)
            and 0 <= operand <= 0xFF,
            _Operand.U16: isinstance(operand, int) and not isinstance(operand, bool)
            and 0 <= operand <= 0xFFFF,
            _Operand.SFLOAT: isinstance(operand, SFloat),
            _Operand.CALIBRATION: isinstance(operand, CgmCalibrationRecord),
            _Operand.RESPONSE: isinstance(operand, SocpResponse),
        }[kind]
        if not ok:
            raise ValueOutOfRange(f"operand {operand!r} does not fit op code {op.name} "
                                  f"(expects {kind.name.lower()})")

    @property
    def changes_device(self) -> bool:
        return self.op_code.changes_device

    @classmethod
    def from_bytes(cls, data: bytes, e2e: bool | None = None) -> Self:
        r = Reader(data)
        raw = r.u8("op code")
        if raw not in SocpOpCode._value2member_map_:
            raise UnknownOpCode(f"SOCP op code {raw} is reserved", r.data, 0)
        op = SocpOpCode(raw)
        kind = _operand_kind(op)
        operand: SocpOperand
        if kind is _Operand.U8:
            operand = r.u8("operand")
        elif kind is _Operand.U16:
            operand = r.u16("calibration data record number")
        elif kind is _Operand.SFLOAT:
            operand = _read_sfloat(r, "alert level")
        elif kind is _Operand.CALIBRATION:
            operand = CgmCalibrationRecord.read(r)
        elif kind is _Operand.RESPONSE:
            operand = SocpResponse(r.u8("request op code"), r.u8("response code"))
        else:
            operand = None
        has_crc = _read_e2e_tail(r, e2e, 0, "CGM SOCP")
        return cls(op, operand, has_crc)

    def __bytes__(self) -> bytes:
        w = Writer().u8(int(self.op_code), "op code")
        operand = self.operand
        kind = _operand_kind(self.op_code)
        if kind is _Operand.U8 and isinstance(operand, int):
            w.u8(operand, "operand")
        elif kind is _Operand.U16 and isinstance(operand, int):
            w.u16(operand, "operand")
        elif isinstance(operand, SFloat):
            _write_sfloat(w, operand)
        elif isinstance(operand, CgmCalibrationRecord):
            operand.write(w)
        elif isinstance(operand, SocpResponse):
            w.u8(int(operand.request_op_code)).u8(int(operand.response_code))
        return _finish(w, self.e2e_crc)


CODECS = (
    MessageCodec("cgm-measurement",
                 "CGM Measurement (0x2AA7): one or more records, optional E2E-CRC each",
                 CgmMeasurement.from_bytes),
    MessageCodec("cgm-feature", "CGM Feature (0x2AA8): features, type/location, E2E-CRC field",
                 CgmFeature.from_bytes),
    MessageCodec("cgm-status", "CGM Status (0x2AA9): time offset, 24-bit status, [E2E-CRC]",
                 CgmStatus.from_bytes),
    MessageCodec("cgm-session-start-time",
                 "CGM Session Start Time (0x2AAA): Date Time, time zone, DST, [E2E-CRC]",
                 CgmSessionStartTime.from_bytes),
    MessageCodec("cgm-session-run-time", "CGM Session Run Time (0x2AAB): hours, [E2E-CRC]",
                 CgmSessionRunTime.from_bytes),
    MessageCodec("cgm-socp", "CGM Specific Ops Control Point (0x2AAC): op code, operand, "
                 "[E2E-CRC]", CgmSocp.from_bytes),
)
