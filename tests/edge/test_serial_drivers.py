"""Serial meter drivers against the serial emulators, over a pty and over ``socket://``.

Each driver is opened through :func:`bridge.devices.serial.open_serial_driver` on the URL the
emulator serves, exactly as the agent opens a real meter's port, and must read back exactly
the readings the emulator was fed. Faults (damaged frames, silence, a pulled cable, a wrong
clock) come from :class:`simulators.faults.FaultConfig`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from bridge.devices import serial as serial_drivers
from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDisconnected,
    DeviceDriver,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.contour_astm import ContourAstmDriver
from bridge.devices.contour_astm import to_reading as astm_reading
from bridge.devices.onetouch_ultra2 import OneTouchUltra2Driver
from bridge.devices.onetouch_ultra_easy import OneTouchUltraEasyDriver
from bridge.devices.serial import (
    KNOWN_CABLES,
    identify_cable,
    list_serial_adapters,
    open_serial_driver,
)
from bridge.devices.serial_phd import (
    STATE_CONFIG,
    PhdManagerDriver,
    config_from_hex,
    config_problem,
    config_to_hex,
    to_readings,
)
from bridge.devices.serial_port import (
    ForbiddenCommand,
    SerialDriverOptions,
    SerialLink,
    SerialSettings,
    TransferIncomplete,
    fingerprint,
    provisional_utc,
    since_anchor,
)
from bridge.protocols.astm import AstmResult
from bridge.protocols.mdc import AttrId, Dim, ObjClass, Partition, Scada
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.phd import (
    AbortReason,
    AssociateResult,
    ConfigObject,
    ConfigReport,
    ObservationScan,
    ScanReportInfoFixed,
    ScanReportInfoVar,
    decode_fixed_observations,
    decode_var_observations,
    encode_fixed_observation,
    example_extended_config,
    standard_config_1700,
)
from bridge.protocols.phd_attributes import (
    AbsoluteTime,
    AttributeList,
    AttrValMap,
    AttrValMapEntry,
    TypeCode,
)
from bridge.records import (
    MG_DL_PER_MMOL_L,
    Annunciation,
    BloodGlucoseReading,
    DeviceInfo,
    DeviceKind,
    MealContext,
    SampleType,
)
from simulators.faults import FaultConfig
from simulators.serial import (
    ContourOptions,
    PhdOptions,
    RunningEmulator,
    SerialEmulatorConfig,
    UltraEasyOptions,
    start_serial_emulator,
)
from simulators.serial.phd_meter import PhdGlucoseMeterEmulator

T = TypeVar("T")

PORTS = ("pty", "tcp")
PROTOCOLS = ("onetouch-ultra2", "onetouch-ultra-easy", "contour-astm", "ieee11073")
#: True time of every scenario (the emulators' and the drivers' clock).
T0 = dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.UTC)
SERIAL = "SN0001"
SYSTEM_ID = "0102030405060708"
SETTLE_S = 0.05

#: Emulator name of each driver protocol.
EMULATOR = {"ieee11073": "phd"}
#: Emulator options with short timers.
EMULATOR_OPTIONS: dict[str, Any] = {
    "onetouch-ultra-easy": UltraEasyOptions(ack_timeout_s=0.1),
    "contour-astm": ContourOptions(max_text=40, reply_timeout_s=2.0),
    "ieee11073": PhdOptions(readings_per_report=3, response_timeout_s=2.0),
}
#: Driver options with short timers.
DRIVER_OPTIONS: dict[str, dict[str, Any]] = {
    "onetouch-ultra2": {"timeout_s": 0.5},
    "onetouch-ultra-easy": {"timeout_s": 0.5, "ack_timeout_s": 0.2},
    "contour-astm": {"timeout_s": 1.0, "enq_timeout_s": 0.5},
    "ieee11073": {"timeout_s": 1.0, "idle_s": 0.3, "reconnect_delay_s": 0.1},
}


def fixed_now() -> dt.datetime:
    return T0


def reading(device_time: dt.datetime, mg_dl: float | None, *, control: bool = False,
            meal: MealContext | None = None, above: bool = False) -> BloodGlucoseReading:
    annunciations = frozenset({Annunciation.RESULT_TOO_HIGH}) if above else frozenset()
    return BloodGlucoseReading(
        device_id="meter-1", time=device_time.replace(tzinfo=dt.UTC), device_time=device_time,
        glucose_mg_dl=mg_dl, meal=meal, annunciations=annunciations,
        sample_type=SampleType.CONTROL_SOLUTION if control else SampleType.CAPILLARY_WHOLE_BLOOD)


#: The meter's history (device clock = UTC): meals, a control test, HI and LO. Whole minutes,
#: as ASTM carries minutes only.
HISTORY = (
    reading(dt.datetime(2027, 2, 27, 7, 10), 95, meal=MealContext.PREPRANDIAL),
    reading(dt.datetime(2027, 2, 27, 12, 45), 142, meal=MealContext.POSTPRANDIAL),
    reading(dt.datetime(2027, 2, 28, 6, 55), 61, meal=MealContext.FASTING),
    reading(dt.datetime(2027, 2, 28, 10, 0), 118, control=True),
    reading(dt.datetime(2027, 2, 28, 22, 30), None, above=True),
    reading(dt.datetime(2027, 3, 1, 3, 15), 15),
    reading(dt.datetime(2027, 3, 1, 7, 30), 104),
)


@dataclass(frozen=True, slots=True)
class Seen:
    """What matters of a reading for comparison."""

    device_time: dt.datetime | None
    mg_dl: float | None
    control: bool
    annunciations: frozenset[Annunciation]
    meal: MealContext | None


@dataclass(frozen=True, slots=True)
class Carries:
    """What each protocol can carry of a reading."""

    control: bool  # control-solution tests are reported (and flagged)
    hi_lo: bool  # HI/LO are flagged (else sent as the range limits 600/20)
    meals: frozenset[MealContext]


CARRIES = {
    "onetouch-ultra2": Carries(True, True, frozenset({MealContext.PREPRANDIAL,
                                                      MealContext.POSTPRANDIAL})),
    "onetouch-ultra-easy": Carries(False, False, frozenset()),
    "contour-astm": Carries(True, True, frozenset(MealContext)),
    "ieee11073": Carries(False, True, frozenset()),
}


def seen(records: Sequence[object]) -> list[Seen]:
    out = []
    for r in records:
        assert isinstance(r, BloodGlucoseReading)
        out.append(Seen(r.device_time, r.glucose_mg_dl, r.is_control_solution, r.annunciations,
                        r.meal))
    return sorted(out, key=lambda s: (s.device_time or dt.datetime.min, s.mg_dl or 0))


def expected(records: Sequence[BloodGlucoseReading], carries: Carries,
             shift: dt.timedelta = dt.timedelta(0)) -> list[Seen]:
    out = []
    for r in records:
        if r.is_control_solution and not carries.control:
            continue
        value = r.glucose_mg_dl
        flags: set[Annunciation] = set()
        if value is None:
            flags.add(Annunciation.RESULT_TOO_HIGH if r.above_range
                      else Annunciation.RESULT_TOO_LOW)
        elif value > 600:
            flags.add(Annunciation.RESULT_TOO_HIGH)
        elif value < 20:
            flags.add(Annunciation.RESULT_TOO_LOW)
        mg: float | None = None if flags else float(round(value or 0))
        if flags and not carries.hi_lo:
            mg = 600.0 if Annunciation.RESULT_TOO_HIGH in flags else 20.0
            flags = set()
        assert r.device_time is not None
        meal = r.meal if r.meal in carries.meals else None
        out.append(Seen(r.device_time + shift, mg, r.is_control_solution, frozenset(flags),
                        meal))
    return seen_sorted(out)


def seen_sorted(items: list[Seen]) -> list[Seen]:
    return sorted(items, key=lambda s: (s.device_time or dt.datetime.min, s.mg_dl or 0))


def run(body: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(body(), timeout_s)
    return asyncio.run(guarded())


async def with_meter(protocol: str, port: str,
                     body: Callable[[DeviceDriver, RunningEmulator], Awaitable[T]], *,
                     records: Sequence[BloodGlucoseReading] = HISTORY,
                     faults: FaultConfig | None = None, emulator_options: Any = None,
                     options: Mapping[str, Any] | None = None,
                     setup: Callable[[RunningEmulator], None] | None = None) -> T:
    """Start the protocol's emulator, open the driver on its URL, run ``body``, stop both."""
    info = DeviceInfo(device_id="meter-1", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                      manufacturer="Example Medical", model="VM-1", serial_number=SERIAL,
                      firmware_revision="1.2.3", hardware_revision="B",
                      software_revision="4.5", system_id=SYSTEM_ID)
    running = await start_serial_emulator(SerialEmulatorConfig(
        protocol=EMULATOR.get(protocol, protocol), port="pty" if port == "pty" else "tcp",
        records=records, info=info, faults=faults or FaultConfig(),
        options=emulator_options or EMULATOR_OPTIONS.get(protocol), now=fixed_now,
        settle_s=SETTLE_S))
    if setup is not None:
        setup(running)
    driver = open_serial_driver(protocol, running.url, options={
        **DRIVER_OPTIONS[protocol], "now": fixed_now, **(options or {})})
    try:
        return await body(driver, running)
    finally:
        await driver.close()
        # Let the emulator see the client leave before it is stopped.
        await asyncio.sleep(0.05)
        await running.close()
        assert running.errors == []


