"""The virtual insulin pump (IDS 1.0) driven over a real bumble link by a central written here.

The central uses bumble's plain GATT client only (connect, pair, discover, subscribe, read,
write) and decodes everything with the project's IDS codecs; the canonical records the pump
was fed are rebuilt from the IDD History Data independently of the pump's own tables.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import numpy as np
import pytest
from bumble.att import ATT_Error
from bumble.link import LocalLink

from bridge.errors import CrcMismatch
from bridge.protocols.cts import CtsCharacteristic, CurrentTime
from bridge.protocols.ids import (
    ActiveBasalRateDeliveryResponse,
    ActiveBolusIdsResponse,
    AmountCommand,
    AnnunciationCommand,
    AnnunciationFlags,
    AnnunciationStatus,
    AnnunciationType,
    BolusFlags,
    BolusIdCommand,
    BolusType,
    CommandOpCode,
    CommandRequest,
    CommandResponse,
    CounterResponse,
    CounterType,
    CounterValueSelection,
    GetCounter,
    IddAnnunciationStatus,
    IddFeatureFlags,
    IddFeatures,
    IddRacpNumberOfRecords,
    IddRacpOpCode,
    IddRacpResponse,
    IddRacpResponseCode,
    IddResponseCode,
    IddStatus,
    IddStatusChanged,
    IddStatusChangedFlags,
    IdsCharacteristic,
    InsulinOnBoardResponse,
    OperationalState,
    ResetStatus,
    SetBolus,
    SetTbrAdjustment,
    SetTherapyControlState,
    StatusReaderOpCode,
    StatusReaderRequest,
    StatusReaderResponse,
    TbrFlags,
    TbrType,
    TherapyControlState,
    TotalDailyInsulinStatusResponse,
    parse_command_cp,
    parse_idd_racp,
    parse_status_reader_cp,
    racp_abort,
    racp_count_all,
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
    RecordingReason,
    ReferenceTime,
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
    BasalRateChange,
    BloodGlucoseReading,
    BolusPhase,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    OperationalStateChange,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyStateChange,
    TotalDailyInsulin,
)
from bridge.records import AnnunciationStatus as CanonicalAnnunciationStatus
from bridge.records import BolusType as CanonicalBolusType
from bridge.records import OperationalState as CanonicalOperationalState
from bridge.records import TherapyState as CanonicalTherapyState
from simulators.ble.common import PeripheralConfig
from simulators.ble.insulin_pump import (
    LOG_COMMAND,
    LOG_RACP,
    LOG_STATUS_READER,
    InsulinPumpPeripheral,
    PumpConfig,
    PumpRecord,
)
from simulators.device_clock import DeviceClock, DeviceLog, SimCalendar
from simulators.faults import FaultConfig
from simulators.therapy import BasalBlock, PumpBank, PumpSettings, TherapySettings
from tests.devices.conftest import Central, FakeNow, device_info, next_value, run

PUMP_ADDRESS = "F0:00:00:00:00:0A"
DEVICE_ID = "pump-under-test"
C = IdsCharacteristic

# --- what the test feeds ------------------------------------------------------------------


def therapy_history() -> list[PumpRecord]:
    """Two days of one pump as simulators.therapy writes them: basal profile changes,
    boluses, a relative TBR, a daily reservoir change (states, priming), midnight totals."""
    cal = SimCalendar(dt.date(2027, 3, 1), 2, "UTC")
    log = DeviceLog(info=DeviceInfo(device_id=DEVICE_ID, kind=DeviceKind.INSULIN_PUMP),
                    clock=DeviceClock(epoch=cal.start, offset_s=42.5, timezone="UTC"),
                    sequence_bits=32)
    bank = PumpBank(basal_u_per_h=[0.9],
                    settings=PumpSettings(initial_u=150.0, refill_every_days=1,
                                          battery_life_days=0),
                    therapy=TherapySettings(basal_profile=(BasalBlock(0, 1.0),
                                                           BasalBlock(360, 1.3),
                                                           BasalBlock(1320, 0.8))),
                    calendar=cal, rngs=[np.random.default_rng(5)], logs=[log])
    boluses = {7 * 60: 4.35, 12 * 60 + 30: 6.0, 1440 + 8 * 60: 3.2}
    for minute in range(cal.minutes):
        if minute in boluses:
            bank.request_bolus(0, minute, boluses[minute])
        if minute == 15 * 60:
            bank.start_temp_basal(0, minute, 50.0, 90)
        bank.step(minute)
    records = log.finalize()
    out: list[PumpRecord] = []
    for record in records:
        assert isinstance(record, InsulinBolus | BasalRateChange | TempBasalStart
                          | TempBasalEnd | TotalDailyInsulin | ReservoirLevel
                          | TherapyStateChange | OperationalStateChange | AnnunciationEvent)
        out.append(record)
    return out


T0 = dt.datetime(2027, 3, 1, 0, 0, tzinfo=dt.UTC)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def small_history() -> list[PumpRecord]:
    """A morning: basal 1.0 IU/h from midnight, a 3.5 IU bolus delivered at 07:00."""
    return [
        ReservoirLevel(device_id=DEVICE_ID, time=at(0), remaining_iu=180.0),
        BasalRateChange(device_id=DEVICE_ID, time=at(0), rate_iu_per_h=1.0),
        InsulinBolus(device_id=DEVICE_ID, time=at(6.95), bolus_id=7,
                     phase=BolusPhase.PROGRAMMED, fast_iu=3.5),
        InsulinBolus(device_id=DEVICE_ID, time=at(7), bolus_id=7,
                     phase=BolusPhase.DELIVERED, fast_iu=3.5),
    ]


def make_pump(link: LocalLink, records: list[PumpRecord], *, now: FakeNow,
              faults: FaultConfig | None = None, e2e: bool = False,
              allow_time_write: bool = False) -> InsulinPumpPeripheral:
    info = device_info(DEVICE_ID, DeviceKind.INSULIN_PUMP, "IP0001")
    config = PeripheralConfig(name="Virtual Pump", address=PUMP_ADDRESS, info=info,
                              faults=faults or FaultConfig(), now=now,
                              allow_time_write=allow_time_write)
    return InsulinPumpPeripheral(config, link, records=records, pump=PumpConfig(e2e=e2e))


# --- the central's side: rebuilding canonical records from the history -----------------------


def q(value: float) -> float:
    """``value`` at SFLOAT resolution (what the wire can carry)."""
    return float(SFloat.from_value(round(value, 3)))


THERAPY = {TherapyControlState.STOP: CanonicalTherapyState.STOP,
           TherapyControlState.PAUSE: CanonicalTherapyState.PAUSE,
           TherapyControlState.RUN: CanonicalTherapyState.RUN}
OPERATIONAL = {OperationalState.OFF: CanonicalOperationalState.OFF,
               OperationalState.STANDBY: CanonicalOperationalState.STANDBY,
               OperationalState.PREPARING: CanonicalOperationalState.PREPARING,
               OperationalState.PRIMING: CanonicalOperationalState.PRIMING,
               OperationalState.WAITING: CanonicalOperationalState.WAITING,
               OperationalState.READY: CanonicalOperationalState.READY}
BOLUS_TYPES = {BolusType.FAST: CanonicalBolusType.FAST,
               BolusType.EXTENDED: CanonicalBolusType.EXTENDED,
               BolusType.MULTIWAVE: CanonicalBolusType.MULTIWAVE}
ANNUNCIATIONS = {AnnunciationType.TBR_OVER: Annunciation.TEMP_BASAL_OVER,
                 AnnunciationType.OCCLUSION_DETECTED: Annunciation.OCCLUSION,
                 AnnunciationType.RESERVOIR_LOW: Annunciation.RESERVOIR_LOW,
                 AnnunciationType.RESERVOIR_EMPTY: Annunciation.RESERVOIR_EMPTY,
                 AnnunciationType.BOLUS_CANCELED: Annunciation.BOLUS_CANCELED,
                 AnnunciationType.BATTERY_LOW: Annunciation.BATTERY_LOW}
ANNUNCIATION_STATUS = {AnnunciationStatus.PENDING: CanonicalAnnunciationStatus.PENDING,
                       AnnunciationStatus.SNOOZED: CanonicalAnnunciationStatus.SNOOZED,
                       AnnunciationStatus.CONFIRMED: CanonicalAnnunciationStatus.CONFIRMED}

View = tuple[Any, ...]


def from_history(events: list[HistoryData]) -> list[View]:
    """What a collector learns from the history: one comparable tuple per canonical record,
    with the device time rebuilt from Reference Time + Relative Offset."""
    out: list[View] = []
    base: dt.datetime | None = None
    for event in events:
        data = event.event_data
        if isinstance(data, ReferenceTime):
            base = data.date_time.to_datetime()
            continue
        assert base is not None, "an event before any Reference Time"
        when = base + dt.timedelta(seconds=event.relative_offset)
        if isinstance(data, BolusProgrammedPart1 | BolusDeliveredPart1):
            phase = (BolusPhase.PROGRAMMED if isinstance(data, BolusProgrammedPart1)
                     else BolusPhase.DELIVERED)
            out.append(("bolus", when, phase, data.bolus_id, BOLUS_TYPES[BolusType(
                data.bolus_type)], data.fast_amount_iu, data.extended_amount_iu, data.duration))
        elif isinstance(data, DeliveredBasalRateChanged):
            old = None if not data.old_rate.is_finite else data.old_rate_iu_per_h
            out.append(("basal", when, data.new_rate_iu_per_h, old))
        elif isinstance(data, TbrAdjustmentStarted):
            relative = data.tbr_type == TbrType.RELATIVE
            value = round(data.adjustment * 100, 6) if relative else data.adjustment
            out.append(("tbr-start", when, TempBasalType.RELATIVE if relative
                        else TempBasalType.ABSOLUTE, value, data.duration_programmed))
        elif isinstance(data, TbrAdjustmentEnded):
            out.append(("tbr-end", when, data.effective_duration,
                        data.end_reason == TbrEndReason.CANCELED))
        elif isinstance(data, TotalDailyInsulinDelivery):
            out.append(("tdi", when, data.date, data.bolus_iu, data.basal_iu))
        elif isinstance(data, ReservoirRemainingAmountChanged):
            out.append(("reservoir", when, data.remaining_iu))
        elif isinstance(data, TherapyControlStateChanged):
            out.append(("therapy", when, THERAPY[TherapyControlState(data.new_state)],
                        THERAPY.get(TherapyControlState(data.old_state))))
        elif isinstance(data, OperationalStateChanged):
            out.append(("operational", when, OPERATIONAL[OperationalState(data.new_state)],
                        OPERATIONAL.get(OperationalState(data.old_state))))
        elif isinstance(data, AnnunciationStatusChangedPart1):
            out.append(("annunciation", when,
                        ANNUNCIATIONS[AnnunciationType(data.annunciation_type)],
                        ANNUNCIATION_STATUS[AnnunciationStatus(data.annunciation_status)],
                        data.annunciation_instance_id))
    return out


def expected_view(records: list[PumpRecord]) -> list[View]:
    """The same tuples straight from the canonical records fed in."""
    out: list[View] = []
    for r in records:
        assert r.device_time is not None
        when = r.device_time.replace(microsecond=0)
        if isinstance(r, InsulinBolus):
            out.append(("bolus", when, r.phase, r.bolus_id, r.bolus_type, q(r.fast_iu),
                        q(r.extended_iu), r.extended_duration_min))
        elif isinstance(r, BasalRateChange):
            old = None if r.previous_rate_iu_per_h is None else q(r.previous_rate_iu_per_h)
            out.append(("basal", when, q(r.rate_iu_per_h), old))
        elif isinstance(r, TempBasalStart):
            value = (round(q(r.value / 100) * 100, 6)
                     if r.temp_basal_type is TempBasalType.RELATIVE else q(r.value))
            out.append(("tbr-start", when, r.temp_basal_type, value, r.duration_min))
        elif isinstance(r, TempBasalEnd):
            out.append(("tbr-end", when, r.effective_duration_min, r.canceled))
        elif isinstance(r, TotalDailyInsulin):
            out.append(("tdi", when, r.day, q(r.bolus_iu), q(r.basal_iu)))
        elif isinstance(r, ReservoirLevel):
            out.append(("reservoir", when, q(r.remaining_iu)))
        elif isinstance(r, TherapyStateChange):
            out.append(("therapy", when, r.new_state, r.previous_state))
        elif isinstance(r, OperationalStateChange):
            out.append(("operational", when, r.new_state, r.previous_state))
        else:
            out.append(("annunciation", when, r.annunciation, r.status, r.instance_id))
    return out


# --- the central's side: the procedure ---------------------------------------------------

Queues = dict[str, asyncio.Queue[bytes]]


async def open_session(link: LocalLink, *, pair: bool = True) -> tuple[Central, Queues]:
    """Connect, bond, raise the MTU, discover, enable every indication and notification."""
    central = await Central.open(link)
    await central.connect(PUMP_ADDRESS)
    if pair:
        await central.pair()
    assert central.peer is not None
    await central.peer.request_mtu(64)
    await central.discover()
    queues: Queues = {}
    if pair:
        for name, uuid in (("status-changed", C.IDD_STATUS_CHANGED), ("status", C.IDD_STATUS),
                           ("annunciation", C.IDD_ANNUNCIATION_STATUS),
                           ("status-reader", C.IDD_STATUS_READER_CONTROL_POINT),
                           ("command", C.IDD_COMMAND_CONTROL_POINT),
                           ("racp", C.IDD_RECORD_ACCESS_CONTROL_POINT)):
            queues[name] = await central.subscribe(uuid, indicate=True)
        queues["history"] = await central.subscribe(C.IDD_HISTORY_DATA)
    return central, queues


def take_all(queue: asyncio.Queue[bytes]) -> list[bytes]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def racp(central: Central, queues: Queues, request: bytes, *,
               e2e: bool = False) -> tuple[list[bytes], Any]:
    """Write an IDD RACP request; the history frames notified before the response, and the
    decoded response."""
    await central.write(C.IDD_RECORD_ACCESS_CONTROL_POINT, request)
    response = parse_idd_racp(await next_value(queues["racp"]), e2e)
    return take_all(queues["history"]), response


async def command(central: Central, queues: Queues, request: bytes) -> Any:
    await central.write(C.IDD_COMMAND_CONTROL_POINT, request)
    return parse_command_cp(await next_value(queues["command"]))


async def status_reader(central: Central, queues: Queues, request: bytes,
                        e2e: bool = False) -> Any:
    await central.write(C.IDD_STATUS_READER_CONTROL_POINT, request)
    return parse_status_reader_cp(await next_value(queues["status-reader"]), e2e)


def decode_history(frames: list[bytes], e2e: bool = False) -> list[HistoryData]:
    return [HistoryData.from_bytes(f, e2e) for f in frames]


# --- tests --------------------------------------------------------------------------------


def test_read_out_maps_back_to_the_canonical_records() -> None:
    records = therapy_history()
    assert {type(r) for r in records} >= {InsulinBolus, BasalRateChange, TempBasalStart,
                                          TempBasalEnd, TotalDailyInsulin, ReservoirLevel,
                                          TherapyStateChange, OperationalStateChange,
                                          AnnunciationEvent}
    last = records[-1].time

    async def body() -> None:
        link = LocalLink()
        now = FakeNow(last + dt.timedelta(minutes=5))
        pump = make_pump(link, records, now=now)
        await pump.start()
        central, queues = await open_session(link)
        try:
            features = IddFeatures.from_bytes(await central.read(C.IDD_FEATURES))
            assert not features.e2e_supported and features.e2e_crc == 0xFFFF
            assert features.insulin_concentration_iu_per_ml == 100.0
            assert IddFeatureFlags.INSULIN_ON_BOARD_SUPPORTED in features.flags
            status = IddStatus.from_bytes(await central.read(C.IDD_STATUS))
            assert status.therapy_control_state == TherapyControlState.RUN
            assert status.operational_state == OperationalState.READY
            assert status.reservoir_attached and 0 < status.reservoir_remaining_iu <= 300
            changed = IddStatusChanged.from_bytes(await central.read(C.IDD_STATUS_CHANGED))
            assert IddStatusChangedFlags.HISTORY_EVENT_RECORDED in changed.flags

            frames, done = await racp(central, queues, bytes(racp_report_all()))
            assert done == IddRacpResponse(IddRacpOpCode.REPORT_STORED_RECORDS,
                                           IddRacpResponseCode.SUCCESS)
            events = decode_history(frames)
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[0].event_type == HistoryEventType.REFERENCE_TIME
            # Two days exceed the u16 relative offset: periodic Reference Times follow.
            references = [e.event_data for e in events
                          if isinstance(e.event_data, ReferenceTime)]
            assert len(references) >= 3
            assert {r.recording_reason for r in references[1:]} == {
                RecordingReason.PERIODIC_RECORDING}
            assert from_history(events) == expected_view(records)

            _, count = await racp(central, queues, bytes(racp_count_all()))
            assert count == IddRacpNumberOfRecords(len(events))

            # Incremental: a live record, then "≥ last sequence + 1" brings only its events.
            now.advance(minutes=10)
            # Stamped by the same device clock as the history (42.5 s ahead).
            stamp = records[-1].device_time
            assert stamp is not None
            live = ReservoirLevel(device_id=DEVICE_ID, time=now(), remaining_iu=123.4,
                                  device_time=stamp + (now() - records[-1].time))
            pump.add_record(live)
            indicated = IddStatusChanged.from_bytes(
                await next_value(queues["status-changed"]))
            assert IddStatusChangedFlags.RESERVOIR_STATUS_CHANGED in indicated.flags
            newer, done = await racp(central, queues, bytes(racp_report_from_sequence(
                events[-1].sequence_number + 1)))
            assert done.response_code == IddRacpResponseCode.SUCCESS
            new_events = decode_history(newer)
            assert [e.sequence_number for e in new_events] == [len(events)]
            assert isinstance(new_events[0].event_data, ReservoirRemainingAmountChanged)
            assert new_events[0].event_data.remaining_iu == 123.4
            _, none_left = await racp(central, queues, bytes(racp_report_from_sequence(
                len(events) + 1)))
            assert none_left.response_code == IddRacpResponseCode.NO_RECORDS_FOUND
            # A read-only collector wrote nothing but reads.
            assert pump.command_writes == []
            assert {w.characteristic for w in pump.control_point_log} == {LOG_RACP}
        finally:
            await central.close()
            await pump.stop()

    run(body)


@pytest.mark.parametrize("e2e", [False, True])
def test_e2e_on_and_off(e2e: bool) -> None:
    async def body() -> None:
        link = LocalLink()
        now = FakeNow(at(8))
        pump = make_pump(link, small_history(), now=now, e2e=e2e)
        await pump.start()
        central, queues = await open_session(link)
        counter = 0 if e2e else None
        try:
            features = IddFeatures.from_bytes(await central.read(C.IDD_FEATURES))
            assert features.e2e_supported is e2e
            first = IddStatus.from_bytes(await central.read(C.IDD_STATUS), e2e)
            second = IddStatus.from_bytes(await central.read(C.IDD_STATUS), e2e)
            if e2e:
                assert first.e2e_counter is not None
                assert second.e2e_counter == (first.e2e_counter + 1) % 256
                raw = await central.read(C.IDD_STATUS)
                with pytest.raises(CrcMismatch):
                    IddStatus.from_bytes(raw[:-2] + bytes([raw[-2] ^ 0xFF, raw[-1]]), True)
            else:
                assert first.e2e_counter is None and first == second
            tdi = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS, counter)), e2e)
            assert isinstance(tdi, TotalDailyInsulinStatusResponse)
            assert (tdi.e2e_counter is not None) is e2e
            frames, done = await racp(central, queues, bytes(racp_report_all(counter)), e2e=e2e)
            assert done.response_code == IddRacpResponseCode.SUCCESS
            events = decode_history(frames, e2e)
            assert len(events) == 1 + 1 + 1 + 2 + 2
            if e2e:
                assert [e.e2e_counter for e in events] == list(range(len(events)))
                # A written value whose E2E-CRC is wrong is refused (and logged).
                bad = bytearray(bytes(racp_report_all(0)))
                bad[-1] ^= 0xFF
                with pytest.raises(ATT_Error) as refused:
                    await central.write(C.IDD_RECORD_ACCESS_CONTROL_POINT, bytes(bad))
                assert refused.value.error_code == 0x80
                assert pump.control_point_log[-1].accepted is False
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_bad_e2e_crc_fault_is_caught_by_the_client() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, small_history(), now=FakeNow(at(8)), e2e=True,
                         faults=FaultConfig(seed=3, corrupt_frame_rate=1.0))
        await pump.start()
        central, queues = await open_session(link)
        try:
            frames, done = await racp(central, queues, bytes(racp_report_all(0)), e2e=True)
            assert done.response_code == IddRacpResponseCode.SUCCESS
            assert len(frames) == len(pump.memory)
            for frame in frames:
                with pytest.raises(CrcMismatch):
                    HistoryData.from_bytes(frame, True)
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_status_reader_answers_from_the_pump_state() -> None:
    async def body() -> None:
        link = LocalLink()
        now = FakeNow(at(8))
        pump = make_pump(link, small_history(), now=now)
        await pump.start()
        central, queues = await open_session(link)
        try:
            tdi = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_TOTAL_DAILY_INSULIN_STATUS)))
            # Midnight to 08:00 at 1.0 IU/h, and the 3.5 IU bolus of 07:00.
            assert isinstance(tdi, TotalDailyInsulinStatusResponse)
            assert (tdi.bolus_iu, tdi.basal_iu, tdi.total_iu) == (3.5, 8.0, 11.5)
            basal = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY)))
            assert isinstance(basal, ActiveBasalRateDeliveryResponse)
            assert basal.current_basal_rate_iu_per_h == 1.0 and basal.tbr_type is None
            iob = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_INSULIN_ON_BOARD)))
            # Linear decay over 240 min: 3.5 IU × (1 − 60/240).
            assert isinstance(iob, InsulinOnBoardResponse)
            assert iob.insulin_on_board_iu == pytest.approx(2.62, abs=0.01)
            assert iob.remaining_duration == 180
            ids_reply = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS)))
            assert ids_reply == StatusReaderResponse(StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS,
                                                     IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            lifetime = await status_reader(central, queues, bytes(GetCounter(
                CounterType.LIFETIME, CounterValueSelection.ELAPSED)))
            assert isinstance(lifetime, CounterResponse) and lifetime.counter_value == 8 * 60
            reset = await status_reader(central, queues, bytes(ResetStatus(
                IddStatusChangedFlags(0xFF))))
            assert reset == StatusReaderResponse(StatusReaderOpCode.RESET_STATUS,
                                                 IddResponseCode.SUCCESS)
            cleared = IddStatusChanged.from_bytes(await next_value(queues["status-changed"]))
            assert cleared.flags == IddStatusChangedFlags(0)
            assert [(w.characteristic, w.accepted) for w in pump.control_point_log] == [
                (LOG_STATUS_READER, True), (LOG_STATUS_READER, True), (LOG_STATUS_READER, True),
                (LOG_STATUS_READER, False), (LOG_STATUS_READER, True), (LOG_STATUS_READER, True)]
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_command_cp_write_is_carried_out_and_logged() -> None:
    async def body() -> None:
        link = LocalLink()
        now = FakeNow(at(8))
        pump = make_pump(link, small_history(), now=now)
        await pump.start()
        central, queues = await open_session(link)
        try:
            before = len(pump.memory)
            tbr = await command(central, queues, bytes(SetTbrAdjustment(
                TbrFlags(0), TbrType.RELATIVE, SFloat.from_value(0.5), 30)))
            assert tbr == CommandResponse(CommandOpCode.SET_TBR_ADJUSTMENT,
                                          IddResponseCode.SUCCESS)
            bolus = await command(central, queues, bytes(SetBolus(
                BolusFlags(0), BolusType.FAST, SFloat.from_value(2.0), SFloat.from_value(0), 0)))
            assert isinstance(bolus, BolusIdCommand)
            assert bolus.op_code is CommandOpCode.SET_BOLUS_RESPONSE and bolus.bolus_id == 8
            active = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS)))
            assert active == ActiveBolusIdsResponse((8,))
            basal = await status_reader(central, queues, bytes(StatusReaderRequest(
                StatusReaderOpCode.GET_ACTIVE_BASAL_RATE_DELIVERY)))
            assert basal.tbr_type == TbrType.RELATIVE and basal.tbr_duration_remaining == 30
            # 2 IU at 1.5 IU/min take 80 s; afterwards the pump reports the bolus delivered.
            now.advance(minutes=2)
            pump.advance()
            pause = await command(central, queues, bytes(SetTherapyControlState(
                TherapyControlState.PAUSE)))
            assert pause == CommandResponse(CommandOpCode.SET_THERAPY_CONTROL_STATE,
                                            IddResponseCode.SUCCESS)
            status = IddStatus.from_bytes(await central.read(C.IDD_STATUS))
            assert status.therapy_control_state == TherapyControlState.PAUSE
            refused = await command(central, queues, bytes(SetBolus(
                BolusFlags(0), BolusType.FAST, SFloat.from_value(1.0), SFloat.from_value(0), 0)))
            assert refused == CommandResponse(CommandOpCode.SET_BOLUS,
                                              IddResponseCode.PROCEDURE_NOT_APPLICABLE)
            max_bolus = await command(central, queues, bytes(CommandRequest(
                CommandOpCode.GET_MAX_BOLUS_AMOUNT)))
            assert max_bolus == AmountCommand(CommandOpCode.GET_MAX_BOLUS_AMOUNT_RESPONSE,
                                              SFloat.from_value(25.0))

            # Every write is in the log, in order, with whether the pump carried it out.
            log = [(w.characteristic, w.value[:2], w.accepted) for w in pump.control_point_log
                   if w.characteristic == LOG_COMMAND]
            assert log == [(LOG_COMMAND, b"\xff\x0f", True), (LOG_COMMAND, b"\x4b\x11", True),
                           (LOG_COMMAND, b"\x5a\x0f", True), (LOG_COMMAND, b"\x4b\x11", False),
                           (LOG_COMMAND, b"\x7d\x14", True)]
            assert len(pump.command_writes) == 5

            # What the commands did is history, like any other pump event.
            frames, _ = await racp(central, queues, bytes(racp_report_from_sequence(before)))
            kinds = [e.event_type for e in decode_history(frames)]
            assert kinds == [HistoryEventType.TBR_ADJUSTMENT_STARTED,
                             HistoryEventType.BOLUS_PROGRAMMED_PART_1_OF_2,
                             HistoryEventType.BOLUS_PROGRAMMED_PART_2_OF_2,
                             HistoryEventType.BOLUS_DELIVERED_PART_1_OF_2,
                             HistoryEventType.BOLUS_DELIVERED_PART_2_OF_2,
                             HistoryEventType.TBR_ADJUSTMENT_ENDED,
                             HistoryEventType.THERAPY_CONTROL_STATE_CHANGED]
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_annunciation_status_after_an_occlusion() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, small_history(), now=FakeNow(at(8)),
                         faults=FaultConfig(annunciations=frozenset({Annunciation.OCCLUSION})))
        await pump.start()
        central, queues = await open_session(link)
        try:
            value = IddAnnunciationStatus.from_bytes(
                await central.read(C.IDD_ANNUNCIATION_STATUS))
            assert AnnunciationFlags.ANNUNCIATION_PRESENT in value.flags
            assert value.annunciation_type == AnnunciationType.OCCLUSION_DETECTED
            assert value.annunciation_status == AnnunciationStatus.PENDING
            status = IddStatus.from_bytes(await central.read(C.IDD_STATUS))
            assert status.therapy_control_state == TherapyControlState.STOP  # delivery halted
            assert value.annunciation_instance_id is not None
            confirm = await command(central, queues, bytes(AnnunciationCommand(
                CommandOpCode.CONFIRM_ANNUNCIATION, value.annunciation_instance_id)))
            assert confirm == AnnunciationCommand(CommandOpCode.CONFIRM_ANNUNCIATION_RESPONSE,
                                                  value.annunciation_instance_id)
            after = IddAnnunciationStatus.from_bytes(await next_value(queues["annunciation"]))
            assert after.flags == AnnunciationFlags(0)
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_disconnect_in_the_middle_of_a_report() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, small_history(), now=FakeNow(at(8)),
                         faults=FaultConfig(disconnect_after_records=3))
        await pump.start()
        central, queues = await open_session(link)
        try:
            await central.write(C.IDD_RECORD_ACCESS_CONTROL_POINT, bytes(racp_report_all()))
            await asyncio.wait_for(central.disconnected.wait(), 5)
            frames = take_all(queues["history"])
            assert [e.sequence_number for e in decode_history(frames)] == [0, 1, 2]
            assert queues["racp"].empty()  # the report never finished
            assert pump.connections == []
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_refusals_and_duplicates() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, small_history(), now=FakeNow(at(8)),
                         faults=FaultConfig(duplicate_record_rate=1.0, response_delay_s=0.05))
        await pump.start()
        central, queues = await open_session(link, pair=False)
        try:
            # Without bonding the pump's data and control points stay closed (and the write
            # is still logged).
            with pytest.raises(ATT_Error):
                await central.read(C.IDD_STATUS)
            with pytest.raises(ATT_Error):
                await central.write(C.IDD_COMMAND_CONTROL_POINT, bytes(SetTherapyControlState(
                    TherapyControlState.STOP)))
            assert pump.control_point_log[-1].characteristic == LOG_COMMAND
            assert pump.control_point_log[-1].accepted is False
            await central.pair()
            # Indications not enabled: "CCCD improperly configured".
            with pytest.raises(ATT_Error) as no_cccd:
                await central.write(C.IDD_RECORD_ACCESS_CONTROL_POINT, bytes(racp_report_all()))
            assert no_cccd.value.error_code == 0xFD
            queues["racp"] = await central.subscribe(C.IDD_RECORD_ACCESS_CONTROL_POINT,
                                                     indicate=True)
            queues["history"] = await central.subscribe(C.IDD_HISTORY_DATA)
            _, invalid = await racp(central, queues, bytes([0x33, 0x0F]))  # Null operator
            assert invalid == IddRacpResponse(IddRacpOpCode.REPORT_STORED_RECORDS,
                                              IddRacpResponseCode.INVALID_OPERATOR)
            frames, done = await racp(central, queues, bytes(racp_report_all()))
            assert done.response_code == IddRacpResponseCode.SUCCESS
            sequences = [e.sequence_number for e in decode_history(frames)]
            assert sequences == [s for s in range(len(pump.memory)) for _ in range(2)]
            _, aborted = await racp(central, queues, bytes(racp_abort()))
            assert aborted == IddRacpResponse(IddRacpOpCode.ABORT_OPERATION,
                                              IddRacpResponseCode.SUCCESS)
        finally:
            await central.close()
            await pump.stop()

    run(body)


def test_setting_the_clock_records_a_reference_time() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, small_history(), now=FakeNow(at(8)), allow_time_write=True)
        await pump.start()
        central, queues = await open_session(link)
        try:
            before = len(pump.memory)
            shown = dt.datetime(2027, 3, 1, 9, 30, 0)
            await central.write(CtsCharacteristic.CURRENT_TIME,
                                bytes(CurrentTime.from_datetime(shown)))
            assert pump.control_point_log[-1].characteristic == "current-time"
            frames, _ = await racp(central, queues, bytes(racp_report_from_sequence(before)))
            (event,) = decode_history(frames)
            assert isinstance(event.event_data, ReferenceTime)
            assert event.event_data.recording_reason == RecordingReason.SET_DATE_TIME
            assert event.event_data.date_time.to_datetime() == shown
        finally:
            await central.close()
            await pump.stop()

    run(body)


# --- without a link: the history's time base and the memory faults ----------------------------


def _pump(records: list[PumpRecord], faults: FaultConfig | None = None
          ) -> InsulinPumpPeripheral:
    return make_pump(LocalLink(), records, now=FakeNow(at(30)), faults=faults)


def _hourly(hours: int) -> list[PumpRecord]:
    return [ReservoirLevel(device_id=DEVICE_ID, time=at(h), remaining_iu=200.0 - h)
            for h in range(hours)]


def test_reference_times_follow_clock_changes_and_offset_limits() -> None:
    pump = _pump(_hourly(24), FaultConfig(clock_reset_at_record=5))
    refs = [(e.sequence, e.history.event_data) for e in pump.memory
            if isinstance(e.history.event_data, ReferenceTime)]
    reasons = [r.recording_reason for _, r in refs]
    assert reasons[:2] == [RecordingReason.SET_DATE_TIME, RecordingReason.DATE_TIME_LOSS]
    assert refs[1][1].date_time.year == 2000  # the clock came back at its firmware default
    assert all(0 <= e.history.relative_offset <= 0xFFFF for e in pump.memory)
    # Without faults one day of hourly events needs one periodic Reference Time (u16 s).
    plain = _pump(_hourly(24))
    assert [e.history.event_data.recording_reason for e in plain.memory
            if isinstance(e.history.event_data, ReferenceTime)] == [
        RecordingReason.SET_DATE_TIME, RecordingReason.PERIODIC_RECORDING]


def test_sequence_reset_clears_the_memory() -> None:
    pump = _pump(_hourly(6), FaultConfig(sequence_reset_at_record=4))
    assert [e.sequence for e in pump.memory] == [0, 1, 2]
    assert isinstance(pump.memory[0].history.event_data, ReferenceTime)


def test_battery_and_reservoir_faults_raise_annunciations() -> None:
    pump = _pump(small_history(), FaultConfig(battery_low=True, annunciations=frozenset({
        Annunciation.RESERVOIR_LOW, Annunciation.CALIBRATION_REQUIRED})))
    active = {a.annunciation for a in pump.annunciations.values()}
    assert active == {Annunciation.BATTERY_LOW, Annunciation.RESERVOIR_LOW}
    assert pump.battery_percent == 5
    assert pump.reservoir_iu <= 20.0
    value = pump.annunciation_value()
    assert value.annunciation_status == AnnunciationStatus.PENDING
    assert value.annunciation_type in (AnnunciationType.BATTERY_LOW,
                                       AnnunciationType.RESERVOIR_LOW)


def test_records_a_pump_cannot_keep_are_refused() -> None:
    pump = _pump([])
    assert len(pump.memory) == 1  # the Reference Time of a new history
    with pytest.raises(ValueError):
        pump.add_record(AnnunciationEvent(device_id=DEVICE_ID, time=at(29),
                                          annunciation=Annunciation.CALIBRATION_REQUIRED))
    meter_reading: Any = BloodGlucoseReading(device_id=DEVICE_ID, time=at(29),
                                             glucose_mg_dl=100.0)
    with pytest.raises(ValueError):
        pump.add_record(meter_reading)
    assert len(pump.memory) == 1
    pump.add_record(TotalDailyInsulin(device_id=DEVICE_ID, time=at(29), day=dt.date(2027, 3, 1),
                                      bolus_iu=1.0, basal_iu=2.0))
    assert pump.memory[-1].event_type == HistoryEventType.TOTAL_DAILY_INSULIN_DELIVERY
