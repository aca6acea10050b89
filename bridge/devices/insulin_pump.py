"""Insulin Delivery Profile client (IDP 1.0 over IDS 1.0): an insulin pump's history and status.

Read-only by construction: the client reads IDD Features, Status and Annunciation Status
and asks the IDD Record Access Control Point for history — report, count and abort are the
only control-point procedures it uses, and the GATT write guard refuses everything else
(Command Control Point, Command Data, RACP delete, Status Reader Reset Status).

* E2E-Protection (IDS 1.0 §3.4): when the IDD Features announce it, every value read or
  notified is checked (a history event with a bad E2E-CRC is dropped and reported in a
  notice, the others are kept) and every RACP request is sent with E2E-Counter and CRC.
* History (§3.8, §3.9): with a stored ``last_sequence`` L the pump is asked for events
  with sequence number ≥ L + 1, else for all. When it holds nothing numbered ≥ L any more
  its history was reset or cleared, and everything is read again with a notice.
* Time (§3.9): each event's device time is the latest Reference Time event plus the event's
  Relative Offset (seconds). The latest Reference Time is kept in the sync state, since an
  incremental read may not include it.
* Events become canonical records: Bolus Programmed / Delivered (Part 1 carries the
  amounts) → :class:`~bridge.records.InsulinBolus`, Delivered Basal Rate Changed →
  ``BasalRateChange``, TBR Adjustment Started / Ended → ``TempBasalStart`` /
  ``TempBasalEnd``, Total Daily Insulin Delivery, Reservoir Remaining Amount Changed,
  Therapy Control State Changed, Operational State Changed, Annunciation Status Changed
  (Part 1). Calculator, template, priming and pointer events have no canonical record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.devices.base import (
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.cgm import summarize
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
from bridge.protocols import ids
from bridge.protocols.ids import (
    INSULIN_DELIVERY_SERVICE_UUID,
    IddAnnunciationStatus,
    IddFeatures,
    IddRacpNumberOfRecords,
    IddRacpOpCode,
    IddRacpRequest,
    IddRacpResponse,
    IddRacpResponseCode,
    IddStatus,
    IdsCharacteristic,
    parse_idd_racp,
    racp_abort,
    racp_count_all,
    racp_count_from_sequence,
    racp_report_all,
    racp_report_from_sequence,
)
from bridge.protocols.ids_history import (
    AnnunciationStatusChangedPart1,
    BolusDeliveredPart1,
    BolusProgrammedPart1,
    DeliveredBasalRateChanged,
    HistoryData,
    HistoryEventType,
    OperationalStateChanged,
    ReferenceTime,
    ReferenceTimeBaseOffset,
    ReservoirRemainingAmountChanged,
    TbrAdjustmentEnded,
    TbrAdjustmentStarted,
    TbrEndReason,
    TherapyControlStateChanged,
    TotalDailyInsulinDelivery,
)
from bridge.protocols.mder_float import SFloat
from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    AnnunciationStatus,
    AnyRecord,
    BasalRateChange,
    BolusPhase,
    BolusType,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    OperationalState,
    OperationalStateChange,
    RecordError,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
    TimeQuality,
    TotalDailyInsulin,
)

logger = logging.getLogger(__name__)

HISTORY: Final = "history"
RACP: Final = "idd-racp"
#: History sequence numbers are uint32; 0xFFFFFFFF marks Data Corruption events (IDS 1.0
#: §3.9) and is never the number of a real event.
CORRUPTION_SEQUENCE: Final = 0xFFFFFFFF
MAX_SEQUENCE: Final = CORRUPTION_SEQUENCE - 1

THERAPY_STATES: Final[Mapping[ids.TherapyControlState, TherapyState]] = {
    ids.TherapyControlState.STOP: TherapyState.STOP,
    ids.TherapyControlState.PAUSE: TherapyState.PAUSE,
    ids.TherapyControlState.RUN: TherapyState.RUN,
}
OPERATIONAL_STATES: Final[Mapping[ids.OperationalState, OperationalState]] = {
    ids.OperationalState.OFF: OperationalState.OFF,
    ids.OperationalState.STANDBY: OperationalState.STANDBY,
    ids.OperationalState.PREPARING: OperationalState.PREPARING,
    ids.OperationalState.PRIMING: OperationalState.PRIMING,
    ids.OperationalState.WAITING: OperationalState.WAITING,
    ids.OperationalState.READY: OperationalState.READY,
}
BOLUS_TYPES: Final[Mapping[ids.BolusType, BolusType]] = {
    ids.BolusType.FAST: BolusType.FAST,
    ids.BolusType.EXTENDED: BolusType.EXTENDED,
    ids.BolusType.MULTIWAVE: BolusType.MULTIWAVE,
}
ANNUNCIATION_STATUSES: Final[Mapping[ids.AnnunciationStatus, AnnunciationStatus]] = {
    ids.AnnunciationStatus.PENDING: AnnunciationStatus.PENDING,
    ids.AnnunciationStatus.SNOOZED: AnnunciationStatus.SNOOZED,
    ids.AnnunciationStatus.CONFIRMED: AnnunciationStatus.CONFIRMED,
}
_A = ids.AnnunciationType
#: IDS Annunciation Types (IDS 1.0 §3.3) as canonical conditions. Types that report no
#: problem (battery medium / full) or have no canonical counterpart are left out.
ANNUNCIATION_TYPES: Final[Mapping[ids.AnnunciationType, Annunciation]] = {
    _A.SYSTEM_ISSUE: Annunciation.DEVICE_FAULT,
    _A.MECHANICAL_ISSUE: Annunciation.DEVICE_FAULT,
    _A.OCCLUSION_DETECTED: Annunciation.OCCLUSION,
    _A.RESERVOIR_ISSUE: Annunciation.DEVICE_FAULT,
    _A.RESERVOIR_EMPTY: Annunciation.RESERVOIR_EMPTY,
    _A.RESERVOIR_LOW: Annunciation.RESERVOIR_LOW,
    _A.PRIMING_ISSUE: Annunciation.DEVICE_FAULT,
    _A.INFUSION_SET_INCOMPLETE: Annunciation.INFUSION_SET_DETACHED,
    _A.INFUSION_SET_DETACHED: Annunciation.INFUSION_SET_DETACHED,
    _A.POWER_SOURCE_INSUFFICIENT: Annunciation.BATTERY_LOW,
    _A.BATTERY_EMPTY: Annunciation.BATTERY_EMPTY,
    _A.BATTERY_LOW: Annunciation.BATTERY_LOW,
    _A.TEMPERATURE_OUT_OF_RANGE: Annunciation.TEMPERATURE_TOO_HIGH,
    _A.AIR_PRESSURE_OUT_OF_RANGE: Annunciation.DEVICE_FAULT,
    _A.BOLUS_CANCELED: Annunciation.BOLUS_CANCELED,
    _A.TBR_OVER: Annunciation.TEMP_BASAL_OVER,
    _A.MAX_DELIVERY: Annunciation.DEVICE_FAULT,
    _A.DATE_TIME_ISSUE: Annunciation.TIME_FAULT,
}
#: AuxInfo 1 of a Temperature Out Of Range annunciation saying "too cold". AuxInfo words are
#: manufacturer-defined (IDS 1.0 §3.3); this is the convention of the project's virtual pump,
#: any other value reads as "too warm".
AUX_TEMPERATURE_LOW: Final = 0x0002


@dataclass(frozen=True, slots=True)
class PumpStatus:
    """The pump's state when last read (IDD Status and Annunciation Status, IDS 1.0 §3.2,
    §3.3)."""

    therapy: TherapyState | None
    operational: OperationalState | None
    reservoir_iu: float | None
    reservoir_attached: bool
    annunciation: Annunciation | None = None
    annunciation_status: AnnunciationStatus | None = None
    annunciation_instance_id: int | None = None


def _amount(value: SFloat) -> float | None:
    return float(value) if value.is_finite and float(value) >= 0 else None


def annunciation_of(annunciation_type: ids.AnnunciationType | int,
                    aux_info_1: int | None) -> Annunciation | None:
    if not isinstance(annunciation_type, ids.AnnunciationType):
        return None
    found = ANNUNCIATION_TYPES.get(annunciation_type)
    if (annunciation_type is ids.AnnunciationType.TEMPERATURE_OUT_OF_RANGE
            and aux_info_1 == AUX_TEMPERATURE_LOW):
        return Annunciation.TEMPERATURE_TOO_LOW
    return found


@dataclass(slots=True)
class _Reference:
    """The time base of the events after a Reference Time event (IDS 1.0 §3.9)."""

    sequence: int
    device_time: dt.datetime
    utc_offset: dt.timedelta | None

    def to_state(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "device_time": self.device_time.isoformat(),
                "utc_offset_min": None if self.utc_offset is None
                else int(self.utc_offset.total_seconds() // 60)}

    @classmethod
    def from_state(cls, value: object) -> _Reference | None:
        if not isinstance(value, Mapping):
            return None
        try:
            sequence = int(value["sequence"])
            device_time = dt.datetime.fromisoformat(str(value["device_time"]))
            minutes = value.get("utc_offset_min")
            offset = None if minutes is None else dt.timedelta(minutes=int(minutes))
        except (KeyError, TypeError, ValueError):
            return None
        if device_time.tzinfo is not None:
            return None
        return cls(sequence, device_time, offset)


def event_record(event: HistoryData, device_id: str,
                 reference: _Reference | None, received: dt.datetime) -> AnyRecord | None:
    """The canonical record of one history event (``None`` for events without one).

    ``device_time`` = Reference Time + Relative Offset (IDS 1.0 §3.9); without a known
    Reference Time the record is stamped ``received`` and marked ``DEVICE_TIME_UNKNOWN``.
    """
    data = event.event_data
    if reference is None:
        device_time: dt.datetime | None = None
        time = received
        quality = frozenset({TimeQuality.DEVICE_TIME_UNKNOWN})
    else:
        device_time = reference.device_time + event.relative_offset_time
        time = provisional_utc(device_time, reference.utc_offset)
        quality = frozenset()
    common: dict[str, Any] = {"device_id": device_id, "time": time,
                              "sequence": event.sequence_number, "device_time": device_time,
                              "time_quality": quality}
    if isinstance(data, BolusProgrammedPart1 | BolusDeliveredPart1):
        fast, extended = _amount(data.fast_amount), _amount(data.extended_amount)
        if fast is None or extended is None:
            raise RecordError(f"bolus {data.bolus_id} has no usable amount")
        phase = (BolusPhase.PROGRAMMED if isinstance(data, BolusProgrammedPart1)
                 else BolusPhase.DELIVERED)
        bolus_type = lookup(BOLUS_TYPES, data.bolus_type) or BolusType.FAST
        return InsulinBolus(**common, bolus_id=data.bolus_id, phase=phase,
                            bolus_type=bolus_type, fast_iu=fast, extended_iu=extended,
                            extended_duration_min=data.duration)
    if isinstance(data, DeliveredBasalRateChanged):
        rate = _amount(data.new_rate)
        if rate is None:
            raise RecordError("basal rate change without a usable new rate")
        return BasalRateChange(**common, rate_iu_per_h=rate,
                               previous_rate_iu_per_h=_amount(data.old_rate))
    if isinstance(data, TbrAdjustmentStarted):
        value = _amount(data.adjustment_value)
        if value is None:
            raise RecordError("TBR without a usable adjustment value")
        if data.tbr_type == ids.TbrType.RELATIVE:
            # The Adjustment Value of a relative TBR is a factor on the basal rate
            # (IDS 1.0 §3.6 Set TBR Adjustment); canonical relative TBRs are in percent.
            return TempBasalStart(**common, temp_basal_type=TempBasalType.RELATIVE,
                                  value=round(value * 100, 6),
                                  duration_min=data.duration_programmed)
        return TempBasalStart(**common, temp_basal_type=TempBasalType.ABSOLUTE, value=value,
                              duration_min=data.duration_programmed)
    if isinstance(data, TbrAdjustmentEnded):
        return TempBasalEnd(**common, effective_duration_min=data.effective_duration,
                            canceled=data.end_reason == TbrEndReason.CANCELED)
    if isinstance(data, TotalDailyInsulinDelivery):
        bolus, basal = _amount(data.bolus_delivered), _amount(data.basal_delivered)
        if bolus is None or basal is None:
            raise RecordError("total daily insulin without usable amounts")
        return TotalDailyInsulin(**common, day=data.date, bolus_iu=bolus, basal_iu=basal)
    if isinstance(data, ReservoirRemainingAmountChanged):
        remaining = _amount(data.remaining_amount)
        if remaining is None:
            raise RecordError("reservoir change without a usable amount")
        return ReservoirLevel(**common, remaining_iu=remaining)
    if isinstance(data, TherapyControlStateChanged):
        new_t = lookup(THERAPY_STATES, data.new_state)
        if new_t is None:
            return None
        return TherapyStateChange(**common, new_state=new_t,
                                  previous_state=lookup(THERAPY_STATES, data.old_state))
    if isinstance(data, OperationalStateChanged):
        new_o = lookup(OPERATIONAL_STATES, data.new_state)
        if new_o is None:
            return None
        return OperationalStateChange(
            **common, new_state=new_o,
            previous_state=lookup(OPERATIONAL_STATES, data.old_state))
    if isinstance(data, AnnunciationStatusChangedPart1):
        what = annunciation_of(data.annunciation_type, data.aux_info_1)
        status = lookup(ANNUNCIATION_STATUSES, data.annunciation_status)
        if what is None or status is None:
            return None
        return AnnunciationEvent(**common, annunciation=what, status=status,
                                 instance_id=data.annunciation_instance_id)
    return None


def reference_of(event: HistoryData) -> _Reference | None:
    """The time base a Reference Time (or Reference Time Base Offset) event sets."""
    data = event.event_data
    try:
        if isinstance(data, ReferenceTime):
            return _Reference(event.sequence_number, data.date_time.to_datetime(),
                              data.utc_offset)
        if isinstance(data, ReferenceTimeBaseOffset):
            return _Reference(event.sequence_number,
                              data.base_time.to_datetime()
                              + dt.timedelta(minutes=data.time_offset), None)
    except ProtocolError:
        return None
    return None


@dataclass(slots=True)
class _History:
    records: list[AnyRecord] = field(default_factory=list)
    complete_through: int | None = None
    reference: _Reference | None = None
    notices: list[str] = field(default_factory=list)


class InsulinPumpDriver(BleDriver):
    """An insulin pump over IDS. State: ``{"last_sequence": int, "reference": {...}}``."""

    KIND = DeviceKind.INSULIN_PUMP
    SERVICE_UUID = INSULIN_DELIVERY_SERVICE_UUID

    _racp: GattCharacteristic | None = None
    e2e: bool = False
    status: PumpStatus | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counter = 0
        self.features: IddFeatures | None = None

    async def _on_ready(self) -> None:
        await self._subscribe(IdsCharacteristic.IDD_HISTORY_DATA, HISTORY, indicate=False)
        self._racp = await self._subscribe(IdsCharacteristic.IDD_RECORD_ACCESS_CONTROL_POINT,
                                           RACP, indicate=True)

    # --- reading state ----------------------------------------------------------------------

    async def read_features(self) -> IddFeatures:
        """IDD Features (IDS 1.0 §3.4); sets :attr:`e2e`."""
        await self.connect()
        raw = await self.central.read(self._char(IdsCharacteristic.IDD_FEATURES))
        try:
            features = IddFeatures.from_bytes(raw)
        except ProtocolError as exc:
            raise DeviceError(f"IDD Features unreadable: {exc}", self.address) from exc
        self.e2e = features.e2e_supported
        self.features = features
        return features

    async def read_status(self) -> PumpStatus:
        """IDD Status and Annunciation Status (IDS 1.0 §3.2, §3.3), E2E-checked."""
        await self.connect()
        if self.features is None:
            await self.read_features()
        try:
            status = IddStatus.from_bytes(await self.central.read(
                self._char(IdsCharacteristic.IDD_STATUS)), self.e2e)
            annunciation = IddAnnunciationStatus.from_bytes(await self.central.read(
                self._char(IdsCharacteristic.IDD_ANNUNCIATION_STATUS)), self.e2e)
        except ProtocolError as exc:
            raise DeviceError(f"IDD status unreadable: {exc}", self.address) from exc
        reservoir = status.reservoir_remaining_amount
        what = state = None
        if annunciation.annunciation_type is not None:
            what = annunciation_of(annunciation.annunciation_type, annunciation.aux_info_1)
            state = lookup(ANNUNCIATION_STATUSES, annunciation.annunciation_status)
        result = PumpStatus(
            therapy=lookup(THERAPY_STATES, status.therapy_control_state),
            operational=lookup(OPERATIONAL_STATES, status.operational_state),
            reservoir_iu=float(reservoir) if reservoir.is_finite else None,
            reservoir_attached=status.reservoir_attached, annunciation=what,
            annunciation_status=state,
            annunciation_instance_id=annunciation.annunciation_instance_id)
        self.status = result
        return result

    # --- IDD RACP ---------------------------------------------------------------------------

    def _e2e_counter(self) -> int | None:
        """The E2E-Counter of the next value written (IDS 1.0 §3, E2E-Protection): counts
        up modulo 256 per written value; ``None`` without E2E."""
        if not self.e2e:
            return None
        value = self._counter
        self._counter = (self._counter + 1) % 256
        return value

    async def _exchange(self, request: IddRacpRequest,
                        what: str) -> IddRacpNumberOfRecords | IddRacpResponse:
        if self._racp is None:
            raise DeviceError("IDD RACP not subscribed", self.address)
        self.inbox.clear(RACP)
        try:
            await self.central.write(self._racp, bytes(request))
        except AttError as exc:
            if (exc.code != ATT_PROCEDURE_ALREADY_IN_PROGRESS
                    or request.op_code is IddRacpOpCode.ABORT_OPERATION):
                raise
            # A report of an earlier, abandoned sync still runs (IDS 1.0 §3.8): abort it,
            # then ask again.
            await self._abort_and_wait()
            if request.e2e_counter is not None:
                request = dataclasses.replace(request, e2e_counter=self._e2e_counter())
            await self.central.write(self._racp, bytes(request))
        while True:
            value = await self._await_response(RACP, (HISTORY,), what)
            try:
                answer = parse_idd_racp(value, self.e2e)
            except ProtocolError as exc:
                raise DeviceError(f"{what}: unreadable IDD RACP answer ({exc})",
                                  self.address) from exc
            if isinstance(answer, IddRacpNumberOfRecords):
                if request.op_code is IddRacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
                    return answer
            elif (isinstance(answer, IddRacpResponse)
                  and answer.request_op_code == request.op_code):
                return answer
            logger.info("%s: ignoring stray IDD RACP value %s", self.address, value.hex(" "))

    async def _count(self, request: IddRacpRequest) -> int | None:
        answer = await self._exchange(request, "IDD RACP count")
        if isinstance(answer, IddRacpNumberOfRecords):
            return answer.count
        if answer.response_code == IddRacpResponseCode.NO_RECORDS_FOUND:
            return 0
        return None

    async def _abort_and_wait(self) -> None:
        """Abort the report in progress and wait for the abort's answer."""
        assert self._racp is not None
        await self.central.write(self._racp, bytes(racp_abort(self._e2e_counter())))
        while True:
            value = await self.inbox.next(RACP, self.options.procedure_timeout_s,
                                          "IDD RACP abort")
            with contextlib.suppress(ProtocolError):
                answer = parse_idd_racp(value, self.e2e)
                if (isinstance(answer, IddRacpResponse)
                        and answer.request_op_code == IddRacpOpCode.ABORT_OPERATION):
                    self.inbox.clear(RACP)
                    return

    async def _abort_quietly(self) -> None:
        if self._racp is None or not self.central.is_connected:
            return
        try:
            await self.central.write(self._racp, bytes(racp_abort(self._e2e_counter())))
        except DeviceError as exc:
            logger.info("%s: abort not sent: %s", self.address, exc)

    # --- sync ------------------------------------------------------------------------------

    async def sync(self, state: Mapping[str, Any]) -> SyncResult:
        await self.connect()
        info = await self.read_info()
        clock = await read_clock(self.central)
        await self.read_features()
        status = await self.read_status()
        notices: list[str] = []
        if status.annunciation is not None and status.annunciation_status in (
                AnnunciationStatus.PENDING, AnnunciationStatus.SNOOZED):
            notices.append(f"pump annunciation {status.annunciation.value} "
                           f"({status.annunciation_status.value}, instance "
                           f"{status.annunciation_instance_id})")
        last = state_int(state, "last_sequence", MAX_SEQUENCE)
        reference = _Reference.from_state(state.get("reference"))
        full = last is None
        if last is not None:
            if last == MAX_SEQUENCE:
                notices.append("history sequence number at its maximum: reading all events")
                full = True
            elif await self._count(racp_count_from_sequence(last, self._e2e_counter())) == 0:
                notices.append(
                    f"history reset or cleared: the pump holds no event numbered {last} or "
                    "higher any more; reading all events again")
                full = True
        if full:
            reference = None
            expected = await self._count(racp_count_all(self._e2e_counter()))
            request = racp_report_all(self._e2e_counter())
        else:
            assert last is not None
            expected = await self._count(racp_count_from_sequence(last + 1,
                                                                  self._e2e_counter()))
            request = racp_report_from_sequence(last + 1, self._e2e_counter())
        unchanged: dict[str, Any] = {} if full else dict(state)
        if expected == 0:
            return SyncResult(info, (), unchanged, clock, tuple(notices))
        self.inbox.clear(HISTORY)
        try:
            answer = await self._exchange(request, "IDD RACP report")
        except DeviceDisconnected as exc:
            partial = self._history(self.inbox.take_all(HISTORY), info, reference)
            raise TransferInterrupted(
                f"link lost after {len(partial.records)} history record(s): {exc}",
                SyncResult(info, tuple(partial.records), dict(state), clock,
                           (*notices, *summarize(partial.notices))), self.address) from exc
        except DeviceTimeout:
            await self._abort_quietly()
            raise
        if isinstance(answer, IddRacpResponse) and answer.response_code not in (
                IddRacpResponseCode.SUCCESS, IddRacpResponseCode.NO_RECORDS_FOUND):
            raise DeviceError(f"the pump refused the report: {answer.response_code!r}",
                              self.address)
        history = self._history(self.inbox.take_all(HISTORY), info, reference)
        notices.extend(summarize(history.notices))
        if history.complete_through is None:
            return SyncResult(info, tuple(history.records), unchanged, clock, tuple(notices))
        new_state: dict[str, Any] = {"last_sequence": history.complete_through}
        if history.reference is not None:
            new_state["reference"] = history.reference.to_state()
        return SyncResult(info, tuple(history.records), new_state, clock, tuple(notices))

    def _history(self, values: Sequence[bytes], info: DeviceInfo,
                 reference: _Reference | None) -> _History:
        """Decode history events in order, rebuild their times and records."""
        received = dt.datetime.now(dt.UTC)
        out = _History(reference=reference)
        events: list[HistoryData | None] = []
        first_bad: int | None = None
        for position, raw in enumerate(values):
            try:
                events.append(HistoryData.from_bytes(raw, self.e2e))
            except ProtocolError as exc:
                out.notices.append(f"history event rejected: {type(exc).__name__}")
                if first_bad is None:
                    first_bad = position
                events.append(None)
        stopped = False
        # After a rejected event the time base is unknown until the next good Reference
        # Time: the rejected one may have been a Reference Time, and an offset counted from
        # it would be placed on the wrong base. Those events are left for the next sync.
        tainted = False
        skipped = 0
        seen: set[int] = set()
        current = reference
        for event in events:
            if event is None:
                stopped = tainted = True
                continue
            if event.sequence_number == CORRUPTION_SEQUENCE:
                out.notices.append("the pump reports corrupted history (Data Corruption event)")
                continue
            if event.sequence_number in seen:
                continue
            seen.add(event.sequence_number)
            new_reference = reference_of(event)
            if new_reference is not None:
                current = new_reference
                tainted = False
            elif event.event_type == HistoryEventType.REFERENCE_TIME:
                out.notices.append(f"event {event.sequence_number}: unusable Reference Time")
                current = None
            elif tainted:
                skipped += 1
            else:
                try:
                    record = event_record(event, info.device_id, current, received)
                except (RecordError, ProtocolError) as exc:
                    out.notices.append(f"event {event.sequence_number} skipped: {exc}")
                    record = None
                if record is not None:
                    out.records.append(record)
            if not stopped:
                out.complete_through = event.sequence_number
                out.reference = current
        if skipped:
            out.notices.append(f"{skipped} event(s) after a rejected one held back until "
                               "their Reference Time is read again")
        return out