async def full_sync(driver: DeviceDriver, running: RunningEmulator) -> SyncResult:
    return await driver.sync({})


# ================================================================================================
# Full sessions
# ================================================================================================


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_full_session_reads_exactly_the_fed_readings(protocol: str, port: str) -> None:
    async def body(driver: DeviceDriver, running: RunningEmulator) -> tuple[Any, ...]:
        info = await driver.read_info()
        first = await driver.sync({})
        again = await driver.sync(first.state)
        return info, first, again, running.url, list(running.write_log)

    info, first, again, url, write_log = run(lambda: with_meter(protocol, port, body))
    assert seen(first.records) == expected(HISTORY, CARRIES[protocol])
    assert first.info == info
    assert info.device_id == (SYSTEM_ID if protocol == "ieee11073" else SERIAL)
    assert info.serial_number == SERIAL
    assert (info.transport, info.address) == ("serial", url)
    for record in first.records:
        assert record.device_id == info.device_id
        assert record.sequence is None  # positions are no identity on these meters
        # The meter clock is exact: the provisional instant is the true one.
        assert record.device_time is not None
        assert record.time == record.device_time.replace(tzinfo=dt.UTC)
    assert first.clock is not None
    assert first.clock.device_time == T0.replace(tzinfo=None)
    assert first.clock.gateway_time == T0
    assert first.clock.source is (ClockSource.PHD_ABSOLUTE_TIME if protocol == "ieee11073"
                                  else ClockSource.SERIAL_TIME_COMMAND)
    assert first.notices == ()
    # Nothing new since: the state's anchor is the newest reading.
    assert again.records == ()
    assert again.notices == ()
    assert write_log == []


