"""A virtual insulin pump: Insulin Delivery Service (IDS 1.0) peripheral with the IDP 1.0
procedures, plus DIS, BAS and CTS.

Feeding: pass the pump's history as ``records`` (canonical pump records, oldest first: what
:class:`simulators.therapy.PumpBank` writes into a :class:`~simulators.device_clock.DeviceLog`)
and call :meth:`InsulinPumpPeripheral.add_record` for each new record as the simulated pump
produces it, in real or accelerated time. The pump keeps the canonical records as events of
its IDD history, derives its status from them and indicates what changed (IDS 1.0 §3.1–§3.3).

Device side, as on a real pump:

* History (IDS 1.0 §3.9): every canonical record becomes history events numbered with the
  pump's own u32 sequence numbers (a fed record's ``sequence`` is not reused: one record
  may take two events), in a memory of ``capacity`` events (oldest dropped when full):

  ==========================  =======================================================
  canonical record            history events
  ==========================  =======================================================
  InsulinBolus programmed     Bolus Programmed Part 1 + Part 2
  InsulinBolus delivered      Bolus Delivered Part 1 + Part 2 (end reason: cancelled
                              when less than programmed was delivered)
  BasalRateChange             Delivered Basal Rate Changed (old rate NaN if unknown)
  TempBasalStart / End        TBR Adjustment Started / Ended
  TotalDailyInsulin           Total Daily Insulin Delivery
  ReservoirLevel              Reservoir Remaining Amount Changed
  TherapyStateChange          Therapy Control State Changed (old: Undetermined if unknown)
  OperationalStateChange      Operational State Changed (likewise)
  AnnunciationEvent           Annunciation Status Changed Part 1 + Part 2
  ==========================  =======================================================

  Each event carries its offset in seconds from the latest Reference Time event; a
  Reference Time is recorded at the start of the memory, whenever the pump clock is changed
  (Current Time write, clock jump or reset, DST change, clock faults), and before the u16
  offset would overflow (about every 18 h). With E2E a Reference Time event takes 21
  octets, so a collector must raise the ATT MTU above the default 23 (a report that meets
  an event too long for the MTU ends "procedure not completed").
* Status (§3.1–§3.3): therapy control state, operational state, reservoir (the latest
  Reservoir record minus the insulin delivered since, basal integrated over time), the
  active annunciations; IDD Status Changed accumulates change bits until a client resets
  them, and each of the three is indicated when it changes.
* Status Reader CP (§3.5): active bolus IDs and delivery, active basal rate, total daily
  insulin of the pump's current day, counters, lifetime delivered insulin, insulin on board
  (linear decay over ``insulin_action_min``); Reset Status is carried out and logged.
* Command CP (§3.6): answered as a real pump would: Set Therapy Control State changes the
  state, Set/Cancel TBR Adjustment starts/ends a TBR, Set Bolus programs a bolus (delivered
  at ``bolus_speed_iu_per_min`` as time passes) and answers its bolus ID, Cancel Bolus,
  Snooze/Confirm Annunciation, priming, reservoir fill level, max bolus, flight mode. Each
  of these becomes history like any fed record. The profile-template procedures are not
  supported (the IDD Features announce none) and are answered "op code not supported".
* Every write to a control point is logged in ``control_point_log`` (``"status-reader-cp"``,
  ``"command-cp"``, ``"racp"``), refused ones included, so a test can prove what a client
  sent.
* IDD RACP (§3.8): report, count and delete with All, ≤, ≥, range, First, Last; abort;
  filter types sequence number, and sequence number restricted to Reference Time events or
  to the other events. Requests are validated with
  :func:`bridge.protocols.ids.check_idd_racp_request`.
* E2E-Protection (``e2e=True``): the IDD Features announce it and every other value carries
  E2E-Counter and E2E-CRC; written values must carry a valid E2E-CRC (ATT error
  :data:`ATT_INVALID_CRC` otherwise). The written counter is not checked.

The E2E-Counter semantics are UNCONFIRMED in the project reference. Decision: the pump keeps
one counter per characteristic, starting at 0 and incremented (modulo 256) for every value
of that characteristic it sends, whether as read response, notification or indication; the
IDD Features value carries the counter of its own characteristic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from bumble.att import (
    ATT_INSUFFICIENT_ENCRYPTION_ERROR,
    ATT_INVALID_ATTRIBUTE_LENGTH_ERROR,
    ATT_Error,
)
from bumble.device import Connection
from bumble.gatt import Characteristic, Service

from bridge.errors import ProtocolError, UnknownOpCode
from bridge.protocols import ids
from bridge.protocols.cts import LocalTimeInformation
from bridge.protocols.date_time import DateTime
from bridge.protocols.ids import (
    COMMAND_CP_READING_OP_CODES,
    COMMAND_CP_RESPONSE_OP_CODES,
    INSULIN_DELIVERY_SERVICE_UUID,
    ActiveBasalRateDeliveryResponse,
    ActiveBasalRateFlags,
    ActiveBolusDeliveryResponse,
    ActiveBolusIdsResponse,
    AmountCommand,
    AnnunciationCommand,
    AnnunciationFlags,
    AvailableBolusesFlags,
    AvailableBolusesResponse,
    BolusFlags,
    BolusIdCommand,
    BolusValueSelection,
    CommandOpCode,
    CommandRequest,
    CommandResponse,
    CounterResponse,
    CounterType,
    CounterValueSelection,
    DeliveredInsulinResponse,
    DeliveryContext,
    E2EValue,
    GetActiveBolusDelivery,
    GetCounter,
    IddAnnunciationStatus,
    IddFeatureFlags,
    IddFeatures,
    IddRacpFilterType,
    IddRacpNumberOfRecords,
    IddRacpOpCode,
    IddRacpOperator,
    IddRacpRequest,
    IddRacpResponse,
    IddRacpResponseCode,
    IddResponseCode,
    IddStatus,
    IddStatusChanged,
    IddStatusChangedFlags,
    IddStatusFlags,
    IdsCharacteristic,
    InsulinOnBoardFlags,
    InsulinOnBoardResponse,
    ResetStatus,
    SetBolus,
    SetTbrAdjustment,
    SetTherapyControlState,
    StatusReaderOpCode,
    StatusReaderRequest,
    StatusReaderResponse,
    TbrFlags,
    TotalDailyInsulinStatusResponse,
    check_idd_racp_request,
    open_e2e,
    parse_command_cp,
    parse_status_reader_cp,
)
from bridge.protocols.ids_history import (
    AnnunciationChangedPart1Flags,
    AnnunciationChangedPart2Flags,
    AnnunciationStatusChangedPart1,
    AnnunciationStatusChangedPart2,
    BasalRateChangedFlags,
    BolusDeliveredFlags,
    BolusDeliveredPart1,
    BolusDeliveredPart2,
    BolusEndReason,
    BolusProgrammedPart1,
    BolusProgrammedPart2,
    DeliveredBasalRateChanged,
    HistoryData,
    HistoryEventData,
    HistoryEventType,
    OperationalStateChanged,
    RecordingReason,
    ReferenceTime,
    ReservoirRemainingAmountChanged,
    TbrAdjustmentEnded,
    TbrAdjustmentStarted,
    TbrEndedFlags,
    TbrEndReason,
    TbrEventFlags,
    TherapyControlStateChanged,
    TotalDailyInsulinDelivery,
    TotalDailyInsulinFlags,
)
from bridge.protocols.mder_float import MderFloat, SFloat, Special
from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    AnnunciationStatus,
    BasalRateChange,
    BolusPhase,
    BolusType,
    InsulinBolus,
    OperationalState,
    OperationalStateChange,
    Record,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
    TotalDailyInsulin,
)
from simulators.ble.common import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_ALREADY_IN_PROGRESS,
    Appearance,
    HciTransport,
    Indications,
    PeripheralConfig,
    VirtualPeripheral,
    uuid16,
)
from simulators.device_clock import ClockReset

logger = logging.getLogger(__name__)

#: The canonical records an insulin pump keeps.
PumpRecord = (InsulinBolus | BasalRateChange | TempBasalStart | TempBasalEnd | TotalDailyInsulin
              | ReservoirLevel | TherapyStateChange | OperationalStateChange | AnnunciationEvent)
_PUMP_RECORD_TYPES = (InsulinBolus, BasalRateChange, TempBasalStart, TempBasalEnd,
                      TotalDailyInsulin, ReservoirLevel, TherapyStateChange,
                      OperationalStateChange, AnnunciationEvent)

#: History events held by a typical pump; IDS leaves the size to the device.
DEFAULT_CAPACITY = 5000

#: Names under which control-point writes appear in ``control_point_log``.
LOG_STATUS_READER = "status-reader-cp"
LOG_COMMAND = "command-cp"
LOG_RACP = "racp"

#: ATT Application errors of IDS 1.0 for a written value whose E2E-CRC or E2E-Counter is
#: wrong. UNCONFIRMED: values chosen as the first two Application error codes (Core Vol 3
#: Part F §3.4.1.1 reserves 0x80–0x9F for them); the counter is not checked by this pump.
ATT_INVALID_CRC: Final = 0x80
ATT_INVALID_COUNTER: Final = 0x81

#: Largest Relative Offset of a history event (u16 seconds, IDS 1.0 §3.9); past it the pump
#: records a periodic Reference Time.
_MAX_RELATIVE_OFFSET_S = 0xFFFF
#: Sequence number reserved for Data Corruption events (IDS 1.0 §3.9); never assigned.
_CORRUPTION_SEQUENCE = 0xFFFFFFFF
_SEQUENCE_MODULO = 1 << 32

# --- canonical ↔ IDS codes ----------------------------------------------------------------

THERAPY_STATES: dict[TherapyState, ids.TherapyControlState] = {
    TherapyState.STOP: ids.TherapyControlState.STOP,
    TherapyState.PAUSE: ids.TherapyControlState.PAUSE,
    TherapyState.RUN: ids.TherapyControlState.RUN,
}
OPERATIONAL_STATES: dict[OperationalState, ids.OperationalState] = {
    OperationalState.OFF: ids.OperationalState.OFF,
    OperationalState.STANDBY: ids.OperationalState.STANDBY,
    OperationalState.PREPARING: ids.OperationalState.PREPARING,
    OperationalState.PRIMING: ids.OperationalState.PRIMING,
    OperationalState.WAITING: ids.OperationalState.WAITING,
    OperationalState.READY: ids.OperationalState.READY,
}
ANNUNCIATION_STATUSES: dict[AnnunciationStatus, ids.AnnunciationStatus] = {
    AnnunciationStatus.PENDING: ids.AnnunciationStatus.PENDING,
    AnnunciationStatus.SNOOZED: ids.AnnunciationStatus.SNOOZED,
    AnnunciationStatus.CONFIRMED: ids.AnnunciationStatus.CONFIRMED,
}
BOLUS_TYPES: dict[BolusType, ids.BolusType] = {
    BolusType.FAST: ids.BolusType.FAST,
    BolusType.EXTENDED: ids.BolusType.EXTENDED,
    BolusType.MULTIWAVE: ids.BolusType.MULTIWAVE,
}
TBR_TYPES: dict[TempBasalType, ids.TbrType] = {
    TempBasalType.ABSOLUTE: ids.TbrType.ABSOLUTE,
    TempBasalType.RELATIVE: ids.TbrType.RELATIVE,
}

#: AuxInfo 1 of a Temperature Out Of Range annunciation: which way (the AuxInfo words are
#: manufacturer-defined, IDS 1.0 §3.3).
AUX_TEMPERATURE_HIGH = 0x0001
AUX_TEMPERATURE_LOW = 0x0002

#: Canonical condition → IDS Annunciation Type and AuxInfo 1 (IDS 1.0 §3.3). Conditions a
#: pump cannot have (strip errors, CGM calibration, …) are absent.
ANNUNCIATION_TYPES: dict[Annunciation, tuple[ids.AnnunciationType, int | None]] = {
    Annunciation.DEVICE_FAULT: (ids.AnnunciationType.SYSTEM_ISSUE, None),
    Annunciation.OCCLUSION: (ids.AnnunciationType.OCCLUSION_DETECTED, None),
    Annunciation.RESERVOIR_EMPTY: (ids.AnnunciationType.RESERVOIR_EMPTY, None),
    Annunciation.RESERVOIR_LOW: (ids.AnnunciationType.RESERVOIR_LOW, None),
    Annunciation.INFUSION_SET_DETACHED: (ids.AnnunciationType.INFUSION_SET_DETACHED, None),
    Annunciation.BATTERY_EMPTY: (ids.AnnunciationType.BATTERY_EMPTY, None),
    Annunciation.BATTERY_LOW: (ids.AnnunciationType.BATTERY_LOW, None),
    Annunciation.TEMPERATURE_TOO_HIGH: (ids.AnnunciationType.TEMPERATURE_OUT_OF_RANGE,
                                        AUX_TEMPERATURE_HIGH),
    Annunciation.TEMPERATURE_TOO_LOW: (ids.AnnunciationType.TEMPERATURE_OUT_OF_RANGE,
                                       AUX_TEMPERATURE_LOW),
    Annunciation.BOLUS_CANCELED: (ids.AnnunciationType.BOLUS_CANCELED, None),
    Annunciation.TEMP_BASAL_OVER: (ids.AnnunciationType.TBR_OVER, None),
    Annunciation.TIME_FAULT: (ids.AnnunciationType.DATE_TIME_ISSUE, None),
}

#: The two history events of a bolus record, by phase (IDS 1.0 §3.9 event types).
BOLUS_EVENT_TYPES: dict[BolusPhase, tuple[HistoryEventType, HistoryEventType]] = {
    BolusPhase.PROGRAMMED: (HistoryEventType.BOLUS_PROGRAMMED_PART_1_OF_2,
                            HistoryEventType.BOLUS_PROGRAMMED_PART_2_OF_2),
    BolusPhase.DELIVERED: (HistoryEventType.BOLUS_DELIVERED_PART_1_OF_2,
                           HistoryEventType.BOLUS_DELIVERED_PART_2_OF_2),
}


def sfloat(value: float) -> SFloat:
    """An amount as SFLOAT, at the finest resolution the 12-bit mantissa allows (IEEE
    11073-20601 Annex F.8); ``nan`` becomes the NaN special value."""
    if math.isnan(value):
        return SFloat.special_value(Special.NAN)
    return SFloat.from_value(round(value, 3))


def tbr_adjustment(tbr_type: TempBasalType, value: float) -> SFloat:
    """The TBR Adjustment Value of a canonical TBR: IU/h when absolute; when relative, the
    factor on the programmed basal rate (percent / 100, as the project's IDS codec reads
    the field; UNCONFIRMED whether IDS 1.0 §3.6 means a factor or a percentage)."""
    return sfloat(value if tbr_type is TempBasalType.ABSOLUTE else value / 100.0)


#: Widening of a half-open window so a delivery stamped exactly at its start is counted.
_EPSILON = dt.timedelta(microseconds=1)
_NO_CHANGE = IddStatusChangedFlags(0)
#: Operational states from which priming may start (IDS 1.0 §3.6 Start Priming).
_PRIMABLE = frozenset({OperationalState.READY, OperationalState.WAITING,
                       OperationalState.PREPARING})

#: A Command CP answer and the IDD Status Changed bits the command set.
Reply = tuple[E2EValue, IddStatusChangedFlags]


def _answer(op: int, code: IddResponseCode,
            changed: IddStatusChangedFlags = _NO_CHANGE) -> Reply:
    """The Response Code op code answer (IDS 1.0 §3.6) to request op code ``op``."""
    return CommandResponse(op, code), changed


# --- pump configuration and state ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PumpConfig:
    """What kind of pump this is (beyond the shared :class:`PeripheralConfig`).

    Amounts in IU, rates in IU/h, durations in minutes unless named otherwise.
    ``initial_reservoir_iu`` is the reservoir content before any Reservoir record.
    ``tick_interval_s``: how often (real seconds) the running pump looks whether a
    commanded bolus, TBR or priming has ended; ``None``: only when it is accessed.
    """

    e2e: bool = False
    insulin_concentration_iu_per_ml: float = 100.0
    capacity: int = DEFAULT_CAPACITY
    first_sequence: int = 0
    reservoir_capacity_iu: float = 300.0
    initial_reservoir_iu: float = 200.0
    low_reservoir_iu: float = 20.0
    initial_therapy_state: TherapyState = TherapyState.RUN
    initial_operational_state: OperationalState = OperationalState.READY
    max_bolus_iu: float = 25.0
    max_active_boluses: int = 3
    bolus_speed_iu_per_min: float = 1.5
    priming_speed_iu_per_min: float = 10.0
    max_absolute_tbr_iu_per_h: float = 15.0
    max_relative_tbr_percent: float = 250.0
    max_tbr_duration_min: int = 1440
    insulin_action_min: int = 240
    lifetime_days: int = 4 * 365
    warranty_days: int = 4 * 365
    reservoir_operation_days: int = 3
    in_service_since: dt.datetime | None = None
    tick_interval_s: float | None = 1.0

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError(f"capacity must be positive, got {self.capacity}")
        if not 0 <= self.first_sequence < _CORRUPTION_SEQUENCE:
            raise ValueError(f"first_sequence {self.first_sequence} is not a u32 sequence")
        for name in ("bolus_speed_iu_per_min", "priming_speed_iu_per_min",
                     "insulin_action_min", "max_active_boluses"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.in_service_since is not None and self.in_service_since.tzinfo is None:
            raise ValueError("in_service_since is a true (aware) instant")


@dataclass(slots=True)
class ActiveBolus:
    bolus_id: int
    bolus_type: BolusType
    fast_iu: float
    extended_iu: float
    duration_min: int
    start: dt.datetime          # true instant the bolus was programmed
    commanded: bool             # set through the Command CP: the pump delivers it itself

    @property
    def total_iu(self) -> float:
        return self.fast_iu + self.extended_iu


@dataclass(slots=True)
class ActiveTbr:
    tbr_type: TempBasalType
    value: float
    duration_min: int
    start: dt.datetime
    commanded: bool

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(minutes=self.duration_min)


@dataclass(slots=True)
class ActiveAnnunciation:
    instance_id: int
    annunciation: Annunciation
    status: AnnunciationStatus


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One history event in the pump's memory (``history`` without E2E-Counter).

    ``record`` is the canonical record the event came from (``None`` for Reference Time).
    """

    history: HistoryData
    device_time: dt.datetime
    record: Record | None

    @property
    def sequence(self) -> int:
        return self.history.sequence_number

    @property
    def event_type(self) -> int:
        return int(self.history.event_type)


