"""The read-only write guard of the GATT layer.

Three levels of evidence:

* the allowlist itself (:func:`classify_write`), value by value and with random values;
* the guard in :class:`GattCentral`: a recording backend shows a refused write never reaches
  the backend, is raised as :class:`ForbiddenWrite` and logged, and a subclass cannot
  override the guarded methods;
* the real thing: the bridge's bumble central against the virtual insulin pump, CGM and
  meter. Every forbidden write is refused and the device's ``control_point_log`` (where the
  peripheral records every control-point write it receives) stays empty; the allowed
  writes go through.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from bumble.link import LocalLink
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.devices.base import DeviceDisconnected
from bridge.devices.gatt import (
    CCCD_UUID,
    READ_ONLY,
    ForbiddenWrite,
    GattCentral,
    GattCharacteristic,
    GattService,
    NotifyCallback,
    WritePolicy,
    classify_write,
    normalize_uuid,
)
from bridge.devices.glucose import GlucoseMeterDriver
from bridge.protocols import racp
from bridge.protocols.cgms import (
    SOCP_READ_OP_CODES,
    SOCP_WRITE_OP_CODES,
    CgmCalibrationRecord,
    CgmSocp,
    SocpOpCode,
    SocpResponse,
)
from bridge.protocols.cts import CurrentTime
from bridge.protocols.date_time import DateTime
from bridge.protocols.ids import (
    IDD_RACP_REQUEST_OP_CODES,
    CommandOpCode,
    IddRacpFilter,
    IddRacpFilterType,
    IddRacpOpCode,
    IddRacpOperator,
    IddRacpRequest,
    IddStatusChangedFlags,
    ResetStatus,
    StatusReaderOpCode,
    StatusReaderRequest,
    racp_abort,
    racp_count_all,
    racp_report_all,
    racp_report_from_sequence,
    seal_e2e,
)
from bridge.protocols.mder_float import SFloat
from simulators.ble.common import VirtualPeripheral
from tests.edge.conftest import T0, ble_central, make_cgm, make_meter, make_pump, run

GLS, CGMS, IDS, CTS, DIS = 0x1808, 0x181F, 0x183A, 0x1805, 0x180A
RACP, SOCP = 0x2A52, 0x2AAC
STATUS_READER, COMMAND_CP, COMMAND_DATA, IDD_RACP = 0x2B24, 0x2B25, 0x2B26, 0x2B27
CURRENT_TIME = 0x2A2B
ALL_POLICIES = (READ_ONLY, WritePolicy(allow_time_write=True))


def u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def both_forms(payload: bytes) -> list[bytes]:
    """A value as sent without and with the IDS E2E trailer (counter 0 and 7)."""
    return [payload, seal_e2e(payload, 0), seal_e2e(payload, 7)]


TIME_VALUE = bytes(CurrentTime.from_datetime(T0.replace(tzinfo=None)))

# (service, characteristic, value, why) — every one must be refused under every policy.
THERAPY_FORBIDDEN: list[tuple[int, int, bytes, str]] = [
    *[(IDS, COMMAND_CP, value, f"command {op.name}")
      for op in CommandOpCode for value in both_forms(u16(op) + b"\x33\x00\x00\x00")],
    (IDS, COMMAND_CP, b"", "empty command"),
    (IDS, COMMAND_CP, u16(0x0F5A) + b"\x55", "set therapy state run"),
    (IDS, COMMAND_DATA, b"\x00\x01\x02\x03", "command data"),
    (IDS, COMMAND_DATA, b"", "empty command data"),
    *[(IDS, STATUS_READER, value, "reset status")
      for value in both_forms(bytes(ResetStatus(IddStatusChangedFlags(0xFF))))],
    *[(IDS, STATUS_READER, u16(op) + b"\x00", f"status reader {op.name}")
      for op in StatusReaderOpCode if op.name.endswith("RESPONSE") or op.value == 0x0303],
    (IDS, STATUS_READER, b"\x30", "truncated status reader request"),
    (IDS, STATUS_READER, u16(StatusReaderOpCode.GET_ACTIVE_BOLUS_IDS) + b"\x00\x00\x00\x00",
     "status reader request with junk"),
    *[(IDS, IDD_RACP, value, "IDD RACP delete all")
      for value in both_forms(bytes([IddRacpOpCode.DELETE_STORED_RECORDS,
                                     IddRacpOperator.ALL_RECORDS]))],
    *[(IDS, IDD_RACP, value, "IDD RACP delete ≤")
      for value in both_forms(bytes(IddRacpRequest(
          IddRacpOpCode.DELETE_STORED_RECORDS, IddRacpOperator.LESS_THAN_OR_EQUAL_TO,
          IddRacpFilter(IddRacpFilterType.SEQUENCE_NUMBER, maximum=100))))],
    (IDS, IDD_RACP, bytes([0x33, 0x55]), "IDD RACP report ≥ without operand"),
    (IDS, IDD_RACP, bytes([0x33, 0x33, 0x00]), "IDD RACP report all with junk"),
    (IDS, IDD_RACP, bytes([0x0F, 0x0F, 0x33, 0xF0]), "IDD RACP response written"),
    (IDS, IDD_RACP, bytes([0x66, 0x0F, 1, 0, 0, 0]), "IDD RACP count response written"),
    (IDS, IDD_RACP, bytes([0x99, 0x33]), "IDD RACP reserved op code"),
    (IDS, IDD_RACP, seal_e2e(bytes([0x33, 0x33]), 0)[:-1] + b"\x00", "IDD RACP bad E2E-CRC"),
    (IDS, IDD_RACP, b"", "empty IDD RACP"),
    (IDS, 0x2B20, b"\xff\x00", "IDD Status Changed"),
    (IDS, 0x2B21, b"\x55\x96\x00\x00\x01", "IDD Status"),
    (IDS, 0x2B23, b"\x00" * 8, "IDD Features"),
    (IDS, 0x2B28, b"\x00" * 8, "IDD History Data"),
    (0x181E, 0x2AA4, b"\x03", "Bond Management delete all bonds"),
    (None, 0x2AA4, b"\x01", "Bond Management without service"),
    (CGMS, SOCP, bytes(CgmSocp(SocpOpCode.START_SESSION)), "SOCP start session"),
    (CGMS, SOCP, bytes(CgmSocp(SocpOpCode.STOP_SESSION, e2e_crc=True)), "SOCP stop (E2E)"),
]

OTHER_FORBIDDEN: list[tuple[int | None, int, bytes, str]] = [
    *[(CGMS, SOCP, bytes(value), f"SOCP {value.op_code.name}") for value in [
        CgmSocp(SocpOpCode.SET_COMMUNICATION_INTERVAL, 1),
        CgmSocp(SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE,
                CgmCalibrationRecord(SFloat.from_value(100), 10, 1, 1, 20, 1)),
        *[CgmSocp(op, SFloat.from_value(90)) for op in SOCP_WRITE_OP_CODES
          if op.name.startswith("SET_") and op.name.endswith("LEVEL")],
        CgmSocp(SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT),
        CgmSocp(SocpOpCode.START_SESSION),
        CgmSocp(SocpOpCode.STOP_SESSION),
        CgmSocp(SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE, 5),
        CgmSocp(SocpOpCode.RESPONSE_CODE, SocpResponse(2, 1)),
    ]],
    *[(CGMS, SOCP, bytes(CgmSocp(op, None if op != SocpOpCode.SET_COMMUNICATION_INTERVAL
                                 else 3, e2e_crc=True)), f"SOCP {op.name} with E2E-CRC")
      for op in (SocpOpCode.SET_COMMUNICATION_INTERVAL, SocpOpCode.START_SESSION,
                 SocpOpCode.STOP_SESSION, SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT)],
    (CGMS, SOCP, bytes([SocpOpCode.GET_COMMUNICATION_INTERVAL, 0x00]), "SOCP get with junk"),
    (CGMS, SOCP, bytes([0xC8]), "SOCP reserved op code"),
    (CGMS, SOCP, b"", "empty SOCP"),
    (GLS, SOCP, bytes([SocpOpCode.GET_COMMUNICATION_INTERVAL]), "SOCP outside CGMS"),
    *[(service, RACP, value, f"RACP delete {value.hex()}") for service in (GLS, CGMS)
      for value in (b"\x02\x01", b"\x02\x03\x01\x05\x00", b"\x02\x05", b"\x02\x06")],
    *[(service, RACP, value, f"malformed RACP {value.hex()}") for service in (GLS, CGMS)
      for value in (b"", b"\x01", b"\x01\x00", b"\x01\x03", b"\x01\x01\x00", b"\x03\x01",
                    b"\x04\x07", b"\x01\x03\x07\x01\x00", b"\x05\x00\x01\x00",
                    b"\x06\x00\x01\x01", b"\x07\x01", b"\x01\x04\x01\x09\x00\x01\x00")],
    (None, RACP, b"\x01\x01", "RACP of an unknown service"),
    (0x1822, RACP, b"\x01\x01", "RACP of another service"),
    (GLS, 0x2A18, b"\x00" * 10, "Glucose Measurement"),
    (GLS, 0x2A51, b"\x00\x00", "Glucose Feature"),
    (CGMS, 0x2AAA, b"\x00" * 9, "CGM Session Start Time"),
    (DIS, 0x2A25, b"SN", "DIS serial number"),
    (0x180F, 0x2A19, b"\x64", "Battery Level"),
    (CTS, 0x2A0F, b"\x04\x04", "Local Time Information"),
    (None, "12345678-1234-5678-1234-567812345678", b"\x01", "vendor characteristic"),  # type: ignore[list-item]
]

ALLOWED: list[tuple[int, int, bytes]] = [
    (GLS, RACP, bytes(racp.report_all())),
    (GLS, RACP, bytes(racp.report_from_sequence(11))),
    (GLS, RACP, bytes(racp.report_last())),
    (GLS, RACP, bytes(racp.count_all())),
    (GLS, RACP, bytes(racp.count_from_sequence(3))),
    (GLS, RACP, bytes(racp.abort())),
    (GLS, RACP, b"\x01\x03\x02" + bytes(DateTime(2027, 3, 1, 0, 0, 0))),
    (CGMS, RACP, bytes(racp.report_from_time_offset(300))),
    (CGMS, RACP, bytes(racp.report_all())),
    *[(IDS, IDD_RACP, value) for value in (
        bytes(racp_report_all()), bytes(racp_report_all(0)), bytes(racp_count_all()),
        bytes(racp_count_all(9)), bytes(racp_abort()), bytes(racp_abort(3)),
        bytes(racp_report_from_sequence(42)), bytes(racp_report_from_sequence(42, 1)))],
    *[(IDS, STATUS_READER, value) for op in StatusReaderRequest.OP_CODES
      for value in both_forms(u16(op))],
    (IDS, STATUS_READER, u16(StatusReaderOpCode.GET_ACTIVE_BOLUS_DELIVERY) + b"\x07\x00\x0f"),
    (IDS, STATUS_READER, u16(StatusReaderOpCode.GET_COUNTER) + b"\x0f\x33"),
    *[(CGMS, SOCP, bytes(CgmSocp(op, None if op != SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE
                                 else 0xFFFF, e2e_crc=e2e)))
      for op in SOCP_READ_OP_CODES for e2e in (False, True)],
]


# --- the allowlist ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ALL_POLICIES, ids=["read-only", "time-write"])
@pytest.mark.parametrize(("service", "char", "value", "why"), THERAPY_FORBIDDEN + OTHER_FORBIDDEN)
def test_forbidden_writes_are_refused_under_every_policy(
        service: int | None, char: int, value: bytes, why: str, policy: WritePolicy) -> None:
    verdict = classify_write(char, value, service_uuid=service, policy=policy)
    assert not verdict.allowed, why
    assert verdict.reason


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=["read-only", "time-write"])
@pytest.mark.parametrize(("service", "char", "value"), ALLOWED)
def test_allowed_writes_pass(service: int, char: int, value: bytes, policy: WritePolicy) -> None:
    verdict = classify_write(char, value, service_uuid=service, policy=policy)
    assert verdict.allowed, (value.hex(" "), verdict.reason)


def test_command_op_codes_are_named_in_the_refusal() -> None:
    verdict = classify_write(COMMAND_CP, u16(CommandOpCode.SET_BOLUS) + b"\x00" * 8,
                             service_uuid=IDS)
    assert verdict.op_code == CommandOpCode.SET_BOLUS
    assert "SET_BOLUS" in verdict.reason and "therapy" in verdict.reason
    delete = classify_write(IDD_RACP, bytes([0x3C, 0x33]), service_uuid=IDS)
    assert delete.op_code == IddRacpOpCode.DELETE_STORED_RECORDS and "delete" in delete.reason


@pytest.mark.parametrize(("value", "allowed"), [
    (b"\x00\x00", True), (b"\x01\x00", True), (b"\x02\x00", True), (b"\x03\x00", False),
    (b"\x00\x01", False), (b"\xff\xff", False), (b"\x01", False), (b"\x01\x00\x00", False),
    (b"", False)])
def test_cccd_values(value: bytes, allowed: bool) -> None:
    verdict = classify_write(0x2A18, value, service_uuid=GLS, descriptor_uuid=CCCD_UUID)
    assert verdict.allowed is allowed


def test_a_value_that_is_no_uuid_is_refused() -> None:
    assert not classify_write("not-a-uuid", b"\x01\x01", service_uuid=GLS).allowed
    assert not classify_write(RACP, b"\x01\x01", service_uuid="nonsense").allowed


def test_other_descriptors_are_refused() -> None:
    for descriptor in (0x2901, 0x2903, 0x2900, "12345678-1234-5678-1234-567812345678"):
        assert not classify_write(0x2A18, b"\x01\x00", service_uuid=GLS,
                                  descriptor_uuid=descriptor).allowed


def test_time_write_needs_the_policy_and_a_valid_value() -> None:
    allow = WritePolicy(allow_time_write=True)
    assert not classify_write(CURRENT_TIME, TIME_VALUE, service_uuid=CTS).allowed
    assert classify_write(CURRENT_TIME, TIME_VALUE, service_uuid=CTS, policy=allow).allowed
    assert not classify_write(CURRENT_TIME, TIME_VALUE[:-1], service_uuid=CTS,
                              policy=allow).allowed
    assert not classify_write(CURRENT_TIME, b"\x00" * 10, service_uuid=CTS,
                              policy=allow).allowed  # year 0: not a usable clock value
    assert not classify_write(CURRENT_TIME, TIME_VALUE, service_uuid=GLS, policy=allow).allowed


def test_the_policy_has_no_other_switch() -> None:
    # The one thing configuration can open is the clock; nothing names a therapy write.
    assert [f.name for f in dataclasses.fields(WritePolicy)] == ["allow_time_write"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        READ_ONLY.allow_time_write = True  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24), st.sampled_from(ALL_POLICIES))
def test_random_values_never_open_a_therapy_control_point(value: bytes,
                                                          policy: WritePolicy) -> None:
    for char in (COMMAND_CP, COMMAND_DATA):
        assert not classify_write(char, value, service_uuid=IDS, policy=policy).allowed
    verdict = classify_write(IDD_RACP, value, service_uuid=IDS, policy=policy)
    if verdict.allowed:
        assert value[0] in {0x33, 0x55, 0x5A} and value[0] in IDD_RACP_REQUEST_OP_CODES
    reader = classify_write(STATUS_READER, value, service_uuid=IDS, policy=policy)
    if reader.allowed:
        assert int.from_bytes(value[:2], "little") != StatusReaderOpCode.RESET_STATUS
    for service in (GLS, CGMS):
        gls = classify_write(RACP, value, service_uuid=service, policy=policy)
        if gls.allowed:
            assert value[0] in {1, 3, 4}
    socp = classify_write(SOCP, value, service_uuid=CGMS, policy=policy)
    if socp.allowed:
        assert value[0] in SOCP_READ_OP_CODES


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.binary(max_size=8))
def test_random_characteristics_are_refused(uuid: int, value: bytes) -> None:
    # Only the control points on the list (and the clock, when enabled) can ever pass.
    verdict = classify_write(uuid, value, service_uuid=None)
    if verdict.allowed:
        assert uuid in {IDD_RACP, STATUS_READER, SOCP}


# --- the guard in the central -------------------------------------------------------------------

class RecordingCentral(GattCentral):
    """A backend that only records what reaches it (the "radio")."""

    def __init__(self, policy: WritePolicy = READ_ONLY) -> None:
        super().__init__("AA:BB:CC:DD:EE:FF", policy=policy, timeout_s=1.0)
        self.radio: list[tuple[str, Any]] = []

    async def _connect_link(self) -> None:
        self.radio.append(("connect", None))

    async def _disconnect_link(self) -> None:
        self.radio.append(("disconnect", None))

    async def _secure_link(self, passkey: int | None) -> None:
        self.radio.append(("pair", passkey))

    async def _discover_services(self) -> tuple[GattService, ...]:
        return ()

    async def _read_value(self, characteristic: GattCharacteristic) -> bytes:
        return b""

    async def _write_value(self, characteristic: GattCharacteristic, value: bytes,
                           with_response: bool) -> None:
        self.radio.append(("write", (characteristic.uuid16, value)))

    async def _write_descriptor_value(self, characteristic: GattCharacteristic,
                                      descriptor_uuid: str, value: bytes) -> None:
        self.radio.append(("descriptor", (characteristic.uuid16, value)))

    async def _start_notify(self, characteristic: GattCharacteristic, callback: NotifyCallback,
                            indicate: bool) -> None:
        self.radio.append(("subscribe", (characteristic.uuid16, indicate)))

    async def _stop_notify(self, characteristic: GattCharacteristic) -> None:
        self.radio.append(("unsubscribe", characteristic.uuid16))

    @property
    def mtu(self) -> int:
        return 23


def char(uuid: int | str, service: int | None) -> GattCharacteristic:
    return GattCharacteristic(uuid=normalize_uuid(uuid),
                              service_uuid=normalize_uuid(service or 0x1800), handle=1,
                              properties=frozenset({"write", "notify", "indicate"}))


def test_refused_writes_never_reach_the_backend(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        for policy in ALL_POLICIES:
            central = RecordingCentral(policy)
            await central.connect()
            central.radio.clear()
            for service, uuid, value, why in THERAPY_FORBIDDEN + OTHER_FORBIDDEN:
                if service is None:
                    continue  # the central always knows the service
                with pytest.raises(ForbiddenWrite) as refused:
                    await central.write(char(uuid, service), value)
                assert refused.value.characteristic == normalize_uuid(uuid), why
                assert refused.value.value == value
            for descriptor, value in ((CCCD_UUID, b"\x03\x00"), (0x2901, b"x")):
                with pytest.raises(ForbiddenWrite):
                    await central.write_descriptor(char(0x2A18, GLS), descriptor, value)
            if not policy.allow_time_write:
                with pytest.raises(ForbiddenWrite):
                    await central.write(char(CURRENT_TIME, CTS), TIME_VALUE)
            assert central.radio == []
            assert len(central.refused_writes) >= len(THERAPY_FORBIDDEN)

    with caplog.at_level(logging.WARNING, logger="bridge.devices.gatt"):
        run(body)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0x2B25" in r.getMessage() and "refused" in r.getMessage() for r in warnings)


def test_allowed_writes_and_subscriptions_reach_the_backend() -> None:
    async def body() -> None:
        central = RecordingCentral()
        await central.connect()
        central.radio.clear()
        for service, uuid, value in ALLOWED:
            await central.write(char(uuid, service), value)
        received: list[bytes] = []
        await central.subscribe(char(0x2A18, GLS), received.append)
        await central.subscribe(char(RACP, GLS), received.append, indicate=True)
        await central.unsubscribe(char(0x2A18, GLS))
        await central.write_descriptor(char(0x2A18, GLS), CCCD_UUID, b"\x01\x00")
        writes = [v for kind, v in central.radio if kind == "write"]
        assert len(writes) == len(ALLOWED)
        assert ("subscribe", (0x2A18, False)) in central.radio
        assert ("subscribe", (RACP, True)) in central.radio
        assert ("unsubscribe", 0x2A18) in central.radio
        assert ("descriptor", (0x2A18, b"\x01\x00")) in central.radio
        assert central.refused_writes == []
        allow = RecordingCentral(WritePolicy(allow_time_write=True))
        await allow.connect()
        await allow.write(char(CURRENT_TIME, CTS), TIME_VALUE)
        assert ("write", (CURRENT_TIME, TIME_VALUE)) in allow.radio

    run(body)


def test_writes_need_a_link() -> None:
    async def body() -> None:
        central = RecordingCentral()
        with pytest.raises(DeviceDisconnected):
            await central.write(char(RACP, GLS), bytes(racp.report_all()))
        with pytest.raises(ForbiddenWrite):  # the guard answers first, link or not
            await central.write(char(COMMAND_CP, IDS), u16(CommandOpCode.SET_BOLUS))

    run(body)


@pytest.mark.parametrize("name", ["write", "write_descriptor", "subscribe", "unsubscribe",
                                  "_guard", "policy", "bounded", "_run"])
def test_a_backend_cannot_override_the_guarded_methods(name: str) -> None:
    async def bypass(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    with pytest.raises(TypeError, match="guarded"):
        type("Sneaky", (RecordingCentral,), {name: bypass})


def test_raw_primitives_refuse_to_run_outside_the_guard() -> None:
    async def body() -> None:
        central = RecordingCentral()
        await central.connect()
        central.radio.clear()
        target = char(COMMAND_CP, IDS)
        with pytest.raises(ForbiddenWrite):
            await central._write_value(target, u16(CommandOpCode.SET_BOLUS), True)
        with pytest.raises(ForbiddenWrite):
            await central._write_descriptor_value(target, normalize_uuid(CCCD_UUID), b"\1\0")
        with pytest.raises(ForbiddenWrite):
            await central._start_notify(target, lambda _v: None, False)
        with pytest.raises(ForbiddenWrite):
            await central._stop_notify(target)
        assert central.radio == []
        assert len(central.refused_writes) == 4

    run(body)


def test_both_backends_have_their_raw_primitives_checked() -> None:
    from bridge.devices.gatt_bleak import BleakCentral
    from bridge.devices.gatt_bumble import BumbleCentral

    for backend in (BumbleCentral, BleakCentral):
        for name in GattCentral._RAW_WRITERS:
            assert getattr(getattr(backend, name), "_guard_checked", False), (backend, name)


def test_the_policy_of_a_central_is_fixed() -> None:
    central = RecordingCentral()
    with pytest.raises(AttributeError):
        central.policy = WritePolicy(allow_time_write=True)  # type: ignore[misc]
    assert central.policy == READ_ONLY


# --- against the virtual devices ----------------------------------------------------------------

async def _try_forbidden(central: GattCentral, cases: list[tuple[Any, Any, bytes, str]],
                         services: set[int]) -> int:
    tried = 0
    for service, uuid, value, why in cases:
        if service not in services:
            continue
        target = central.find(uuid, service)
        if target is None:
            target = GattCharacteristic(normalize_uuid(uuid), normalize_uuid(service), 0xFFFF,
                                        frozenset({"write"}))
        with pytest.raises(ForbiddenWrite):
            await central.write(target, value)
        tried += 1
        del why
    return tried


def _accepted(peripheral: VirtualPeripheral) -> list[tuple[str, bytes]]:
    return [(w.characteristic, w.value) for w in peripheral.control_point_log]


@pytest.mark.parametrize("e2e", [False, True], ids=["plain", "e2e"])
def test_pump_refuses_every_forbidden_write_and_its_log_stays_empty(e2e: bool) -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, e2e=e2e, allow_time_write=True)
        async with ble_central(pump, link,
                               policy=WritePolicy(allow_time_write=True)) as central:
            # Subscribe to every control point first, so a write that slipped through
            # would be carried out and answered, not refused for a missing CCCD.
            for uuid in (STATUS_READER, COMMAND_CP, IDD_RACP, 0x2B28):
                await central.subscribe(central.require(uuid, IDS), lambda _v: None)
            tried = await _try_forbidden(central, THERAPY_FORBIDDEN, {IDS, 0x181E})
            assert tried > 120
            for uuid in (0x2B21, 0x2B23, 0x2B28):
                with pytest.raises(ForbiddenWrite):
                    await central.write_descriptor(central.require(uuid, IDS), 0x2901, b"x")
            assert pump.control_point_log == []
            assert pump.command_writes == []
            # The allowed procedures do reach the pump.
            counter = 0 if e2e else None
            await central.write(central.require(IDD_RACP, IDS),
                                bytes(racp_count_all(counter)))
            await central.write(central.require(STATUS_READER, IDS), seal_e2e(
                u16(StatusReaderOpCode.GET_DELIVERED_INSULIN), counter))
        assert [c for c, _ in _accepted(pump)] == ["racp", "status-reader-cp"]
        assert all(w.accepted for w in pump.control_point_log), pump.control_point_log
        assert pump.command_writes == []

    run(body)


def test_cgm_refuses_socp_changes_and_racp_delete() -> None:
    async def body() -> None:
        link = LocalLink()
        cgm = make_cgm(link)
        async with ble_central(cgm, link) as central:
            for uuid in (SOCP, RACP):
                await central.subscribe(central.require(uuid, CGMS), lambda _v: None,
                                        indicate=True)
            tried = await _try_forbidden(central, OTHER_FORBIDDEN + THERAPY_FORBIDDEN,
                                         {CGMS, CTS})
            assert tried >= 40
            assert cgm.control_point_log == []
            await central.write(central.require(SOCP, CGMS),
                                bytes(CgmSocp(SocpOpCode.GET_COMMUNICATION_INTERVAL)))
            await central.write(central.require(RACP, CGMS), bytes(racp.count_all()))
        assert [(c, v[0]) for c, v in _accepted(cgm)] == [("socp", 2), ("racp", 4)]

    run(body)


def test_meter_refuses_delete_and_malformed_requests() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link)
        async with ble_central(meter, link) as central:
            await central.subscribe(central.require(RACP, GLS), lambda _v: None)
            tried = await _try_forbidden(central, OTHER_FORBIDDEN, {GLS, DIS, CTS})
            assert tried > 20
            assert meter.control_point_log == []
            racp_char = central.require(RACP, GLS)
            for request in (racp.report_all(), racp.count_all(), racp.abort()):
                await central.write(racp_char, bytes(request))
        assert [v[0] for _, v in _accepted(meter)] == [1, 4, 3]

    run(body)


def test_allow_time_write_enables_the_clock_write_only() -> None:
    async def body() -> None:
        link = LocalLink()
        # Refused by the bridge when the device's policy does not allow it, even though the
        # meter itself would accept it.
        meter = make_meter(link, allow_time_write=True)
        async with ble_central(meter, link) as central:
            with pytest.raises(ForbiddenWrite, match="allow_time_write"):
                await central.write(central.require(CURRENT_TIME, CTS), TIME_VALUE)
        assert meter.control_point_log == []

        meter = make_meter(link, allow_time_write=True)
        allow = WritePolicy(allow_time_write=True)
        async with ble_central(meter, link, policy=allow) as central:
            await central.write(central.require(CURRENT_TIME, CTS), TIME_VALUE)
            with pytest.raises(ForbiddenWrite):
                await central.write(central.require(RACP, GLS), b"\x02\x01")
        assert [(w.characteristic, w.accepted) for w in meter.control_point_log] == [
            ("current-time", True)]

    run(body)


def test_driver_time_write_follows_the_device_option() -> None:
    async def body() -> None:
        from tests.edge.conftest import ble_driver

        link = LocalLink()
        meter = make_meter(link, allow_time_write=True)
        async with ble_driver(meter, link) as driver:
            assert isinstance(driver, GlucoseMeterDriver)
            with pytest.raises(ForbiddenWrite):
                await driver.write_current_time(T0.replace(tzinfo=None))
        assert meter.control_point_log == []
        meter = make_meter(link, allow_time_write=True)
        async with ble_driver(meter, link, allow_time_write=True) as driver:
            await driver.write_current_time(T0.replace(tzinfo=None))
        assert [w.characteristic for w in meter.control_point_log] == ["current-time"]

    run(body)