def test_control_solution_and_meal_markers_are_mapped() -> None:
    async def body(driver: DeviceDriver, _running: RunningEmulator) -> SyncResult:
        return await driver.sync({})

    result = run(lambda: with_meter("contour-astm", "pty", body))
    by_time = {r.device_time: r for r in result.records
               if isinstance(r, BloodGlucoseReading)}
    control = by_time[dt.datetime(2027, 2, 28, 10, 0)]
    assert control.sample_type is SampleType.CONTROL_SOLUTION and control.is_control_solution
    assert by_time[dt.datetime(2027, 2, 28, 6, 55)].meal is MealContext.FASTING
    high = by_time[dt.datetime(2027, 2, 28, 22, 30)]
    assert high.glucose_mg_dl is None and high.above_range
    # Contour values are plasma-calibrated ("mg/dL^P").
    assert by_time[dt.datetime(2027, 3, 1, 7, 30)].sample_type is SampleType.CAPILLARY_PLASMA


# ================================================================================================
# Incremental sync
# ================================================================================================

NEW = reading(dt.datetime(2027, 3, 1, 7, 55), 131)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_incremental_sync_returns_only_new_readings(protocol: str) -> None:
    async def body(driver: DeviceDriver, running: RunningEmulator) -> tuple[SyncResult, ...]:
        first = await driver.sync({})
        running.add_record(NEW)
        second = await driver.sync(first.state)
        third = await driver.sync(second.state)
        return first, second, third

    first, second, third = run(lambda: with_meter(protocol, "tcp", body))
    assert len(first.records) == len(expected(HISTORY, CARRIES[protocol]))
    assert seen(second.records) == expected([NEW], CARRIES[protocol])
    assert second.notices == ()
    assert second.state["newest"]["device_time"] == "2027-03-01T07:55:00"
    assert third.records == ()