@dataclass(slots=True)
class _Reference:
    device_time: dt.datetime
    true_time: dt.datetime
    skew_s: float


# --- the peripheral ----------------------------------------------------------------------

class InsulinPumpPeripheral(VirtualPeripheral):
    """The virtual insulin pump (IDS 1.0 + IDP 1.0).

    ``records``: the pump's history, canonical pump records oldest first (stored at
    construction; the IDD Status Changed bits they set stay set until a client resets them,
    as on a pump nobody has read). ``pump``: the kind of pump (:class:`PumpConfig`, E2E on
    or off among others). Feed live records with :meth:`add_record`; :meth:`advance` lets a
    feeder in accelerated time finish what the pump delivers itself without waiting for the
    next tick. Faults come from ``config.faults`` (:class:`simulators.faults.FaultConfig`).
    """

    APPEARANCE = Appearance.INSULIN_PUMP
    ADVERTISED_SERVICES = (INSULIN_DELIVERY_SERVICE_UUID,)

    def __init__(self, config: PeripheralConfig, transport: HciTransport, *,
                 records: Iterable[PumpRecord] = (), pump: PumpConfig | None = None) -> None:
        super().__init__(config, transport)
        self.pump = pump or PumpConfig()
        self.e2e = self.pump.e2e
        self.memory: deque[StoredEvent] = deque(maxlen=self.pump.capacity)
        self._next_sequence = self.pump.first_sequence
        self._received = 0
        self._reference: _Reference | None = None
        self._last_true: dt.datetime | None = None
        self._first_true: dt.datetime | None = None
        self._reset_noted = False
        self._counters: dict[str, int] = {}
        # Pump state, derived from the records in order.
        self.therapy_state = self.pump.initial_therapy_state
        self.operational_state = self.pump.initial_operational_state
        self.basal_rate_iu_per_h: float | None = None
        self.tbr: ActiveTbr | None = None
        self.boluses: dict[int, ActiveBolus] = {}
        self.annunciations: dict[int, ActiveAnnunciation] = {}
        self.max_bolus_iu = self.pump.max_bolus_iu
        self.flight_mode = False
        self._programmed: dict[int, float] = {}
        self._last_bolus_id = 0
        self._last_instance_id = 0
        self._last_tbr_type: TempBasalType | None = None
        self._reservoir_iu = self.pump.initial_reservoir_iu
        self._reservoir_since: dt.datetime | None = None
        self._reservoir_operation_since: dt.datetime | None = None
        self._priming: tuple[dt.datetime, float] | None = None
        self._rates: list[tuple[dt.datetime, float]] = []
        self._deliveries: list[tuple[dt.datetime, float]] = []
        self.status_changed = IddStatusChangedFlags(0)
        # GATT side.
        self._chars: dict[str, Characteristic[bytes]] = {}
        self._indications: dict[str, Indications] = {}
        self._busy: set[tuple[int, str]] = set()
        self._racp_task: asyncio.Task[Any] | None = None
        self._racp_connection: Connection | None = None
        self._abort_requested = False
        self._racp_running = False

        for record in records:
            self._store(record)
        now = self.true_now()
        if not self.memory:
            # IDS 1.0 §3.9: the history starts with the time base of the events after it.
            self._record_reference(now, self._device_time_now(now),
                                   RecordingReason.SET_DATE_TIME)
        self._raise_fault_annunciations(now)
        self._in_service_since = self.pump.in_service_since or self._first_true or now

    # --- feeding ------------------------------------------------------------------------

    def add_record(self, record: PumpRecord) -> list[StoredEvent]:
        """Store a new pump record as history events and indicate the status it changes.

        Returns the events stored for it (a Reference Time first when one was due).
        """
        self._advance()
        events = self._store(record)
        self._publish(self._changes(record))
        return events

    def add_records(self, records: Iterable[PumpRecord]) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        for record in records:
            out.extend(self.add_record(record))
        return out

    @property
    def events(self) -> list[HistoryData]:
        """The stored history events, oldest first (without E2E-Counter)."""
        return [e.history for e in self.memory]

    @property
    def command_writes(self) -> list[bytes]:
        """Every value written to the IDD Command CP (accepted or not)."""
        return [w.value for w in self.control_point_log if w.characteristic == LOG_COMMAND]

    def advance(self) -> None:
        """Let the pump finish what ended by now (commanded boluses, TBR, priming)."""
        self._advance()

    # --- storing records as history ------------------------------------------------------

    def _store(self, record: Record, *, commanded: bool = False) -> list[StoredEvent]:
        if not isinstance(record, _PUMP_RECORD_TYPES):
            raise ValueError(f"an insulin pump keeps no {type(record).__name__}")
        if isinstance(record, AnnunciationEvent) and record.annunciation not in ANNUNCIATION_TYPES:
            raise ValueError(f"an insulin pump cannot annunciate {record.annunciation.value}")
        if isinstance(record, AnnunciationEvent) and record.instance_id is None:
            record = dataclasses.replace(record, instance_id=self._new_instance_id())
        if self._first_true is None:
            self._first_true = record.time
        index = self._received
        self._received += 1
        if self.faults.sequence_reset_due(index):
            # Memory cleared (battery out, factory reset): numbering and time base start over.
            self.memory.clear()
            self._next_sequence = self.pump.first_sequence
            self._reference = None
        device_time = self._device_time_of(record, index)
        stored: list[StoredEvent] = []
        reason = self._reference_due(record, device_time, index)
        if reason is not None:
            stored.append(self._record_reference(record.time, device_time, reason))
        assert self._reference is not None
        offset = int((device_time - self._reference.device_time).total_seconds())
        for event_type, data in self._event_data(record):
            stored.append(self._append(event_type, offset, data, device_time, record))
        self._apply(record, commanded)
        self._last_true = max(record.time, self._last_true or record.time)
        self.status_changed |= self._changes(record)
        return stored

    def _append(self, event_type: HistoryEventType, offset: int, data: HistoryEventData,
                device_time: dt.datetime, record: Record | None) -> StoredEvent:
        sequence = self._next_sequence
        following = (sequence + 1) % _SEQUENCE_MODULO
        self._next_sequence = 0 if following == _CORRUPTION_SEQUENCE else following
        event = StoredEvent(HistoryData(event_type, sequence, offset, data), device_time,
                            record)
        self.memory.append(event)
        return event

    def _device_time_of(self, record: Record, index: int) -> dt.datetime:
        """What the pump's clock showed for ``record``: the device model's stamp (or the
        peripheral clock), with the clock faults and any accepted time write, whole seconds
        (the resolution of Date Time, GATT Specification Supplement §3.70)."""
        nominal = (record.device_time if record.device_time is not None
                   else self.nominal_device_time(record.time))
        shown = self.faults.device_time(nominal, record.time, index) + self._time_adjust
        return shown.replace(microsecond=0, fold=0)

    def _device_time_now(self, true_time: dt.datetime) -> dt.datetime:
        shown = self.faults.device_time(self.nominal_device_time(true_time), true_time)
        return (shown + self._time_adjust).replace(microsecond=0, fold=0)

    @staticmethod
    def _skew(device_time: dt.datetime, true_time: dt.datetime) -> float:
        return (device_time - true_time.astimezone(dt.UTC).replace(tzinfo=None)).total_seconds()

    def _reference_due(self, record: Record, device_time: dt.datetime,
                       index: int) -> RecordingReason | None:
        """Why a Reference Time must precede this record's events, or ``None``."""
        ref = self._reference
        if ref is None:
            return RecordingReason.SET_DATE_TIME
        cfg = self.faults.config
        if (cfg.clock_reset_at_record is not None and index >= cfg.clock_reset_at_record
                and not self._reset_noted):
            self._reset_noted = True
            return RecordingReason.DATE_TIME_LOSS
        clock = self.config.clock
        if clock is not None and self._last_true is not None:
            for event in clock.events:
                if self._last_true < event.at <= record.time:
                    return (RecordingReason.DATE_TIME_LOSS if isinstance(event, ClockReset)
                            else RecordingReason.SET_DATE_TIME)
        # Any other step of the clock against true time (a DST change, a jump the device
        # model made) is a clock change too; slow drift stays within the tolerance.
        elapsed = abs((record.time - ref.true_time).total_seconds())
        drift_ppm = abs(cfg.clock_drift_ppm) + (abs(clock.drift_ppm) if clock else 0.0) + 50.0
        tolerance_s = 2.0 + elapsed * drift_ppm * 1e-6
        if abs(self._skew(device_time, record.time) - ref.skew_s) > tolerance_s:
            return RecordingReason.SET_DATE_TIME
        offset = (device_time - ref.device_time).total_seconds()
        if offset < 0:
            return RecordingReason.SET_DATE_TIME
        if offset > _MAX_RELATIVE_OFFSET_S:
            return RecordingReason.PERIODIC_RECORDING
        return None

    def _local_time_information(self, true_time: dt.datetime) -> LocalTimeInformation:
        clock = self.config.clock
        if clock is None:
            return LocalTimeInformation(0, 0)
        try:
            return LocalTimeInformation.from_datetime(true_time.astimezone(clock.zone.tzinfo))
        except ProtocolError:
            return LocalTimeInformation()

    def _record_reference(self, true_time: dt.datetime, device_time: dt.datetime,
                          reason: RecordingReason) -> StoredEvent:
        lti = self._local_time_information(true_time)
        data = ReferenceTime(reason, DateTime.from_datetime(device_time), lti.time_zone,
                             int(lti.dst_offset))
        self._reference = _Reference(device_time, true_time, self._skew(device_time, true_time))
        return self._append(HistoryEventType.REFERENCE_TIME, 0, data, device_time, None)

    # --- canonical record → IDS history event data ---------------------------------------

    def _event_data(self, record: Record) -> list[tuple[HistoryEventType, HistoryEventData]]:
        if isinstance(record, InsulinBolus):
            return self._bolus_events(record)
        if isinstance(record, BasalRateChange):
            old = (math.nan if record.previous_rate_iu_per_h is None
                   else record.previous_rate_iu_per_h)
            return [(HistoryEventType.DELIVERED_BASAL_RATE_CHANGED, DeliveredBasalRateChanged(
                BasalRateChangedFlags.BASAL_DELIVERY_CONTEXT_PRESENT, sfloat(old),
                sfloat(record.rate_iu_per_h), DeliveryContext.DEVICE_BASED))]
        if isinstance(record, TempBasalStart):
            return [(HistoryEventType.TBR_ADJUSTMENT_STARTED, TbrAdjustmentStarted(
                TbrEventFlags(0), TBR_TYPES[record.temp_basal_type],
                tbr_adjustment(record.temp_basal_type, record.value),
                _u16(record.duration_min)))]
        if isinstance(record, TempBasalEnd):
            tbr_type = (ids.TbrType.UNDETERMINED if self._last_tbr_type is None
                        else TBR_TYPES[self._last_tbr_type])
            reason = (TbrEndReason.CANCELED if record.canceled
                      else TbrEndReason.PROGRAM_DURATION_OVER)
            return [(HistoryEventType.TBR_ADJUSTMENT_ENDED, TbrAdjustmentEnded(
                TbrEndedFlags(0), tbr_type, _u16(record.effective_duration_min), reason))]
        if isinstance(record, TotalDailyInsulin):
            return [(HistoryEventType.TOTAL_DAILY_INSULIN_DELIVERY, TotalDailyInsulinDelivery(
                TotalDailyInsulinFlags(0), sfloat(record.bolus_iu), sfloat(record.basal_iu),
                record.day.year, record.day.month, record.day.day))]
        if isinstance(record, ReservoirLevel):
            return [(HistoryEventType.RESERVOIR_REMAINING_AMOUNT_CHANGED,
                     ReservoirRemainingAmountChanged(sfloat(record.remaining_iu)))]
        if isinstance(record, TherapyStateChange):
            old_t = (ids.TherapyControlState.UNDETERMINED if record.previous_state is None
                     else THERAPY_STATES[record.previous_state])
            return [(HistoryEventType.THERAPY_CONTROL_STATE_CHANGED,
                     TherapyControlStateChanged(old_t, THERAPY_STATES[record.new_state]))]
        if isinstance(record, OperationalStateChange):
            old_o = (ids.OperationalState.UNDETERMINED if record.previous_state is None
                     else OPERATIONAL_STATES[record.previous_state])
            return [(HistoryEventType.OPERATIONAL_STATE_CHANGED,
                     OperationalStateChanged(old_o, OPERATIONAL_STATES[record.new_state]))]
        if isinstance(record, AnnunciationEvent):
            return self._annunciation_events(record)
        raise ValueError(f"an insulin pump keeps no {type(record).__name__}")

    def _bolus_events(self, record: InsulinBolus) -> list[tuple[HistoryEventType,
                                                                 HistoryEventData]]:
        part1_type, part2_type = BOLUS_EVENT_TYPES[record.phase]
        bolus_id = record.bolus_id % 0x10000
        values = (bolus_id, BOLUS_TYPES[record.bolus_type], sfloat(record.fast_iu),
                  sfloat(record.extended_iu), _u16(record.extended_duration_min))
        if record.phase is BolusPhase.PROGRAMMED:
            return [(part1_type, BolusProgrammedPart1(*values)),
                    (part2_type, BolusProgrammedPart2(BolusFlags(0)))]
        programmed = self._programmed.get(bolus_id)
        # IDS 1.0 §3.9 Bolus Delivered Part 2: less than programmed means the delivery was
        # cut short (cancelled by the user or by the pump).
        ended = (BolusEndReason.CANCELED
                 if programmed is not None and record.total_iu < programmed - 1e-6
                 else BolusEndReason.PROGRAMMED_AMOUNT_REACHED)
        return [(part1_type, BolusDeliveredPart1(*values)),
                (part2_type, BolusDeliveredPart2(BolusDeliveredFlags.BOLUS_END_REASON_PRESENT,
                                                 0, end_reason=ended))]

    def _annunciation_events(self, record: AnnunciationEvent
                             ) -> list[tuple[HistoryEventType, HistoryEventData]]:
        mapped = ANNUNCIATION_TYPES.get(record.annunciation)
        if mapped is None:
            raise ValueError(f"an insulin pump cannot annunciate {record.annunciation.value}")
        a_type, aux1 = mapped
        instance = (record.instance_id or 0) % 0x10000
        self._last_instance_id = max(self._last_instance_id, instance)
        flags = (AnnunciationChangedPart1Flags.AUX_INFO_1_PRESENT if aux1 is not None
                 else AnnunciationChangedPart1Flags(0))
        part1 = AnnunciationStatusChangedPart1(flags, instance, a_type,
                                               ANNUNCIATION_STATUSES[record.status], aux1)
        return [(HistoryEventType.ANNUNCIATION_STATUS_CHANGED_PART_1_OF_2, part1),
                (HistoryEventType.ANNUNCIATION_STATUS_CHANGED_PART_2_OF_2,
                 AnnunciationStatusChangedPart2(AnnunciationChangedPart2Flags(0)))]

    def _new_instance_id(self) -> int:
        return (self._last_instance_id + 1) % 0x10000

    @staticmethod
    def _changes(record: Record) -> IddStatusChangedFlags:
        """The IDD Status Changed bits a record sets (IDS 1.0 §3.1)."""
        f = IddStatusChangedFlags
        bits = f.HISTORY_EVENT_RECORDED
        if isinstance(record, TherapyStateChange):
            bits |= f.THERAPY_CONTROL_STATE_CHANGED
        elif isinstance(record, OperationalStateChange):
            bits |= f.OPERATIONAL_STATE_CHANGED
        elif isinstance(record, ReservoirLevel):
            bits |= f.RESERVOIR_STATUS_CHANGED
        elif isinstance(record, AnnunciationEvent):
            bits |= f.ANNUNCIATION_STATUS_CHANGED
        elif isinstance(record, TotalDailyInsulin):
            bits |= f.TOTAL_DAILY_INSULIN_STATUS_CHANGED
        elif isinstance(record, BasalRateChange | TempBasalStart | TempBasalEnd):
            bits |= f.ACTIVE_BASAL_RATE_STATUS_CHANGED
        elif isinstance(record, InsulinBolus):
            bits |= f.ACTIVE_BOLUS_STATUS_CHANGED
            if record.phase is BolusPhase.DELIVERED:
                bits |= f.TOTAL_DAILY_INSULIN_STATUS_CHANGED | f.RESERVOIR_STATUS_CHANGED
        return bits

    # --- pump state ---------------------------------------------------------------------

    def _apply(self, record: Record, commanded: bool) -> None:
        """Update the pump state after ``record`` (its events are already stored)."""
        if isinstance(record, InsulinBolus):
            bolus_id = record.bolus_id % 0x10000
            self._last_bolus_id = bolus_id
            if record.phase is BolusPhase.PROGRAMMED:
                self._programmed[bolus_id] = record.total_iu
                self.boluses[bolus_id] = ActiveBolus(
                    bolus_id, record.bolus_type, record.fast_iu, record.extended_iu,
                    record.extended_duration_min, record.time, commanded)
            else:
                self.boluses.pop(bolus_id, None)
                self._programmed.pop(bolus_id, None)
                self._deliveries.append((record.time, record.total_iu))
        elif isinstance(record, BasalRateChange):
            self.basal_rate_iu_per_h = record.rate_iu_per_h
        elif isinstance(record, TempBasalStart):
            self._last_tbr_type = record.temp_basal_type
            self.tbr = ActiveTbr(record.temp_basal_type, record.value, record.duration_min,
                                 record.time, commanded)
        elif isinstance(record, TempBasalEnd):
            self.tbr = None
        elif isinstance(record, ReservoirLevel):
            if record.remaining_iu > self.reservoir_at(record.time) + 1e-6:
                # More insulin than before: a new reservoir (IDS 1.0 §3.5 Get Counter,
                # reservoir insulin operation time).
                self._reservoir_operation_since = record.time
            self._reservoir_iu = record.remaining_iu
            self._reservoir_since = record.time
        elif isinstance(record, TherapyStateChange):
            self.therapy_state = record.new_state
        elif isinstance(record, OperationalStateChange):
            self.operational_state = record.new_state
        elif isinstance(record, AnnunciationEvent):
            instance = (record.instance_id or 0) % 0x10000
            if record.status is AnnunciationStatus.CONFIRMED:
                self.annunciations.pop(instance, None)
            else:
                self.annunciations.pop(instance, None)
                self.annunciations[instance] = ActiveAnnunciation(
                    instance, record.annunciation, record.status)
        rate = self._effective_rate()
        if not self._rates or abs(self._rates[-1][1] - rate) > 1e-9:
            self._rates.append((record.time, rate))

    def _effective_rate(self) -> float:
        """Basal insulin delivered now, IU/h: none unless therapy runs."""
        if self.therapy_state is not TherapyState.RUN or self.basal_rate_iu_per_h is None:
            return 0.0
        tbr = self.tbr
        if tbr is None:
            return self.basal_rate_iu_per_h
        if tbr.tbr_type is TempBasalType.ABSOLUTE:
            return tbr.value
        return self.basal_rate_iu_per_h * tbr.value / 100.0

    def basal_delivered_iu(self, start: dt.datetime, end: dt.datetime) -> float:
        """Basal insulin delivered between two true instants (the rate integrated)."""
        total = 0.0
        for i, (since, rate) in enumerate(self._rates):
            until = self._rates[i + 1][0] if i + 1 < len(self._rates) else end
            lo, hi = max(since, start), min(until, end)
            if hi > lo:
                total += rate * (hi - lo).total_seconds() / 3600.0
        return total

    def bolus_delivered_iu(self, start: dt.datetime, end: dt.datetime) -> float:
        """Bolus insulin whose delivery completed in ``(start, end]`` (true instants)."""
        return sum(iu for when, iu in self._deliveries if start < when <= end)

    @property
    def reservoir_iu(self) -> float:
        """Insulin left now."""
        return self.reservoir_at(self.true_now())

    def reservoir_at(self, when: dt.datetime) -> float:
        """Insulin left at the true instant ``when``: the latest Reservoir record minus
        what was delivered since."""
        since = self._reservoir_since
        if since is None:
            return self._reservoir_iu
        end = max(when, since)
        used = self.basal_delivered_iu(since, end) + self.bolus_delivered_iu(since, end)
        return max(0.0, self._reservoir_iu - used)

    def _bolus_progress(self, bolus: ActiveBolus, now: dt.datetime) -> tuple[float, float]:
        """Fast and extended amounts delivered so far: the fast part at the bolus speed,
        the extended part evenly over its duration, both from the start."""
        minutes = max(0.0, (now - bolus.start).total_seconds() / 60.0)
        fast = min(bolus.fast_iu, self.pump.bolus_speed_iu_per_min * minutes)
        if bolus.extended_iu <= 0:
            extended = 0.0
        elif bolus.duration_min <= 0:
            extended = bolus.extended_iu
        else:
            extended = bolus.extended_iu * min(1.0, minutes / bolus.duration_min)
        return fast, extended

    def _bolus_end(self, bolus: ActiveBolus) -> dt.datetime:
        minutes = max(bolus.fast_iu / self.pump.bolus_speed_iu_per_min,
                      float(bolus.duration_min) if bolus.extended_iu > 0 else 0.0)
        return bolus.start + dt.timedelta(minutes=minutes)

    def _event_time(self, when: dt.datetime) -> dt.datetime:
        """``when``, but never before the latest record (history stays in order)."""
        last = self._last_true
        return when if last is None or when >= last else last

    def _new_record(self, cls: type[Record], when: dt.datetime, **fields: Any) -> Record:
        record: Record = cls(device_id=self.config.info.device_id, time=self._event_time(when),
                             **fields)
        return record

    def _add(self, record: Record, *, commanded: bool = False) -> IddStatusChangedFlags:
        self._store(record, commanded=commanded)
        return self._changes(record)

    def _advance(self) -> None:
        """Finish what the pump itself delivers (commanded boluses and TBR, priming)."""
        now = self.true_now()
        changed = IddStatusChangedFlags(0)
        for bolus in sorted((b for b in self.boluses.values() if b.commanded),
                            key=self._bolus_end):
            end = self._bolus_end(bolus)
            if end <= now:
                changed |= self._add(self._new_record(
                    InsulinBolus, end, bolus_id=bolus.bolus_id, phase=BolusPhase.DELIVERED,
                    bolus_type=bolus.bolus_type, fast_iu=bolus.fast_iu,
                    extended_iu=bolus.extended_iu, extended_duration_min=bolus.duration_min))
        tbr = self.tbr
        if tbr is not None and tbr.commanded and tbr.end <= now:
            changed |= self._add(self._new_record(TempBasalEnd, tbr.end,
                                                  effective_duration_min=tbr.duration_min))
            changed |= self._annunciate(Annunciation.TEMP_BASAL_OVER, tbr.end)
        if self._priming is not None:
            start, amount = self._priming
            end = start + dt.timedelta(minutes=amount / self.pump.priming_speed_iu_per_min)
            if end <= now:
                changed |= self._finish_priming(end, amount)
        if changed:
            self._publish(changed)

    def _annunciate(self, what: Annunciation, when: dt.datetime) -> IddStatusChangedFlags:
        return self._add(self._new_record(AnnunciationEvent, when, annunciation=what,
                                          status=AnnunciationStatus.PENDING,
                                          instance_id=self._new_instance_id()))

    def _finish_priming(self, when: dt.datetime, primed_iu: float) -> IddStatusChangedFlags:
        self._priming = None
        changed = self._add(self._new_record(
            OperationalStateChange, when, new_state=OperationalState.READY,
            previous_state=OperationalState.PRIMING))
        changed |= self._add(self._new_record(
            ReservoirLevel, when, remaining_iu=round(max(0.0, self.reservoir_iu - primed_iu), 3)))
        return changed

    def _raise_fault_annunciations(self, now: dt.datetime) -> None:
        """Conditions switched on by the fault configuration, raised as a pump would."""
        for what in sorted(self.faults.annunciations(frozenset()), key=lambda a: a.value):
            if what not in ANNUNCIATION_TYPES:
                continue  # a condition of meters or CGMs, not of a pump
            low = self.pump.low_reservoir_iu
            if what is Annunciation.RESERVOIR_LOW and self.reservoir_iu > low:
                self._add(self._new_record(ReservoirLevel, now, remaining_iu=low / 2))
            self._annunciate(what, now)
            if (what in (Annunciation.OCCLUSION, Annunciation.RESERVOIR_EMPTY)
                    and self.therapy_state is not TherapyState.STOP):
                # A pump stops delivery when insulin cannot flow.
                self._stop_therapy(now, TherapyState.STOP)

    def _stop_therapy(self, now: dt.datetime, state: TherapyState) -> IddStatusChangedFlags:
        """Stop or pause delivery: running boluses end as delivered so far, a TBR is
        cancelled (IDS 1.0 §3.6 Set Therapy Control State)."""
        changed = IddStatusChangedFlags(0)
        for bolus in list(self.boluses.values()):
            changed |= self._end_bolus(bolus, now)
        if self.tbr is not None:
            elapsed = int((now - self.tbr.start).total_seconds() // 60)
            changed |= self._add(self._new_record(TempBasalEnd, now,
                                                  effective_duration_min=max(0, elapsed),
                                                  canceled=True))
        changed |= self._add(self._new_record(TherapyStateChange, now, new_state=state,
                                              previous_state=self.therapy_state))
        return changed

    def _end_bolus(self, bolus: ActiveBolus, now: dt.datetime) -> IddStatusChangedFlags:
        fast, extended = self._bolus_progress(bolus, now)
        changed = self._add(self._new_record(
            InsulinBolus, now, bolus_id=bolus.bolus_id, phase=BolusPhase.DELIVERED,
            bolus_type=bolus.bolus_type, fast_iu=round(fast, 2), extended_iu=round(extended, 2),
            extended_duration_min=bolus.duration_min))
        return changed | self._annunciate(Annunciation.BOLUS_CANCELED, now)

    # --- characteristic values -----------------------------------------------------------

    def _counter(self, name: str) -> int | None:
        """The next E2E-Counter of a characteristic, or ``None`` without E2E."""
        if not self.e2e:
            return None
        value = self._counters.get(name, 0)
        self._counters[name] = (value + 1) % 256
        return value

    def _seal(self, name: str, value: E2EValue) -> bytes:
        counter = self._counter(name)
        if counter is None:
            return bytes(value)
        sealed: E2EValue = dataclasses.replace(cast(Any, value), e2e_counter=counter)
        return bytes(sealed)

    def status_changed_value(self) -> IddStatusChanged:
        return IddStatusChanged(self.status_changed)

    def status_value(self) -> IddStatus:
        return IddStatus(THERAPY_STATES[self.therapy_state],
                         OPERATIONAL_STATES[self.operational_state],
                         sfloat(round(self.reservoir_iu, 1)),
                         IddStatusFlags.RESERVOIR_ATTACHED)

    def current_annunciation(self) -> ActiveAnnunciation | None:
        """The annunciation the IDD Annunciation Status shows: the latest still pending,
        else the latest snoozed (IDS 1.0 §3.3: confirmed ones are no longer shown)."""
        active = list(self.annunciations.values())
        pending = [a for a in active if a.status is AnnunciationStatus.PENDING]
        chosen = pending or active
        return chosen[-1] if chosen else None

    def annunciation_value(self) -> IddAnnunciationStatus:
        current = self.current_annunciation()
        if current is None:
            return IddAnnunciationStatus(AnnunciationFlags(0))
        a_type, aux1 = ANNUNCIATION_TYPES[current.annunciation]
        flags = AnnunciationFlags.ANNUNCIATION_PRESENT
        if aux1 is not None:
            flags |= AnnunciationFlags.AUX_INFO_1_PRESENT
        return IddAnnunciationStatus(flags, current.instance_id, a_type,
                                     ANNUNCIATION_STATUSES[current.status], aux1)

    @property
    def feature_flags(self) -> IddFeatureFlags:
        f = IddFeatureFlags
        flags = (f.BASAL_RATE_SUPPORTED | f.TBR_ABSOLUTE_SUPPORTED | f.TBR_RELATIVE_SUPPORTED
                 | f.FAST_BOLUS_SUPPORTED | f.EXTENDED_BOLUS_SUPPORTED
                 | f.MULTIWAVE_BOLUS_SUPPORTED | f.INSULIN_ON_BOARD_SUPPORTED)
        return flags | f.E2E_PROTECTION_SUPPORTED if self.e2e else flags

    def features_value(self) -> IddFeatures:
        counter = self._counter("features") or 0
        return IddFeatures.create(sfloat(self.pump.insulin_concentration_iu_per_ml),
                                  self.feature_flags, counter)

    # --- GATT -----------------------------------------------------------------------------

    def build_services(self) -> Sequence[Service]:
        p = Characteristic.Properties
        c = IdsCharacteristic
        chars = self._chars
        chars["status-changed"] = self.characteristic(
            c.IDD_STATUS_CHANGED, p.READ | p.INDICATE,
            read=lambda _c: self._seal("status-changed", self.status_changed_value()))
        chars["status"] = self.characteristic(
            c.IDD_STATUS, p.READ | p.INDICATE,
            read=lambda _c: self._read_status())
        chars["annunciation-status"] = self.characteristic(
            c.IDD_ANNUNCIATION_STATUS, p.READ | p.INDICATE,
            read=lambda _c: self._read_annunciation())
        chars["features"] = self.characteristic(
            c.IDD_FEATURES, p.READ, read=lambda _c: bytes(self.features_value()))
        # Control points check security themselves, so that a refused write is logged too.
        chars["status-reader-cp"] = self.characteristic(
            c.IDD_STATUS_READER_CONTROL_POINT, p.WRITE | p.INDICATE,
            write=self._on_status_reader_write, secured=False)
        chars["command-cp"] = self.characteristic(
            c.IDD_COMMAND_CONTROL_POINT, p.WRITE | p.INDICATE,
            write=self._on_command_write, secured=False)
        chars["command-data"] = self.characteristic(c.IDD_COMMAND_DATA, p.NOTIFY)
        chars["racp"] = self.characteristic(
            c.IDD_RECORD_ACCESS_CONTROL_POINT, p.WRITE | p.INDICATE,
            write=self._on_racp_write, secured=False)
        chars["history"] = self.characteristic(c.IDD_HISTORY_DATA, p.NOTIFY)
        for name in ("status-changed", "status", "annunciation-status", "status-reader-cp",
                     "command-cp", "racp"):
            self._indications[name] = Indications(self, chars[name])
        order = ("status-changed", "status", "annunciation-status", "features",
                 "status-reader-cp", "command-cp", "command-data", "racp", "history")
        return [Service(uuid16(INSULIN_DELIVERY_SERVICE_UUID), [chars[n] for n in order])]

    def _read_status(self) -> bytes:
        self._advance()
        return self._seal("status", self.status_value())

    def _read_annunciation(self) -> bytes:
        self._advance()
        return self._seal("annunciation-status", self.annunciation_value())

    async def start(self) -> None:
        if self.device is not None:
            return
        await super().start()
        if self.pump.tick_interval_s is not None:
            self.spawn(self._tick(self.pump.tick_interval_s))

    async def _tick(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._advance()

    def on_disconnection(self, connection: Connection) -> None:
        handle = connection.handle
        self._busy = {b for b in self._busy if b[0] != handle}
        if self._racp_connection is connection and self._racp_task is not None:
            # The link is gone: the report in progress ends with it (IDS 1.0 §3.8).
            self._racp_task.cancel()
            self._racp_task = None
            self._racp_connection = None
            self._racp_running = False

    def _publish(self, changed: IddStatusChangedFlags) -> None:
        """Indicate the status characteristics ``changed`` touches (IDS 1.0 §3.1–§3.3)."""
        if self.device is None or not changed:
            return
        f = IddStatusChangedFlags
        names = ["status-changed"]
        if changed & (f.THERAPY_CONTROL_STATE_CHANGED | f.OPERATIONAL_STATE_CHANGED
                      | f.RESERVOIR_STATUS_CHANGED):
            names.append("status")
        if changed & f.ANNUNCIATION_STATUS_CHANGED:
            names.append("annunciation-status")
        for connection in list(self.connections):
            for name in names:
                self.spawn(self._indicate_status(connection, name))

    async def _indicate_status(self, connection: Connection, name: str) -> None:
        char = self._chars[name]
        if not self.is_subscribed(connection, char, indicate=True):
            return
        if name == "status-changed":
            value = self._seal(name, self.status_changed_value())
        elif name == "status":
            value = self._seal(name, self.status_value())
        else:
            value = self._seal(name, self.annunciation_value())
        await self._indications[name].send(connection, value)

    # --- control point plumbing -----------------------------------------------------------

    def _accept_write(self, connection: Connection, name: str, log_name: str,
                      data: bytes) -> bytes:
        """Checks every control point makes before reading a written value; the payload
        (E2E trailer removed). Refusals are logged and raised as ATT errors."""
        if self.secured and not connection.encryption:
            # IDP: the control points need a bonded, encrypted link (ATT 0x0F makes a
            # central pair).
            self.log_write(log_name, data, accepted=False)
            raise ATT_Error(ATT_INSUFFICIENT_ENCRYPTION_ERROR)
        if not self.is_subscribed(connection, self._chars[name], indicate=True):
            # CSS Part B §1.2: indications of the control point must be enabled first.
            self.log_write(log_name, data, accepted=False)
            raise ATT_Error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        try:
            reader, _counter = open_e2e(data, self.e2e, name)
        except ProtocolError:
            self.log_write(log_name, data, accepted=False)
            raise ATT_Error(ATT_INVALID_CRC) from None
        return reader.data[:reader.end]

    def _claim(self, connection: Connection, name: str, log_name: str, data: bytes) -> None:
        key = (connection.handle, name)
        if key in self._busy:
            self.log_write(log_name, data, accepted=False)
            raise ATT_Error(ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        self._busy.add(key)

    def _respond(self, connection: Connection, name: str, value: E2EValue) -> None:
        self.spawn(self._send_response(connection, name, value))

    async def _send_response(self, connection: Connection, name: str,
                             value: E2EValue) -> None:
        try:
            delay = self.faults.response_delay_s
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            # The procedure ends with its response: the client may write again as soon as
            # the indication arrives, before its confirmation is back here.
            self._busy.discard((connection.handle, name))
        if self.faults.should_drop():
            logger.info("%s response dropped (fault injection)", name)
            return
        await self._indications[name].send(connection, self._seal(name, value))

    # --- IDD Status Reader Control Point (IDS 1.0 §3.5) ------------------------------------

    def _on_status_reader_write(self, connection: Connection, value: bytes) -> None:
        data = bytes(value)
        payload = self._accept_write(connection, "status-reader-cp", LOG_STATUS_READER, data)
        if len(payload) < 2:
            self.log_write(LOG_STATUS_READER, data, accepted=False)
            raise ATT_Error(ATT_INVALID_ATTRIBUTE_LENGTH_ERROR)
        self._claim(connection, "status-reader-cp", LOG_STATUS_READER, data)
        self._advance()
        reply = self._status_reader(payload)
        accepted = not isinstance(reply, StatusReaderResponse) or reply.response_code == (
            IddResponseCode.SUCCESS)
        self.log_write(LOG_STATUS_READER, data, accepted=accepted)
        self._respond(connection, "status-reader-cp", reply)

    def _status_reader(self, payload: bytes) -> E2EValue:
        op = int.from_bytes(payload[:2], "little")

        def fail(code: IddResponseCode) -> StatusReaderResponse:
            return StatusReaderResponse(op, code)

        try:
            request = parse_status_reader_cp(payload)
        except UnknownOpCode:
            return fail(IddResponseCode.OP_CODE_NOT_SUPPORTED)
        except ProtocolError:
            return fail(IddResponseCode.INVALID_OPERAND)
        r = StatusReaderOpCode
        now = self.true_now()
        if isinstance(request, ResetStatus):
            # IDS 1.0 §3.5 Reset Status: clear the given bits, confirm, indicate the result.
            self.status_changed &= ~request.flags
            self._publish_status_changed()
            return fail(IddResponseCode.SUCCESS)
        if isinstance(request, GetActiveBolusDelivery):
            return self._active_bolus_delivery(request, now) or fail(
                IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if isinstance(request, GetCounter):
            return self._counter_response(request, now) or fail(
                IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if not isinstance(request, StatusReaderRequest):
            # Response op codes only ever travel from the server to the client.
            return fail(IddResponseCode.OP_CODE_NOT_SUPPORTED)
        if request.op_code is r.GET_ACTIVE_BOLUS_IDS:
            if not self.boluses:
                return fail(IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            return ActiveBolusIdsResponse(tuple(sorted(self.boluses))[:255])
        if request.op_code is r.GET_ACTIVE_BASAL_RATE_DELIVERY:
            return self._active_basal_rate(now) or fail(IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if request.op_code is r.GET_TOTAL_DAILY_INSULIN_STATUS:
            bolus, basal = self.total_daily_insulin(now)
            return TotalDailyInsulinStatusResponse(sfloat(round(bolus, 2)),
                                                   sfloat(round(basal, 2)),
                                                   sfloat(round(bolus + basal, 2)))
        if request.op_code is r.GET_DELIVERED_INSULIN:
            start = self._in_service_since
            return DeliveredInsulinResponse(
                MderFloat.from_value(round(self.bolus_delivered_iu(start - _EPSILON, now), 3)),
                MderFloat.from_value(round(self.basal_delivered_iu(start, now), 3)))
        if request.op_code is r.GET_INSULIN_ON_BOARD:
            iob, remaining = self.insulin_on_board(now)
            if remaining is None:
                return InsulinOnBoardResponse(InsulinOnBoardFlags(0), sfloat(0.0))
            return InsulinOnBoardResponse(InsulinOnBoardFlags.REMAINING_DURATION_PRESENT,
                                          sfloat(round(iob, 2)), remaining)
        return fail(IddResponseCode.OP_CODE_NOT_SUPPORTED)

    def _publish_status_changed(self) -> None:
        if self.device is None:
            return
        for connection in list(self.connections):
            self.spawn(self._indicate_status(connection, "status-changed"))

    def _active_bolus_delivery(self, request: GetActiveBolusDelivery,
                               now: dt.datetime) -> ActiveBolusDeliveryResponse | None:
        bolus = self.boluses.get(request.bolus_id)
        if bolus is None or not isinstance(request.value_selection, BolusValueSelection):
            return None
        fast, extended = bolus.fast_iu, bolus.extended_iu
        if request.value_selection is not BolusValueSelection.PROGRAMMED:
            done_fast, done_extended = self._bolus_progress(bolus, now)
            if request.value_selection is BolusValueSelection.DELIVERED:
                fast, extended = done_fast, done_extended
            else:
                fast, extended = fast - done_fast, extended - done_extended
        return ActiveBolusDeliveryResponse(
            BolusFlags(0), bolus.bolus_id, BOLUS_TYPES[bolus.bolus_type],
            sfloat(round(max(0.0, fast), 2)), sfloat(round(max(0.0, extended), 2)),
            _u16(bolus.duration_min))

    def _active_basal_rate(self, now: dt.datetime) -> ActiveBasalRateDeliveryResponse | None:
        rate = self.basal_rate_iu_per_h
        if rate is None:
            return None
        flags = ActiveBasalRateFlags.BASAL_DELIVERY_CONTEXT_PRESENT
        tbr = self.tbr
        if tbr is None:
            # Template number 1: the pump's one basal profile (templates are not exposed).
            return ActiveBasalRateDeliveryResponse(flags, 1, sfloat(rate),
                                                   basal_delivery_context=(
                                                       DeliveryContext.DEVICE_BASED))
        elapsed = int((now - tbr.start).total_seconds() // 60)
        return ActiveBasalRateDeliveryResponse(
            flags | ActiveBasalRateFlags.TBR_PRESENT, 1, sfloat(rate),
            TBR_TYPES[tbr.tbr_type], tbr_adjustment(tbr.tbr_type, tbr.value),
            _u16(tbr.duration_min), _u16(max(0, tbr.duration_min - elapsed)),
            basal_delivery_context=(DeliveryContext.REMOTE_CONTROL if tbr.commanded
                                    else DeliveryContext.DEVICE_BASED))

    def total_daily_insulin(self, now: dt.datetime) -> tuple[float, float]:
        """Bolus and basal insulin delivered on the pump's current day, up to ``now``."""
        device_now = self._device_time_now(now)
        since_midnight = device_now - device_now.replace(hour=0, minute=0, second=0)
        midnight = now - since_midnight
        return (self.bolus_delivered_iu(midnight - _EPSILON, now),
                self.basal_delivered_iu(midnight, now))

    def insulin_on_board(self, now: dt.datetime) -> tuple[float, int | None]:
        """Bolus insulin still acting, each bolus decaying linearly over the insulin action
        time, and the minutes until the last of it is gone (``None`` when none is left).
        A deliberately simple model: pumps use their own curves (IDS 1.0 §3.5 leaves it
        to the device)."""
        action = self.pump.insulin_action_min
        iob = 0.0
        remaining: float | None = None
        for when, amount in self._deliveries:
            age = (now - when).total_seconds() / 60.0
            if 0 <= age < action:
                iob += amount * (1.0 - age / action)
                remaining = max(remaining or 0.0, action - age)
        for bolus in self.boluses.values():
            fast, extended = self._bolus_progress(bolus, now)
            iob += fast + extended
            remaining = float(action) if fast + extended > 0 else remaining
        if remaining is None or iob <= 0:
            return 0.0, None
        return iob, _u16(math.ceil(remaining))

    def _counter_response(self, request: GetCounter, now: dt.datetime) -> CounterResponse | None:
        if not isinstance(request.value_selection, CounterValueSelection):
            return None
        t = request.counter_type
        if t is CounterType.LIFETIME:
            since, total = self._in_service_since, self.pump.lifetime_days * 1440
        elif t is CounterType.WARRANTY_TIME:
            since, total = self._in_service_since, self.pump.warranty_days * 1440
        elif t is CounterType.RESERVOIR_INSULIN_OPERATION_TIME:
            since = self._reservoir_operation_since or self._in_service_since
            total = self.pump.reservoir_operation_days * 1440
        else:
            return None  # not a loaner pump; reserved counter types
        elapsed = int(max(0.0, (now - since).total_seconds()) // 60)
        value = elapsed if request.value_selection is CounterValueSelection.ELAPSED else (
            total - elapsed)
        value = max(-(1 << 31), min((1 << 31) - 1, value))
        return CounterResponse(t, request.value_selection, value)

    # --- IDD Command Control Point (IDS 1.0 §3.6) -----------------------------------------

    def _on_command_write(self, connection: Connection, value: bytes) -> None:
        data = bytes(value)
        payload = self._accept_write(connection, "command-cp", LOG_COMMAND, data)
        if len(payload) < 2:
            self.log_write(LOG_COMMAND, data, accepted=False)
            raise ATT_Error(ATT_INVALID_ATTRIBUTE_LENGTH_ERROR)
        self._claim(connection, "command-cp", LOG_COMMAND, data)
        self._advance()
        reply, changed = self._command(payload)
        accepted = not isinstance(reply, CommandResponse) or reply.is_success
        self.log_write(LOG_COMMAND, data, accepted=accepted)
        self._publish(changed)
        self._respond(connection, "command-cp", reply)

    def _command(self, payload: bytes) -> Reply:
        """Carry out one Command CP request and build its answer (the Response Code, or the
        response op code the procedure defines)."""
        op = int.from_bytes(payload[:2], "little")
        try:
            request = parse_command_cp(payload)
        except UnknownOpCode:
            return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)
        except ProtocolError:
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        c = CommandOpCode
        if op in COMMAND_CP_RESPONSE_OP_CODES or op in COMMAND_CP_READING_OP_CODES - {
                c.GET_AVAILABLE_BOLUSES, c.GET_MAX_BOLUS_AMOUNT}:
            # Responses only travel server → client; the template reads are not supported
            # (the IDD Features announce no templates).
            return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)
        now = self.true_now()
        if isinstance(request, SetTherapyControlState):
            return self._set_therapy_state(request, now)
        if isinstance(request, SetTbrAdjustment):
            return self._set_tbr(request, now)
        if isinstance(request, SetBolus):
            return self._set_bolus(request, now)
        if isinstance(request, BolusIdCommand):
            return self._cancel_bolus(request, now)
        if isinstance(request, AnnunciationCommand):
            return self._annunciation_command(request, now)
        if isinstance(request, AmountCommand):
            return self._amount_command(request, now)
        if isinstance(request, CommandRequest):
            return self._plain_command(request, now)
        return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)

    def _set_therapy_state(self, request: SetTherapyControlState, now: dt.datetime) -> Reply:
        op = CommandOpCode.SET_THERAPY_CONTROL_STATE
        wanted = next((k for k, v in THERAPY_STATES.items() if v == request.state), None)
        if wanted is None:
            # IDS 1.0 §3.6: Undetermined or a reserved value is an invalid operand.
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        if wanted is TherapyState.RUN and (
                self.operational_state is not OperationalState.READY or self.reservoir_iu <= 0):
            # Running needs a primed pump with insulin in it.
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if wanted is self.therapy_state:
            return _answer(op, IddResponseCode.SUCCESS)
        if wanted is TherapyState.RUN:
            return _answer(op, IddResponseCode.SUCCESS, self._add(self._new_record(
                TherapyStateChange, now, new_state=wanted, previous_state=self.therapy_state)))
        return _answer(op, IddResponseCode.SUCCESS, self._stop_therapy(now, wanted))

    def _set_tbr(self, request: SetTbrAdjustment, now: dt.datetime) -> Reply:
        op = CommandOpCode.SET_TBR_ADJUSTMENT
        tbr_type = next((k for k, v in TBR_TYPES.items() if v == request.tbr_type), None)
        value = request.adjustment_value
        if tbr_type is None or not value.is_finite:
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        if request.template_number is not None:
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)  # no TBR templates
        change = TbrFlags.CHANGE_TBR in request.flags
        if self.therapy_state is not TherapyState.RUN or (self.tbr is not None) != change:
            # IDS 1.0 §3.6 Set TBR Adjustment: a TBR needs running therapy; "change TBR"
            # needs a TBR to change, and a new TBR needs none running.
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        absolute = tbr_type is TempBasalType.ABSOLUTE
        amount = float(value) if absolute else float(value) * 100.0
        limit = (self.pump.max_absolute_tbr_iu_per_h if absolute
                 else self.pump.max_relative_tbr_percent)
        if not (0 <= amount <= limit and 0 < request.duration <= self.pump.max_tbr_duration_min):
            return _answer(op, IddResponseCode.PARAMETER_OUT_OF_RANGE)
        changed = _NO_CHANGE
        if self.tbr is not None:
            # The canonical model has no "TBR changed": the old TBR ends, the new one starts.
            changed |= self._cancel_tbr(now)
        changed |= self._add(self._new_record(
            TempBasalStart, now, temp_basal_type=tbr_type, value=round(amount, 3),
            duration_min=request.duration), commanded=True)
        return _answer(op, IddResponseCode.SUCCESS, changed)

    def _cancel_tbr(self, now: dt.datetime) -> IddStatusChangedFlags:
        assert self.tbr is not None
        elapsed = int((now - self.tbr.start).total_seconds() // 60)
        return self._add(self._new_record(TempBasalEnd, now,
                                          effective_duration_min=max(0, elapsed),
                                          canceled=True))

    def _set_bolus(self, request: SetBolus, now: dt.datetime) -> Reply:
        op = CommandOpCode.SET_BOLUS
        bolus_type = next((k for k, v in BOLUS_TYPES.items() if v == request.bolus_type), None)
        fast, extended = request.fast_amount, request.extended_amount
        if bolus_type is None or not fast.is_finite or not extended.is_finite:
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        fast_iu, extended_iu, duration = float(fast), float(extended), request.duration
        well_formed = {
            BolusType.FAST: fast_iu > 0 and extended_iu == 0 and duration == 0,
            BolusType.EXTENDED: fast_iu == 0 and extended_iu > 0 and duration > 0,
            BolusType.MULTIWAVE: fast_iu > 0 and extended_iu > 0 and duration > 0,
        }[bolus_type]
        if not well_formed:
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        if request.flags & (BolusFlags.BOLUS_DELAY_TIME_PRESENT
                            | BolusFlags.BOLUS_TEMPLATE_NUMBER_PRESENT
                            | BolusFlags.BOLUS_ACTIVATION_TYPE_PRESENT):
            # Delay, templates and activation type are not in this pump's features.
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if self.therapy_state is not TherapyState.RUN:
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if fast_iu + extended_iu > self.max_bolus_iu + 1e-9:
            return _answer(op, IddResponseCode.PARAMETER_OUT_OF_RANGE)
        if fast_iu + extended_iu > self.reservoir_iu:
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if len(self.boluses) >= self.pump.max_active_boluses:
            return _answer(op, IddResponseCode.MAXIMUM_BOLUS_NUMBER_REACHED)
        bolus_id = self._last_bolus_id % 0xFFFF + 1
        changed = self._add(self._new_record(
            InsulinBolus, now, bolus_id=bolus_id, phase=BolusPhase.PROGRAMMED,
            bolus_type=bolus_type, fast_iu=fast_iu, extended_iu=extended_iu,
            extended_duration_min=duration), commanded=True)
        return BolusIdCommand(CommandOpCode.SET_BOLUS_RESPONSE, bolus_id), changed

    def _cancel_bolus(self, request: BolusIdCommand, now: dt.datetime) -> Reply:
        op = request.op_code
        bolus = self.boluses.get(request.bolus_id)
        if op is not CommandOpCode.CANCEL_BOLUS:
            return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)
        if bolus is None:
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        changed = self._end_bolus(bolus, now)
        return BolusIdCommand(CommandOpCode.CANCEL_BOLUS_RESPONSE, bolus.bolus_id), changed

    def _annunciation_command(self, request: AnnunciationCommand, now: dt.datetime) -> Reply:
        c = CommandOpCode
        op = request.op_code
        snooze = op is c.SNOOZE_ANNUNCIATION
        current = self.annunciations.get(request.annunciation_instance_id)
        if op not in (c.SNOOZE_ANNUNCIATION, c.CONFIRM_ANNUNCIATION):
            return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)
        if current is None or (snooze and current.status is AnnunciationStatus.SNOOZED):
            # IDS 1.0 §3.6: an instance never raised, already confirmed or already snoozed.
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        status = AnnunciationStatus.SNOOZED if snooze else AnnunciationStatus.CONFIRMED
        changed = self._add(self._new_record(AnnunciationEvent, now,
                                             annunciation=current.annunciation, status=status,
                                             instance_id=current.instance_id))
        response_op = (c.SNOOZE_ANNUNCIATION_RESPONSE if snooze
                       else c.CONFIRM_ANNUNCIATION_RESPONSE)
        return AnnunciationCommand(response_op, current.instance_id), changed

    def _amount_command(self, request: AmountCommand, now: dt.datetime) -> Reply:
        c = CommandOpCode
        op = request.op_code
        if op is c.GET_MAX_BOLUS_AMOUNT_RESPONSE:
            return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)
        if not request.amount.is_finite:
            return _answer(op, IddResponseCode.INVALID_OPERAND)
        amount = float(request.amount)
        if op is c.SET_MAX_BOLUS_AMOUNT:
            if not 0 < amount <= 99.0:
                return _answer(op, IddResponseCode.PARAMETER_OUT_OF_RANGE)
            self.max_bolus_iu = amount
            return _answer(op, IddResponseCode.SUCCESS)
        if op is c.SET_INITIAL_RESERVOIR_FILL_LEVEL:
            if not 0 < amount <= self.pump.reservoir_capacity_iu:
                return _answer(op, IddResponseCode.PARAMETER_OUT_OF_RANGE)
            if self.therapy_state is TherapyState.RUN:
                return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            return _answer(op, IddResponseCode.SUCCESS, self._add(self._new_record(
                ReservoirLevel, now, remaining_iu=amount)))
        # Start Priming: only with delivery stopped and the pump ready to prime.
        if (self.therapy_state is not TherapyState.STOP or self._priming is not None
                or self.operational_state not in _PRIMABLE):
            return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
        if not 0 < amount <= self.reservoir_iu:
            return _answer(op, IddResponseCode.PARAMETER_OUT_OF_RANGE)
        changed = self._add(self._new_record(OperationalStateChange, now,
                                             new_state=OperationalState.PRIMING,
                                             previous_state=self.operational_state))
        self._priming = (now, amount)
        return _answer(op, IddResponseCode.SUCCESS, changed)

    def _plain_command(self, request: CommandRequest, now: dt.datetime) -> Reply:
        c = CommandOpCode
        op = request.op_code
        if op is c.SET_FLIGHT_MODE:
            self.flight_mode = True
            return _answer(op, IddResponseCode.SUCCESS)
        if op is c.CANCEL_TBR_ADJUSTMENT:
            if self.tbr is None:
                return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            return _answer(op, IddResponseCode.SUCCESS, self._cancel_tbr(now))
        if op is c.GET_AVAILABLE_BOLUSES:
            flags = AvailableBolusesFlags(0)
            if (self.therapy_state is TherapyState.RUN
                    and len(self.boluses) < self.pump.max_active_boluses):
                flags = (AvailableBolusesFlags.FAST_BOLUS_AVAILABLE
                         | AvailableBolusesFlags.EXTENDED_BOLUS_AVAILABLE
                         | AvailableBolusesFlags.MULTIWAVE_BOLUS_AVAILABLE)
            return AvailableBolusesResponse(flags), _NO_CHANGE
        if op is c.GET_MAX_BOLUS_AMOUNT:
            return (AmountCommand(c.GET_MAX_BOLUS_AMOUNT_RESPONSE, sfloat(self.max_bolus_iu)),
                    _NO_CHANGE)
        if op is c.STOP_PRIMING:
            if self._priming is None:
                return _answer(op, IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            start, amount = self._priming
            done = min(amount, self.pump.priming_speed_iu_per_min
                       * (now - start).total_seconds() / 60.0)
            return _answer(op, IddResponseCode.SUCCESS, self._finish_priming(now, round(done, 2)))
        if op is c.RESET_RESERVOIR_INSULIN_OPERATION_TIME:
            self._reservoir_operation_since = now
            return _answer(op, IddResponseCode.SUCCESS)
        return _answer(op, IddResponseCode.OP_CODE_NOT_SUPPORTED)

    # --- IDD Record Access Control Point (IDS 1.0 §3.8) ------------------------------------

    def _on_racp_write(self, connection: Connection, value: bytes) -> None:
        data = bytes(value)
        payload = self._accept_write(connection, "racp", LOG_RACP, data)
        is_abort = payload[:1] == bytes([IddRacpOpCode.ABORT_OPERATION])
        running = self._racp_running
        if running and not is_abort:
            self.log_write(LOG_RACP, data, accepted=False)
            raise ATT_Error(ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        code = check_idd_racp_request(payload)
        if code is not None:
            self.log_write(LOG_RACP, data, accepted=False)
            self._racp_respond(connection, IddRacpResponse.for_request(payload, code))
            return
        request = IddRacpRequest.from_bytes(payload)
        op = request.op_code
        self.log_write(LOG_RACP, data, accepted=True)
        if op is IddRacpOpCode.ABORT_OPERATION:
            # IDS 1.0 §3.8 (as GLS 1.0 §3.4.2.3): stop the running report, confirm the abort.
            self._abort_requested = running
            previous = self._racp_task if running else None
            self.spawn(self._racp_after(previous, connection,
                                        IddRacpResponse(op, IddRacpResponseCode.SUCCESS)))
            return
        selected = self.select(request)
        if op is IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            self._racp_respond(connection, IddRacpNumberOfRecords(len(selected)))
            return
        if not selected:
            self._racp_respond(connection,
                               IddRacpResponse(op, IddRacpResponseCode.NO_RECORDS_FOUND))
            return
        if op is IddRacpOpCode.DELETE_STORED_RECORDS:
            doomed = {id(e) for e in selected}
            kept = [e for e in self.memory if id(e) not in doomed]
            self.memory.clear()
            self.memory.extend(kept)
            self._racp_respond(connection, IddRacpResponse(op, IddRacpResponseCode.SUCCESS))
            return
        self._abort_requested = False
        self._racp_connection = connection
        self._racp_running = True
        self._racp_task = self.spawn(self._report(connection, selected))

    def select(self, request: IddRacpRequest) -> list[StoredEvent]:
        """The stored events a request's operator and filter pick, oldest first."""
        events = list(self.memory)
        operator = request.operator
        if operator == IddRacpOperator.ALL_RECORDS:
            return events
        if operator == IddRacpOperator.FIRST_RECORD:
            return events[:1]
        if operator == IddRacpOperator.LAST_RECORD:
            return events[-1:]
        f = request.filter
        if f is None:
            return []
        lo = -1 if f.minimum is None else f.minimum
        hi = _SEQUENCE_MODULO if f.maximum is None else f.maximum
        reference = int(HistoryEventType.REFERENCE_TIME)
        chosen = [e for e in events if lo <= e.sequence <= hi]
        if f.filter_type == IddRacpFilterType.SEQUENCE_NUMBER_FILTERED_BY_REFERENCE_TIME_EVENT:
            return [e for e in chosen if e.event_type == reference]
        if (f.filter_type
                == IddRacpFilterType.SEQUENCE_NUMBER_FILTERED_BY_NON_REFERENCE_TIME_EVENT):
            return [e for e in chosen if e.event_type != reference]
        return chosen

    def _racp_respond(self, connection: Connection, value: E2EValue) -> None:
        self.spawn(self._racp_send(connection, value))

    async def _racp_send(self, connection: Connection, value: E2EValue) -> None:
        delay = self.faults.response_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if self.faults.should_drop():
            logger.info("IDD RACP response dropped (fault injection)")
            return
        await self._indications["racp"].send(connection, self._seal("racp", value))

    async def _racp_after(self, previous: asyncio.Task[Any] | None, connection: Connection,
                          value: E2EValue) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        await self._racp_send(connection, value)

    def history_frame(self, event: StoredEvent) -> bytes:
        """One IDD History Data notification for ``event`` (E2E-sealed when enabled)."""
        return self._seal("history", event.history)

    async def _report(self, connection: Connection, selected: Sequence[StoredEvent]) -> None:
        try:
            final = await self._send_events(connection, selected)
        finally:
            # Over once the last event is out: the final response may already be answered
            # by a new request before its confirmation is back.
            self._racp_running = False
        if final is not None:
            await self._racp_send(connection, final)

    async def _send_events(self, connection: Connection,
                           selected: Sequence[StoredEvent]) -> IddRacpResponse | None:
        """Notify the selected events; the response that ends the report, or ``None``
        when none is due (aborted: the abort's response ends it; link lost)."""
        history = self._chars["history"]
        op = IddRacpOpCode.REPORT_STORED_RECORDS
        if not self.is_subscribed(connection, history):
            # Nowhere to send the events: the procedure cannot complete.
            return IddRacpResponse(op, IddRacpResponseCode.PROCEDURE_NOT_COMPLETED)
        sent = 0
        for event in selected:
            copies = 2 if self.faults.should_duplicate() else 1
            for _ in range(copies):
                if self._abort_requested or connection not in self.connections:
                    return None
                frame = self.history_frame(event)
                if self.faults.should_corrupt():
                    # With E2E the damage lies before the E2E-CRC, so the check fails; without
                    # it nothing on the wire can reveal it (which is why E2E exists).
                    end = len(frame) - 2 if self.e2e else len(frame)
                    frame = self.faults.corrupt(frame, 0, end)
                if len(frame) > self.max_payload(connection):
                    logger.warning("history event of %d bytes exceeds the ATT MTU %d",
                                   len(frame), connection.att_mtu)
                    return IddRacpResponse(op, IddRacpResponseCode.PROCEDURE_NOT_COMPLETED)
                await self.notify(connection, history, frame)
                sent += 1
                if self.faults.disconnect_now(sent):
                    await self.disconnect(connection)
                    return None
                await asyncio.sleep(0)
        if self._abort_requested:
            return None
        return IddRacpResponse(op, IddRacpResponseCode.SUCCESS)

    # --- Current Time ---------------------------------------------------------------------

    def _write_current_time(self, _connection: Connection, value: bytes) -> None:
        super()._write_current_time(_connection, value)
        # IDS 1.0 §3.9: setting the clock records a Reference Time for the events after it.
        now = self.true_now()
        self._record_reference(now, self._device_time_now(now), RecordingReason.SET_DATE_TIME)
        self.status_changed |= IddStatusChangedFlags.HISTORY_EVENT_RECORDED
        self._publish(IddStatusChangedFlags.HISTORY_EVENT_RECORDED)




def _u16(value: int) -> int:
    return max(0, min(0xFFFF, int(value)))