def test_memory_cleared_between_syncs_returns_everything_with_a_notice() -> None:
    async def body(driver: DeviceDriver, running: RunningEmulator) -> SyncResult:
        first = await driver.sync({})
        running.core.erase(b"")  # e.g. a battery change that lost the memory
        running.add_record(NEW)
        return await driver.sync(first.state)

    result = run(lambda: with_meter("onetouch-ultra2", "pty", body))
    assert seen(result.records) == expected([NEW], CARRIES["onetouch-ultra2"])
    assert any("fewer readings than before" in n for n in result.notices)


# ================================================================================================
# Damaged frames, silence, a pulled cable
# ================================================================================================

#: Seeds for which the damage needs retries but no more than the driver's three.
CORRUPTION = {
    "onetouch-ultra2": (0.3, 2, "failed their checksum"),
    "onetouch-ultra-easy": (0.3, 3, "damaged frame(s) sent again"),
    "contour-astm": (0.3, 0, "answered NAK and sent again"),
    "ieee11073": (0.4, 1, "did not decode and were received again"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_damaged_frames_are_asked_for_again(protocol: str) -> None:
    rate, seed, notice = CORRUPTION[protocol]
    faults = FaultConfig(corrupt_frame_rate=rate, seed=seed)
    result = run(lambda: with_meter(protocol, "pty", full_sync, faults=faults))
    assert seen(result.records) == expected(HISTORY, CARRIES[protocol])
    assert any(notice in n for n in result.notices), result.notices


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_damage_beyond_the_retries_gives_up_with_what_was_kept(protocol: str) -> None:
    faults = FaultConfig(corrupt_frame_rate=1.0)
    with pytest.raises(TransferIncomplete) as caught:
        run(lambda: with_meter(protocol, "pty", full_sync, faults=faults,
                               options={"retries": 1}))
    assert caught.value.kept == ()
    assert "kept" in str(caught.value)


def test_partly_damaged_dump_keeps_the_intact_lines() -> None:
    faults = FaultConfig(corrupt_frame_rate=0.5, seed=2)
    with pytest.raises(TransferIncomplete) as caught:
        run(lambda: with_meter("onetouch-ultra2", "tcp", full_sync, faults=faults,
                               options={"retries": 0}))
    error = caught.value
    assert error.missing is not None and error.missing > 0
    assert len(error.kept) + error.missing == len(HISTORY)
    assert set(seen(error.kept)) <= set(expected(HISTORY, CARRIES["onetouch-ultra2"]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_silence_is_a_timeout(protocol: str) -> None:
    faults = FaultConfig(drop_response_rate=1.0)

    async def body(driver: DeviceDriver, running: RunningEmulator) -> DeviceDriver:
        with pytest.raises(DeviceTimeout):
            await driver.sync({})
        return driver

    driver = run(lambda: with_meter(protocol, "pty", body, faults=faults,
                                    options={"retries": 1, "timeout_s": 0.3}))
    if isinstance(driver, PhdManagerDriver):
        # The GET went unanswered: the manager aborted the association (20601 §8).
        assert driver.aborts_sent == [AbortReason.RESPONSE_TIMEOUT]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_disconnect_mid_transfer(protocol: str, port: str) -> None:
    faults = FaultConfig(disconnect_after_records=2)
    with pytest.raises(DeviceDisconnected):
        run(lambda: with_meter(protocol, port, full_sync, faults=faults))


# ================================================================================================
# Clock
# ================================================================================================


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clock_observation_matches_the_meter_offset(protocol: str) -> None:
    offset = dt.timedelta(minutes=7)  # whole minutes: ASTM headers carry no seconds
    faults = FaultConfig(clock_offset_s=offset.total_seconds())
    result = run(lambda: with_meter(protocol, "pty", full_sync, faults=faults))
    clock = result.clock
    assert clock is not None
    assert clock.device_time - clock.gateway_time.replace(tzinfo=None) == offset
    # Records carry the meter's (fast) clock; the provisional instant takes the offset out.
    assert seen(result.records) == expected(HISTORY, CARRIES[protocol], shift=offset)
    for record in result.records:
        assert record.device_time is not None
        assert record.time == (record.device_time - offset).replace(tzinfo=dt.UTC)


# ================================================================================================
# IEEE 11073-20601 configurations
# ================================================================================================


@pytest.mark.parametrize("port", PORTS)
def test_phd_unknown_config_is_learnt_and_then_accepted(port: str) -> None:
    options = PhdOptions(dev_config_id=0x4001, readings_per_report=3, response_timeout_s=2.0)

    async def body(driver: DeviceDriver, running: RunningEmulator) -> tuple[Any, ...]:
        assert isinstance(driver, PhdManagerDriver)
        first = await driver.sync({})
        running.add_record(NEW)
        second = await driver.sync(first.state)
        return first, second, list(driver.associations)

    first, second, associations = run(lambda: with_meter(
        "ieee11073", port, body, emulator_options=options))
    # Extended configuration: control solution and meal context objects as well.
    assert seen(first.records) == expected(HISTORY, CARRIES["contour-astm"])
    saved = first.state[STATE_CONFIG]
    assert saved["system_id"] == SYSTEM_ID
    assert config_from_hex(saved["config"]).config_report_id == 0x4001
    assert seen(second.records) == expected([NEW], CARRIES["contour-astm"])
    # The second association needs no MDC_NOTI_CONFIG: the manager remembers the config.
    assert associations == [AssociateResult.ACCEPTED_UNKNOWN_CONFIG, AssociateResult.ACCEPTED]


def test_phd_config_from_the_state_is_accepted_directly() -> None:
    options = PhdOptions(dev_config_id=0x4001, readings_per_report=3, response_timeout_s=2.0)

    async def learn(driver: DeviceDriver, _running: RunningEmulator) -> SyncResult:
        return await driver.sync({})

    state = dict(run(lambda: with_meter("ieee11073", "pty", learn,
                                        emulator_options=options)).state)
    state.pop("newest")

    async def again(driver: DeviceDriver, _running: RunningEmulator) -> tuple[Any, ...]:
        assert isinstance(driver, PhdManagerDriver)
        result = await driver.sync(state)
        return result, list(driver.associations)

    result, associations = run(lambda: with_meter("ieee11073", "tcp", again,
                                                  emulator_options=options))
    assert associations == [AssociateResult.ACCEPTED]
    assert len(result.records) == len(HISTORY)


def _hba1c_config(config_id: int) -> ConfigReport:
    """A configuration with no glucose object: nothing a glucose manager can use."""
    return ConfigReport(config_id, (ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_NU, 1,
                                                 AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.SCADA, Scada.MDC_CONC_HBA1C),
        AttrId.MDC_ATTR_UNIT_CODE: Dim.MDC_DIM_PERCENT,
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttrValMap((
            AttrValMapEntry(AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, 2),
            AttrValMapEntry(AttrId.MDC_ATTR_TIME_STAMP_ABS, 8))),
    })),))


def test_phd_unusable_config_is_answered_unsupported() -> None:
    options = PhdOptions(dev_config_id=0x4002, response_timeout_s=2.0)

    def swap_config(running: RunningEmulator) -> None:
        agent = running.emulator
        assert isinstance(agent, PhdGlucoseMeterEmulator)
        agent.config = _hba1c_config(0x4002)

    async def body(driver: DeviceDriver, _running: RunningEmulator) -> list[AssociateResult]:
        assert isinstance(driver, PhdManagerDriver)
        with pytest.raises(DeviceError, match="no configuration this manager accepts"):
            await driver.read_info()
        return list(driver.associations)

    associations = run(lambda: with_meter("ieee11073", "pty", body, emulator_options=options,
                                          setup=swap_config))
    assert associations == [AssociateResult.ACCEPTED_UNKNOWN_CONFIG]


def test_config_problem() -> None:
    assert config_problem(standard_config_1700()) is None
    assert config_problem(example_extended_config()) is None
    problem = config_problem(_hba1c_config(0x4003))
    assert problem is not None and "not a glucose concentration" in problem
    assert config_problem(ConfigReport(0x4004, ())) == "no numeric object"
    report = example_extended_config(0x4005)
    assert config_from_hex(config_to_hex(report)) == report


def test_phd_mmol_per_litre_is_converted_to_mg_per_dl() -> None:
    config = example_extended_config()  # capillary plasma in mmol/L (handle 1)
    stamp = dt.datetime(2027, 3, 1, 6, 30)
    observation = encode_fixed_observation(config, 1, {
        AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: SFloat.from_value("5.5"),
        AttrId.MDC_ATTR_TIME_STAMP_ABS: AbsoluteTime.from_datetime(stamp)})
    scan = ScanReportInfoFixed(0xF000, 0, (observation,))
    built = to_readings(decode_fixed_observations(config, scan), "meter", None, T0)
    (only,) = built.readings
    assert only.glucose_mg_dl == pytest.approx(5.5 * MG_DL_PER_MMOL_L)
    assert only.sample_type is SampleType.CAPILLARY_PLASMA
    assert only.device_time == stamp


def test_phd_variable_scan_report_is_read_through_the_configuration() -> None:
    stamp = dt.datetime(2027, 3, 1, 6, 45)
    scan = ScanReportInfoVar(0xF000, 3, (ObservationScan(1, AttributeList.of({
        AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: SFloat.special_value(Special.POSITIVE_INFINITY),
        AttrId.MDC_ATTR_TIME_STAMP_ABS: AbsoluteTime.from_datetime(stamp)})),))
    built = to_readings(decode_var_observations(standard_config_1700(), scan), "m", None, T0)
    (only,) = built.readings
    assert only.glucose_mg_dl is None and only.above_range
    assert only.sample_type is SampleType.CAPILLARY_WHOLE_BLOOD and only.device_time == stamp


def test_phd_abort_from_the_agent_is_a_disconnect() -> None:
    # The agent gives the manager no time at all to confirm its first report, so it aborts.
    options = PhdOptions(response_timeout_s=0.0)

    async def body(driver: DeviceDriver, running: RunningEmulator) -> list[AbortReason]:
        with pytest.raises(DeviceDisconnected, match="agent aborted"):
            await driver.sync({})
        agent = running.emulator
        assert isinstance(agent, PhdGlucoseMeterEmulator)
        return list(agent.aborts_sent)

    aborts = run(lambda: with_meter("ieee11073", "pty", body, emulator_options=options))
    # Confirmations that arrive after the abort may draw further aborts (20601 Annex E).
    assert aborts[0] is AbortReason.RESPONSE_TIMEOUT


def test_astm_mmol_per_litre_is_converted_to_mg_per_dl() -> None:
    result = AstmResult(sequence=1, test_id="^^^Glucose", value="6.1", units="mmol/L^P",
                        reference_ranges="", abnormal_flags="B", nature_of_abnormality="",
                        status="202703010630")
    converted = astm_reading(result, "meter", None)
    assert converted is not None
    assert converted.glucose_mg_dl == pytest.approx(6.1 * MG_DL_PER_MMOL_L)
    assert converted.meal is MealContext.PREPRANDIAL
    insulin = AstmResult(sequence=2, test_id="^^^Insulin", value="4", units="",
                         status="202703010630")
    assert astm_reading(insulin, "meter", None) is None


# ================================================================================================
# Read-only guard
# ================================================================================================

WRITERS = ("onetouch-ultra2", "onetouch-ultra-easy")


@pytest.mark.parametrize("protocol", WRITERS)
def test_forbidden_commands_are_refused_before_any_byte(protocol: str) -> None:
    async def body(driver: DeviceDriver, running: RunningEmulator) -> None:
        assert isinstance(driver, OneTouchUltra2Driver | OneTouchUltraEasyDriver)
        # Before anything: the port is not even opened.
        with pytest.raises(ForbiddenCommand, match="never allowed"):
            await driver.erase_memory()
        with pytest.raises(ForbiddenCommand, match="allow_time_write") as caught:
            await driver.set_clock(dt.datetime(2027, 3, 1, 9, 0))
        assert caught.value.command and caught.value.reason
        assert driver.link.bytes_written == 0 and not driver.link.is_open
        # After a sync, with the port open: still not one byte more.
        await driver.sync({})
        written = driver.link.bytes_written
        with pytest.raises(ForbiddenCommand):
            await driver.erase_memory()
        with pytest.raises(ForbiddenCommand):
            await driver.set_clock(dt.datetime(2027, 3, 1, 9, 0))
        assert driver.link.bytes_written == written
        assert running.write_log == []

    run(lambda: with_meter(protocol, "pty", body))


@pytest.mark.parametrize("protocol", WRITERS)
def test_time_write_when_enabled_and_erase_never(protocol: str) -> None:
    new_time = dt.datetime(2027, 3, 1, 9, 15, 0)

    async def body(driver: DeviceDriver, running: RunningEmulator) -> list[str]:
        assert isinstance(driver, OneTouchUltra2Driver | OneTouchUltraEasyDriver)
        assert await driver.set_clock(new_time) == new_time
        with pytest.raises(ForbiddenCommand):
            await driver.erase_memory()
        return [w.command for w in running.write_log]

    log = run(lambda: with_meter(protocol, "tcp", body, options={"allow_time_write": True}))
    assert log == ["set-time"]


def test_forbidden_even_when_the_port_cannot_open() -> None:
    async def body() -> None:
        driver = open_serial_driver("onetouch-ultra2", "socket://127.0.0.1:1")
        assert isinstance(driver, OneTouchUltra2Driver)
        with pytest.raises(ForbiddenCommand):
            await driver.erase_memory()
        with pytest.raises(DeviceError, match="cannot open"):
            await driver.read_info()
        await driver.close()

    run(body)


# ================================================================================================
# Port wrapper, shared sync bookkeeping, factory, adapters
# ================================================================================================


def test_serial_link_reads_writes_times_out_and_closes() -> None:
    async def body() -> None:
        link = SerialLink("loop://", SerialSettings(timeout_s=0.2))
        await link.open()
        await link.write(b"DM@\r\nrest")
        assert await link.read_until(b"\r\n") == b"DM@\r\n"
        assert await link.read_exactly(4) == b"rest"
        with pytest.raises(DeviceTimeout):
            await link.read_some(0.05)
        await link.write(b"xy")
        await asyncio.sleep(0.1)
        assert link.discard_input() == b"xy"
        link.unread(b"ab")
        assert await link.read_some() == b"ab"
        assert link.bytes_written == 11
        await link.close()
        await link.close()  # twice is fine
        with pytest.raises(DeviceDisconnected):
            await link.read_some()
        with pytest.raises(DeviceDisconnected):
            await link.write(b"x")
        bad = SerialLink("nosuchscheme://x")
        with pytest.raises(DeviceError, match="cannot open"):
            await bad.open()

    run(body)


def test_since_anchor_and_provisional_time() -> None:
    a, b, c = (reading(dt.datetime(2027, 3, 1, h), 100 + h) for h in (1, 2, 3))
    first = since_anchor([b, a], {})
    assert first.readings == [b, a] and first.notices == [] and not first.anchor_found
    assert first.state == {"newest": fingerprint(b), "count": 2}
    second = since_anchor([c, b, a], first.state)
    assert second.readings == [c] and second.anchor_found
    gone = since_anchor([c], first.state)
    assert gone.readings == [c] and "memory cleared" in gone.notices[0]
    empty = since_anchor([], first.state)
    assert empty.readings == [] and "newest" not in empty.state

    clock = ClockObservation(device_time=dt.datetime(2027, 3, 1, 9, 7),
                             gateway_time=dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.UTC),
                             source=ClockSource.SERIAL_TIME_COMMAND)
    assert provisional_utc(dt.datetime(2027, 3, 1, 7, 7), clock) == \
        dt.datetime(2027, 3, 1, 6, 0, tzinfo=dt.UTC)
    assert provisional_utc(dt.datetime(2027, 3, 1, 7, 7), None) == \
        dt.datetime(2027, 3, 1, 7, 7, tzinfo=dt.UTC)


def test_factory_and_options() -> None:
    kinds = {"ieee11073": PhdManagerDriver, "phd": PhdManagerDriver,
             "onetouch-ultra2": OneTouchUltra2Driver,
             "onetouch-ultra-easy": OneTouchUltraEasyDriver,
             "contour-astm": ContourAstmDriver}
    for protocol, cls in kinds.items():
        driver = open_serial_driver(protocol, "/dev/ttyUSB9",
                                    options={"timeout_s": 1, "allow_time_write": False})
        assert isinstance(driver, cls)
    with pytest.raises(DeviceError, match="unknown serial protocol"):
        open_serial_driver("dexcom", "/dev/ttyUSB9")
    with pytest.raises(DeviceError, match="unknown option"):
        open_serial_driver("onetouch-ultra2", "/dev/ttyUSB9", options={"idle_s": 1.0})
    with pytest.raises(DeviceError, match="must be like"):
        open_serial_driver("onetouch-ultra2", "/dev/ttyUSB9", options={"retries": "3"})
    with pytest.raises(DeviceError, match="must be like"):
        open_serial_driver("onetouch-ultra2", "/dev/ttyUSB9", options={"retries": True})
    with pytest.raises(DeviceError, match="invalid options"):
        SerialDriverOptions.from_mapping({"timeout_s": 0})


@dataclass
class _FakePort:
    device: str
    description: str
    vid: int | None
    pid: int | None
    serial_number: str | None = None
    manufacturer: str | None = None


def test_list_serial_adapters_recognises_meter_cables(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [_FakePort("/dev/ttyS0", "ttyS0", None, None),
             _FakePort("/dev/ttyUSB1", "FT232R", 0x0403, 0x6001),
             _FakePort("/dev/ttyUSB0", "USB-Serial Controller", 0x067B, 0x2303, None,
                       "Prolific"),
             _FakePort("/dev/ttyACM0", "Contour", 0x1A79, 0x6300)]
    monkeypatch.setattr(serial_drivers.list_ports, "comports", lambda: ports)
    adapters = list_serial_adapters()
    assert [a.device for a in adapters] == ["/dev/ttyACM0", "/dev/ttyUSB0", "/dev/ttyUSB1",
                                            "/dev/ttyS0"]
    contour, prolific, ftdi, plain = adapters
    assert contour.protocols == ("contour-astm",) and contour.usb_id == "1a79:6300"
    assert prolific.protocols == ("onetouch-ultra2", "onetouch-ultra-easy")
    assert prolific.cable is not None and "PL2303" in prolific.cable
    assert ftdi.cable == "FTDI FT232R USB-serial" and "ieee11073" in ftdi.protocols
    assert plain.cable is None and plain.usb_id is None
    assert identify_cable(0x0403, 0x1234) == KNOWN_CABLES[-1]
    assert identify_cable(0x1234, 0x0001) is None
