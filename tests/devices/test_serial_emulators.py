"""Serial meter emulators driven by pyserial through a pty and through ``socket://``.

Each protocol gets a minimal client written here on the project's codecs (never a project
driver): it opens the emulator's URL with ``serial.serial_for_url`` exactly as it would open a
real meter, runs a whole session and turns what it read back into comparable readings. The
emulator runs in the test's event loop; the blocking client runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import serial

from bridge.errors import CrcMismatch, ProtocolError
from bridge.protocols.astm import (
    AstmControl,
    AstmFrame,
    AstmHeader,
    AstmPatient,
    AstmRecord,
    AstmRecordAssembler,
    AstmResult,
    AstmTerminationCode,
    AstmTerminator,
    decode_records,
    encode_control,
)
from bridge.protocols.mdc import AttrId, DevSpecProfile, PhdDm, Scada
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.onetouch_ultra2 import (
    Ultra2Command,
    Ultra2CommandCode,
    Ultra2DumpHeader,
    Ultra2Record,
    Ultra2Reply,
    Ultra2ResultKind,
    Ultra2Unit,
)
from bridge.protocols.onetouch_ultra_easy import (
    ClockResponse,
    EraseMemoryRequest,
    GlucoseUnitResponse,
    LinkControl,
    LinkSequence,
    ReadClockRequest,
    ReadGlucoseUnitRequest,
    ReadRecordCountRequest,
    ReadRecordRequest,
    ReadSerialNumberRequest,
    ReadSoftwareVersionRequest,
    RecordCountResponse,
    RecordResponse,
    SerialNumberResponse,
    SoftwareVersionResponse,
    SuccessResponse,
    UltraEasyFrame,
    UltraEasyRequest,
    UltraEasyResponse,
    UltraEasyResponseMessage,
    UltraEasyUnit,
    WriteClockRequest,
    parse_response,
)
from bridge.protocols.phd import (
    DATA_REQ_ID_AGENT_INITIATED,
    AareApdu,
    AarqApdu,
    AbortReason,
    AbrtApdu,
    ActionArgumentSimple,
    Apdu,
    AssociateResult,
    ConfigReport,
    ConfigReportRsp,
    ConfigResult,
    DataApdu,
    DataApduChoice,
    ErrorResult,
    ErrorValue,
    EventReportArgumentSimple,
    GetArgumentSimple,
    GetResultSimple,
    PrstApdu,
    RlreApdu,
    RlrqApdu,
    ScanReportInfoFixed,
    apdu_frame_size,
    decode_apdu,
    decode_fixed_observations,
    standard_config,
    standard_config_1700,
)
from bridge.protocols.phd_attributes import (
    AbsoluteTime,
    AttributeList,
    ProdSpecType,
    ProductionSpec,
    SystemModel,
    TypeVerList,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceKind,
    MealContext,
    SampleType,
)
from simulators.faults import FaultConfig
from simulators.serial import (
    PROTOCOLS,
    ContourOptions,
    PhdOptions,
    RunningEmulator,
    SerialEmulatorConfig,
    SerialEmulatorError,
    Ultra2Options,
    UltraEasyOptions,
    build_emulator,
    start_serial_emulator,
)
from simulators.serial.phd_meter import HANDLE_BLOOD, HANDLE_CONTROL, HANDLE_MEAL
from tests.devices.conftest import T0, FakeNow, device_info, run

T = TypeVar("T")

PORTS = ("pty", "tcp")
SETTLE_S = 0.05
READ_TIMEOUT_S = 2.0
SERIAL = "SN0001"
#: The meter clock at T0 (no device model clock: exact, in UTC).
DEVICE_NOW = T0.replace(tzinfo=None)


def reading(device_time: dt.datetime, mg_dl: float | None, *, control: bool = False,
            meal: MealContext | None = None, above: bool = False) -> BloodGlucoseReading:
    annunciations = frozenset({Annunciation.RESULT_TOO_HIGH}) if above else frozenset()
    return BloodGlucoseReading(
        device_id="meter-1", time=device_time.replace(tzinfo=dt.UTC), device_time=device_time,
        glucose_mg_dl=mg_dl, meal=meal, annunciations=annunciations,
        sample_type=SampleType.CONTROL_SOLUTION if control else SampleType.CAPILLARY_WHOLE_BLOOD)


#: The meter's history, oldest first: meals, a control-solution test, HI and LO. Whole minutes,
#: so that every protocol (ASTM carries minutes only) can show the exact device time.
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
class Got:
    """A reading as a client read it back: HI/LO carry no number but a flag."""

    device_time: dt.datetime
    mg_dl: int | None
    control: bool = False
    flag: str = ""


def expected(records: Sequence[BloodGlucoseReading], *, control: bool = True,
             newest_first: bool = True, limits: bool = False) -> list[Got]:
    """What a client should read for ``records``. ``limits``: HI/LO appear as the range
    limits 600/20 without a flag (protocols with no flag field)."""
    out: list[Got] = []
    for r in records:
        if r.is_control_solution and not control:
            continue
        value = r.glucose_mg_dl
        flag = ""
        if value is None:
            flag = "HIGH" if r.above_range else "LOW"
        elif value > 600:
            flag = "HIGH"
        elif value < 20:
            flag = "LOW"
        mg: int | None = None if flag else round(value or 0)
        if limits and flag:
            mg, flag = (600 if flag == "HIGH" else 20), ""
        assert r.device_time is not None
        out.append(Got(r.device_time, mg, r.is_control_solution, flag))
    return out[::-1] if newest_first else out


def config(protocol: str, port: str, *, records: Sequence[BloodGlucoseReading] = HISTORY,
           faults: FaultConfig | None = None,
           options: PhdOptions | Ultra2Options | UltraEasyOptions | ContourOptions | None = None,
           now: Callable[[], dt.datetime] | None = None) -> SerialEmulatorConfig:
    assert port in ("pty", "tcp")
    return SerialEmulatorConfig(
        protocol=protocol, port="pty" if port == "pty" else "tcp", records=records,
        info=device_info("meter-1", DeviceKind.BLOOD_GLUCOSE_METER, SERIAL),
        faults=faults or FaultConfig(), options=options, now=now or FakeNow(),
        settle_s=SETTLE_S)


@contextlib.contextmanager
def open_port(url: str, timeout: float = READ_TIMEOUT_S) -> Iterator[serial.SerialBase]:
    """Open the emulator like a real meter: ``serial.serial_for_url``."""
    port = serial.serial_for_url(url, timeout=timeout)
    try:
        yield port
    finally:
        sock = getattr(port, "_socket", None)
        port.close()
        if sock is not None:
            # pyserial 3.5 skips closing its socket when shutdown() fails on a connection the
            # other side already dropped; close it here so no socket leaks.
            sock.close()


async def client_session(running: RunningEmulator, client: Callable[[str], T]) -> T:
    """Run a blocking client against the emulator's URL."""
    return await asyncio.to_thread(client, running.url)


def session(cfg: SerialEmulatorConfig, client: Callable[[str], T]) -> tuple[T, RunningEmulator]:
    """Start the emulator, run ``client`` once, stop; the emulator must have raised nothing."""
    async def body() -> tuple[T, RunningEmulator]:
        running = await start_serial_emulator(cfg)
        try:
            result = await client_session(running, client)
        finally:
            await running.close()
        return result, running

    result, running = run(body)
    assert running.errors == []
    return result, running


# ================================================================================================
# Minimal clients on the codecs
# ================================================================================================


class Ultra2Client:
    """Host side of the OneTouch Ultra 2 ASCII protocol."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.lines: list[bytes] = []

    def line(self) -> bytes:
        raw = bytes(self.port.read_until(b"\r\n"))
        if not raw.endswith(b"\r\n"):
            raise TimeoutError(f"no complete line: {raw!r}")
        self.lines.append(raw)
        return raw

    def ask(self, code: Ultra2CommandCode, when: dt.datetime | None = None) -> Ultra2Reply:
        self.port.write(bytes(Ultra2Command(code, when)))
        return Ultra2Reply.from_bytes(self.line())

    def dump(self) -> tuple[Ultra2DumpHeader, list[Ultra2Record]]:
        self.port.write(bytes(Ultra2Command(Ultra2CommandCode.DUMP_RECORDS)))
        header = Ultra2DumpHeader.from_bytes(self.line())
        return header, [Ultra2Record.from_bytes(self.line()) for _ in range(header.count)]


def ultra2_got(record: Ultra2Record) -> Got:
    flag = {Ultra2ResultKind.HIGH: "HIGH", Ultra2ResultKind.LOW: "LOW"}.get(record.kind, "")
    return Got(record.device_time, record.glucose_mg_dl, record.control_solution, flag)


class UltraEasyClient:
    """Host side of the OneTouch Ultra Easy link protocol (ACKs, sequence bits)."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.link = LinkSequence()
        #: Link bytes of every data frame the meter sent that the host accepted.
        self.data_links: list[LinkControl] = []
        self.acks: list[UltraEasyFrame] = []
        self.crc_errors: list[CrcMismatch] = []

    def frame(self) -> bytes:
        """The next frame's raw bytes, cut by its LEN byte."""
        while True:
            stx = bytes(self.port.read(1))
            if not stx:
                raise TimeoutError("no frame")
            if stx == b"\x02":
                break
        length = bytes(self.port.read(1))
        if not length or length[0] < 6:
            raise TimeoutError("no frame length")
        rest = bytes(self.port.read(length[0] - 2))
        if len(rest) != length[0] - 2:
            raise TimeoutError("frame cut short")
        return stx + length + rest

    def connect(self) -> UltraEasyFrame:
        self.port.write(bytes(self.link.disconnect()))
        answer = UltraEasyFrame.from_bytes(self.frame())
        assert answer.is_ack and answer.is_disconnect
        return answer

    def send_request(self, request: UltraEasyRequest) -> None:
        self.port.write(bytes(self.link.data(bytes(request))))
        ack = UltraEasyFrame.from_bytes(self.frame())
        assert ack.is_ack and not ack.message
        self.acks.append(ack)

    def answer(self, *, acknowledge: bool = True) -> UltraEasyFrame:
        """The meter's next valid data frame; damaged ones are counted and not acknowledged,
        so the meter sends them again."""
        while True:
            raw = self.frame()
            try:
                frame = UltraEasyFrame.from_bytes(raw)
            except CrcMismatch as exc:
                self.crc_errors.append(exc)
                continue
            if self.link.receive(frame):
                self.data_links.append(frame.link)
                if acknowledge:
                    self.port.write(bytes(self.link.ack()))
                return frame

    def request(self, request: UltraEasyRequest) -> UltraEasyResponseMessage:
        self.send_request(request)
        return parse_response(self.answer().message, request)

    def read_records(self) -> list[RecordResponse]:
        count = self.request(ReadRecordCountRequest())
        assert isinstance(count, RecordCountResponse)
        out = []
        for i in range(count.count):
            record = self.request(ReadRecordRequest(i))
            assert isinstance(record, RecordResponse)
            out.append(record)
        return out


def easy_got(record: RecordResponse) -> Got:
    return Got(record.device_time, record.glucose_mg_dl)


@dataclass
class AstmTransfer:
    """What the host received in one E1381 transfer."""

    records: list[AstmRecord] = field(default_factory=list)
    frames: list[AstmFrame] = field(default_factory=list)
    crc_errors: list[CrcMismatch] = field(default_factory=list)
    naks_sent: int = 0
    ended_with_eot: bool = False


class AstmClient:
    """Host (receiver) side of ASTM E1381."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port

    def item(self) -> bytes:
        first = bytes(self.port.read(1))
        if not first:
            raise TimeoutError("nothing from the meter")
        if first != b"\x02":
            return first
        rest = bytes(self.port.read_until(b"\r\n"))
        if not rest.endswith(b"\r\n"):
            raise TimeoutError("frame cut short")
        return first + rest

    def send(self, control: AstmControl) -> None:
        self.port.write(encode_control(control))

    def transfer(self, *, nudge: bool = False,
                 nak: Callable[[AstmFrame, int], bool] | None = None) -> AstmTransfer:
        """Accept one transfer. ``nak(frame, times_seen)`` lets a test refuse good frames."""
        if nudge:
            self.send(AstmControl.EOT)
        assert self.item() == encode_control(AstmControl.ENQ)
        self.send(AstmControl.ACK)
        result = AstmTransfer()
        assembler = AstmRecordAssembler()
        texts: list[str] = []
        seen: dict[bytes, int] = {}
        while True:
            raw = self.item()
            if raw == encode_control(AstmControl.EOT):
                result.ended_with_eot = True
                break
            try:
                frame = AstmFrame.from_bytes(raw)
            except CrcMismatch as exc:
                result.crc_errors.append(exc)
                result.naks_sent += 1
                self.send(AstmControl.NAK)
                continue
            seen[raw] = seen.get(raw, 0) + 1
            if nak is not None and nak(frame, seen[raw]):
                result.naks_sent += 1
                self.send(AstmControl.NAK)
                continue
            texts += assembler.add(frame)
            result.frames.append(frame)
            self.send(AstmControl.ACK)
        result.records = decode_records(texts)
        return result


def astm_got(record: AstmResult) -> Got:
    flag = "HIGH" if record.is_high else "LOW" if record.is_low else ""
    assert record.test_time is not None
    value = None if flag else round(float(record.value or "nan"))
    return Got(record.test_time, value, record.is_control, flag)


class PhdManager:
    """Manager side of IEEE 11073-20601 over a byte stream (APDUs back to back)."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.invoke_id = 0x100
        self.received: list[Apdu] = []
        self.scans: list[ScanReportInfoFixed] = []
        self.scan_errors: list[ProtocolError] = []
        self.config: ConfigReport | None = None

    def read(self) -> Apdu:
        header = bytes(self.port.read(4))
        if len(header) < 4:
            raise TimeoutError("no APDU")
        size = apdu_frame_size(header)
        rest = bytes(self.port.read(size - 4))
        if len(rest) != size - 4:
            raise TimeoutError("APDU cut short")
        apdu = decode_apdu(header + rest)
        self.received.append(apdu)
        return apdu

    def send(self, apdu: Apdu) -> None:
        self.port.write(bytes(apdu))

    def associate(self, *, known_configs: Sequence[int] = (1700,)) -> AarqApdu:
        aarq = self.read()
        assert isinstance(aarq, AarqApdu)
        info = aarq.phd_info
        assert info is not None
        system_id = bytes.fromhex("0200000000000010")
        config = standard_config(info.dev_config_id) if info.dev_config_id in known_configs \
            else None
        if config is not None:
            self.config = config
            self.send(AareApdu.for_manager(AssociateResult.ACCEPTED, system_id))
            return aarq
        self.send(AareApdu.for_manager(AssociateResult.ACCEPTED_UNKNOWN_CONFIG, system_id))
        prst = self.read()
        assert isinstance(prst, PrstApdu)
        message = prst.data.message
        assert isinstance(message, EventReportArgumentSimple)
        assert prst.data.choice is DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT
        report = message.event_info
        assert isinstance(report, ConfigReport)
        self.config = report
        self.send(PrstApdu(prst.data.event_report_result(
            ConfigReportRsp(report.config_report_id, ConfigResult.ACCEPTED_CONFIG))))
        return aarq

    def pump(self, until: Callable[[Apdu], bool], *, confirm: bool = True) -> Apdu:
        """Read APDUs, confirming scan reports, until one satisfies ``until``."""
        while True:
            apdu = self.read()
            if isinstance(apdu, PrstApdu) and isinstance(apdu.data.message,
                                                         EventReportArgumentSimple):
                info = apdu.data.message.event_info
                if isinstance(info, ScanReportInfoFixed):
                    self.scans.append(info)
                    if confirm:
                        self.send(PrstApdu(apdu.data.event_report_result()))
            if until(apdu):
                return apdu

    def scan_readings(self, count: int) -> None:
        self.pump(lambda _a: self.observation_count() >= count)

    def observation_count(self) -> int:
        return sum(len(s.obs_scan_fixed) for s in self.scans)

    def next_invoke(self) -> int:
        self.invoke_id += 1
        return self.invoke_id

    def get_mds(self, *attribute_ids: int) -> Apdu:
        invoke = self.next_invoke()
        self.send(PrstApdu(DataApdu.get_mds(invoke, *attribute_ids)))
        return self.pump(lambda a: isinstance(a, PrstApdu) and a.data.invoke_id == invoke)

    def release(self) -> None:
        self.send(RlrqApdu())
        self.pump(lambda a: isinstance(a, RlreApdu))

    def readings(self) -> tuple[list[Got], dict[dt.datetime, int]]:
        """Readings (oldest first) and meal codes by time stamp, from every scan so far."""
        assert self.config is not None
        got: list[Got] = []
        meals: dict[dt.datetime, int] = {}
        for scan in self.scans:
            for obs in decode_fixed_observations(self.config, scan):
                stamp = obs.timestamp
                assert stamp is not None
                when = stamp.to_datetime()
                value = obs.value
                if obs.obj_handle == HANDLE_MEAL:
                    assert isinstance(value, int)
                    meals[when] = value
                    continue
                assert isinstance(value, SFloat)
                flag = {Special.POSITIVE_INFINITY: "HIGH",
                        Special.NEGATIVE_INFINITY: "LOW"}.get(value.special or Special.NAN, "")
                control = (obs.metric_type is not None
                           and obs.metric_type.code == Scada.MDC_CONC_GLU_CONTROL)
                got.append(Got(when, None if flag else round(float(value)), control, flag))
        return got, meals


# ================================================================================================
# Configuration and ports
# ================================================================================================


def test_unknown_protocol_and_wrong_options_are_refused() -> None:
    with pytest.raises(SerialEmulatorError, match="unknown serial protocol"):
        build_emulator(SerialEmulatorConfig(protocol="dexcom"))
    with pytest.raises(SerialEmulatorError, match="takes Ultra2Options"):
        build_emulator(SerialEmulatorConfig(protocol="onetouch-ultra2", options=PhdOptions()))
    assert set(PROTOCOLS) == {"phd", "onetouch-ultra2", "onetouch-ultra-easy", "contour-astm"}
    assert build_emulator(SerialEmulatorConfig(protocol="ieee11073")).PROTOCOL == "phd"


def test_urls_are_what_pyserial_opens() -> None:
    async def body() -> tuple[str, str]:
        pty = await start_serial_emulator(config("onetouch-ultra2", "pty"))
        tcp = await start_serial_emulator(config("onetouch-ultra2", "tcp"))
        urls = (pty.url, tcp.url)
        await pty.close()
        await tcp.close()
        return urls

    pty_url, tcp_url = run(body)
    assert pty_url.startswith("/dev/")
    assert tcp_url.startswith("socket://127.0.0.1:")
    assert int(tcp_url.rsplit(":", 1)[1]) > 0


def test_a_second_tcp_client_finds_the_port_busy() -> None:
    def clients(url: str) -> bytes:
        with open_port(url) as first:
            first.write(bytes(Ultra2Command(Ultra2CommandCode.READ_SERIAL_NUMBER)))
            assert first.read_until(b"\r\n").endswith(b"\r\n")
            # A raw socket: pyserial leaks its socket when closing a reset connection.
            host, tcp_port = url.removeprefix("socket://").rsplit(":", 1)
            with (socket.create_connection((host, int(tcp_port)), timeout=1.0) as second,
                  contextlib.suppress(ConnectionResetError)):
                assert second.recv(1) == b""
            first.write(bytes(Ultra2Command(Ultra2CommandCode.READ_SERIAL_NUMBER)))
            return bytes(first.read_until(b"\r\n"))

    line, running = session(config("onetouch-ultra2", "tcp"), clients)
    assert Ultra2Reply.from_bytes(line).serial_number() == SERIAL
    port = running.port
    assert getattr(port, "refused", 0) == 1


def test_pty_symlink_follows_the_port(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyMETER")

    async def body() -> str:
        running = await start_serial_emulator(
            dataclasses.replace(config("onetouch-ultra2", "pty"), link_path=link))
        try:
            assert running.url == link

            def client(url: str) -> str:
                with open_port(url) as port:
                    reply = Ultra2Client(port).ask(Ultra2CommandCode.READ_SERIAL_NUMBER)
                    return reply.serial_number()

            return await client_session(running, client)
        finally:
            await running.close()

    assert run(body) == SERIAL
    assert not os.path.lexists(link)


# ================================================================================================
# OneTouch Ultra 2
# ================================================================================================


@dataclass
class Ultra2Session:
    version: str
    serial: str
    clock: dt.datetime
    unit: Ultra2Unit
    dump: tuple[Ultra2DumpHeader, list[Ultra2Record]]
    set_reply: dt.datetime
    clock_after: dt.datetime
    erased: bool
    dump_after: tuple[Ultra2DumpHeader, list[Ultra2Record]]
    lines: list[bytes]


@pytest.mark.parametrize("port", PORTS)
def test_ultra2_full_session(port: str) -> None:
    new_time = dt.datetime(2027, 3, 2, 9, 30, 0)

    def client(url: str) -> Ultra2Session:
        with open_port(url) as p:
            host = Ultra2Client(p)
            return Ultra2Session(
                version=host.ask(Ultra2CommandCode.READ_SOFTWARE_VERSION).software_version(),
                serial=host.ask(Ultra2CommandCode.READ_SERIAL_NUMBER).serial_number(),
                clock=host.ask(Ultra2CommandCode.READ_DATE_TIME).device_time(),
                unit=host.ask(Ultra2CommandCode.READ_GLUCOSE_UNITS).glucose_unit(),
                dump=host.dump(),
                set_reply=host.ask(Ultra2CommandCode.SET_DATE_TIME, new_time).device_time(),
                clock_after=host.ask(Ultra2CommandCode.READ_DATE_TIME).device_time(),
                erased=host.ask(Ultra2CommandCode.ERASE_MEMORY).is_erase_confirmation,
                dump_after=host.dump(),
                lines=host.lines)

    out, running = session(config("onetouch-ultra2", port), client)
    assert out.version == "4.5"  # DeviceInfo.software_revision
    assert out.serial == SERIAL
    assert out.clock == DEVICE_NOW
    assert out.unit is Ultra2Unit.MG_DL
    header, records = out.dump
    assert (header.count, header.serial_number, header.unit) == (7, SERIAL, Ultra2Unit.MG_DL)
    assert [ultra2_got(r) for r in records] == expected(HISTORY)
    assert [r.meal.value for r in records] == ["N", "N", "N", "N", "N", "A", "B"]
    # The write commands were carried out and logged, like on a real meter.
    assert out.set_reply == new_time
    assert out.clock_after == new_time
    assert out.erased
    header_after, records_after = out.dump_after
    assert header_after.count == 0 and records_after == []
    assert [w.command for w in running.write_log] == ["set-time", "erase"]
    assert running.write_log[0].new_time == new_time
    assert running.write_log[0].device_time == DEVICE_NOW
    assert running.write_log[0].raw == bytes(Ultra2Command(Ultra2CommandCode.SET_DATE_TIME,
                                                           new_time))
    # Every line the meter sent parses and its checksum verifies.
    assert len(out.lines) == 4 + 1 + 7 + 3 + 1
    for line in out.lines:
        Ultra2Reply.from_bytes(line)


def test_ultra2_ignores_unknown_commands() -> None:
    def client(url: str) -> tuple[bytes, str]:
        with open_port(url, timeout=0.3) as p:
            p.write(b"\x11\rDMX\r")
            silence = bytes(p.read(1))
            host = Ultra2Client(p)
            return silence, host.ask(Ultra2CommandCode.READ_SERIAL_NUMBER).serial_number()

    (silence, serial_number), _ = session(config("onetouch-ultra2", "pty"), client)
    assert silence == b""
    assert serial_number == SERIAL


# ================================================================================================
# OneTouch Ultra Easy / Mini
# ================================================================================================


@pytest.mark.parametrize("port", PORTS)
def test_ultra_easy_full_session(port: str) -> None:
    new_time = dt.datetime(2027, 3, 2, 9, 30, 0)

    def client(url: str) -> tuple[dict[str, object], UltraEasyClient]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            out: dict[str, object] = {
                "version": host.request(ReadSoftwareVersionRequest()),
                "serial": host.request(ReadSerialNumberRequest()),
                "clock": host.request(ReadClockRequest()),
                "unit": host.request(ReadGlucoseUnitRequest()),
                "records": host.read_records(),
                "set": host.request(WriteClockRequest(new_time)),
                "clock_after": host.request(ReadClockRequest()),
                "erase": host.request(EraseMemoryRequest()),
                "count_after": host.request(ReadRecordCountRequest()),
            }
            return out, host

    (out, host), running = session(config("onetouch-ultra-easy", port), client)
    assert out["version"] == SoftwareVersionResponse("4.5")
    assert out["serial"] == SerialNumberResponse(SERIAL)
    assert out["clock"] == ClockResponse(DEVICE_NOW)
    assert out["unit"] == GlucoseUnitResponse(UltraEasyUnit.MG_DL)
    records = out["records"]
    assert isinstance(records, list)
    # Newest first; no control-solution result; HI/LO as the range limits.
    assert [easy_got(r) for r in records] == expected(HISTORY, control=False, limits=True)
    assert out["set"] == ClockResponse(new_time)
    assert out["clock_after"] == ClockResponse(new_time)
    assert out["erase"] == SuccessResponse()
    assert out["count_after"] == RecordCountResponse(0)
    assert [w.command for w in running.write_log] == ["set-time", "erase"]
    assert running.write_log[0].raw == bytes(WriteClockRequest(new_time))
    # Link layer: the meter's sequence bit alternates on every answer, and each answer
    # expects the host's next sequence bit; every request was acknowledged.
    sequence_bits = [bool(link & LinkControl.SEQUENCE) for link in host.data_links]
    assert sequence_bits == [i % 2 == 1 for i in range(len(sequence_bits))]
    assert len(host.acks) == len(host.data_links) == 4 + 1 + len(records) + 4
    assert host.crc_errors == []


def test_ultra_easy_retransmits_an_unacknowledged_answer_and_ignores_a_repeat() -> None:
    options = UltraEasyOptions(ack_timeout_s=0.15, max_retransmits=2)

    def client(url: str) -> dict[str, object]:
        with open_port(url, timeout=1.0) as p:
            host = UltraEasyClient(p)
            host.connect()
            host.send_request(ReadSerialNumberRequest())
            first = host.answer(acknowledge=False)
            start = time.monotonic()
            again = UltraEasyFrame.from_bytes(host.frame())  # no ACK: sent again
            waited = time.monotonic() - start
            third = UltraEasyFrame.from_bytes(host.frame())
            # After max_retransmits the meter gives up: nothing more comes.
            p.timeout = 0.5
            silence = bytes(p.read(1))
            # A repeated request (our frame lost its ACK) is acknowledged, not carried out.
            request_frame = host.link.data(bytes(ReadClockRequest()))
            p.write(bytes(request_frame))
            ack = UltraEasyFrame.from_bytes(host.frame())
            answer = host.answer()
            p.write(bytes(request_frame))
            ack_again = UltraEasyFrame.from_bytes(host.frame())
            after_repeat = bytes(p.read(1))
            return {"first": first, "again": again, "third": third, "waited": waited,
                    "silence": silence, "ack": ack, "answer": answer, "ack_again": ack_again,
                    "after_repeat": after_repeat}

    out, _ = session(config("onetouch-ultra-easy", "pty", options=options), client)
    assert out["first"] == out["again"] == out["third"]  # same frame, same sequence bit
    assert 0.1 <= out["waited"] <= 0.6  # type: ignore[operator]
    assert out["silence"] == b""
    ack, ack_again = out["ack"], out["ack_again"]
    assert isinstance(ack, UltraEasyFrame) and isinstance(ack_again, UltraEasyFrame)
    assert ack.is_ack and ack_again.is_ack
    assert out["after_repeat"] == b""


def test_ultra_easy_refuses_an_index_past_the_end() -> None:
    def client(url: str) -> UltraEasyResponseMessage:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            host.send_request(ReadRecordRequest(99))
            return UltraEasyResponse.from_bytes(host.answer().message)

    answer, _ = session(config("onetouch-ultra-easy", "tcp"), client)
    assert isinstance(answer, UltraEasyResponse)
    assert not answer.success


# ================================================================================================
# Contour-style ASTM E1381 / E1394
# ================================================================================================


@pytest.mark.parametrize("port", PORTS)
def test_contour_full_session(port: str) -> None:
    options = ContourOptions(max_text=40)  # long records split over ETB frames

    def client(url: str) -> tuple[AstmTransfer, AstmTransfer]:
        with open_port(url) as p:
            host = AstmClient(p)
            first = host.transfer()
            second = host.transfer(nudge=True)  # EOT asks the idle meter for another one
            return first, second

    (first, second), running = session(config("contour-astm", port, options=options), client)
    assert running.write_log == []
    for transfer in (first, second):
        assert transfer.ended_with_eot and transfer.crc_errors == []
        header, patient, *results, terminator = transfer.records
        assert isinstance(header, AstmHeader)
        assert header.serial_number == SERIAL
        assert header.reserved == "7"
        assert header.device_time == DEVICE_NOW
        assert isinstance(patient, AstmPatient)
        assert isinstance(terminator, AstmTerminator)
        assert terminator.termination is AstmTerminationCode.NORMAL
        assert all(isinstance(r, AstmResult) for r in results)
        got = [astm_got(r) for r in results if isinstance(r, AstmResult)]
        assert got == expected(HISTORY)
        assert [r.sequence for r in results if isinstance(r, AstmResult)] == list(range(1, 8))
        meals = [r.meal.value if r.meal else None for r in results if isinstance(r, AstmResult)]
        assert meals == [None, None, None, None, "F", "A", "B"]
        high = [r for r in results if isinstance(r, AstmResult) and r.is_high]
        assert [r.value for r in high] == ["600"]
        # Framing: numbers 1…7, 0, 1…; ETB on every frame but the last; long records split.
        numbers = [f.frame_number for f in transfer.frames]
        assert numbers == [(i + 1) % 8 for i in range(len(numbers))]
        assert len(numbers) > 8
        assert [f.final for f in transfer.frames] == [False] * (len(numbers) - 1) + [True]
        assert any(not f.ends_record for f in transfer.frames)
        assert all(len(f.text) <= 40 for f in transfer.frames)


def test_contour_retransmits_a_nakked_frame_and_gives_up_after_six_tries() -> None:
    options = ContourOptions(reply_timeout_s=1.0)

    def client(url: str) -> tuple[AstmTransfer, AstmTransfer]:
        with open_port(url) as p:
            host = AstmClient(p)
            # NAK every frame once: each comes again, identical, and then goes through.
            once = host.transfer(nak=lambda _f, seen: seen == 1)
            # NAK the third frame for ever: six tries, then the meter ends with EOT.
            stubborn = host.transfer(nudge=True, nak=lambda f, _seen: f.frame_number == 3)
            return once, stubborn

    (once, stubborn), _ = session(config("contour-astm", "pty", options=options), client)
    assert once.naks_sent == len(once.frames)
    assert [astm_got(r) for r in once.records if isinstance(r, AstmResult)] == expected(HISTORY)
    assert stubborn.naks_sent == 6
    assert stubborn.ended_with_eot
    assert [f.frame_number for f in stubborn.frames] == [1, 2]


def test_contour_answers_a_host_bid_with_nak_and_times_out_without_answer() -> None:
    options = ContourOptions(reply_timeout_s=0.3, start_on_connect=False)

    def client(url: str) -> tuple[bytes, bytes, bytes, float]:
        with open_port(url, timeout=1.0) as p:
            p.write(encode_control(AstmControl.ENQ))
            nak = bytes(p.read(1))
            p.write(encode_control(AstmControl.EOT))
            enq = bytes(p.read(1))
            start = time.monotonic()
            eot = bytes(p.read(1))  # no ACK from us: the meter gives up (E1381 §6.5.2)
            return nak, enq, eot, time.monotonic() - start

    (nak, enq, eot, waited), _ = session(config("contour-astm", "tcp", options=options), client)
    assert nak == encode_control(AstmControl.NAK)
    assert enq == encode_control(AstmControl.ENQ)
    assert eot == encode_control(AstmControl.EOT)
    assert 0.2 <= waited <= 0.9


# ================================================================================================
# IEEE 11073-20601 glucose meter agent
# ================================================================================================


@pytest.mark.parametrize("port", PORTS)
def test_phd_full_session_standard_config(port: str) -> None:
    options = PhdOptions(readings_per_report=4, response_timeout_s=2.0)

    def client(url: str) -> tuple[PhdManager, AarqApdu, Apdu]:
        with open_port(url) as p:
            manager = PhdManager(p)
            aarq = manager.associate()
            mds = manager.get_mds()
            manager.scan_readings(6)
            manager.release()
            return manager, aarq, mds

    (manager, aarq, mds), running = session(config("phd", port, options=options), client)
    info = aarq.phd_info
    assert info is not None and info.dev_config_id == 1700
    assert info.system_id == bytes.fromhex("0102030405060708")
    # MDS attributes
    assert isinstance(mds, PrstApdu) and isinstance(mds.data.message, GetResultSimple)
    attrs = mds.data.message.attribute_list
    assert attrs.get(AttrId.MDC_ATTR_ID_MODEL) == SystemModel(b"Example Medical", b"VM-1")
    assert attrs.get(AttrId.MDC_ATTR_SYS_ID) == bytes.fromhex("0102030405060708")
    assert attrs.get(AttrId.MDC_ATTR_DEV_CONFIG_ID) == 1700
    spec = attrs.get(AttrId.MDC_ATTR_ID_PROD_SPECN)
    assert isinstance(spec, ProductionSpec) and spec.get(ProdSpecType.SERIAL_NUMBER) == b"SN0001"
    assert attrs.get(AttrId.MDC_ATTR_TIME_ABS) == AbsoluteTime.from_datetime(DEVICE_NOW)
    types = attrs.get(AttrId.MDC_ATTR_SYS_TYPE_SPEC_LIST)
    assert isinstance(types, TypeVerList)
    assert [t.type_id for t in types.entries] == [DevSpecProfile.MDC_DEV_SPEC_PROFILE_GLUCOSE]
    assert attrs.get(AttrId.MDC_ATTR_VAL_BATT_CHARGE) == 80
    # Scan reports: 4 readings each, numbered 0, 1; data-req-id agent-initiated.
    assert [len(s.obs_scan_fixed) for s in manager.scans] == [4, 2]
    assert [s.scan_report_no for s in manager.scans] == [0, 1]
    assert {s.data_req_id for s in manager.scans} == {DATA_REQ_ID_AGENT_INITIATED}
    got, _meals = manager.readings()
    # Oldest first; configuration 1700 has no object for control solution.
    assert got == expected(HISTORY, control=False, newest_first=False)
    assert isinstance(manager.received[-1], RlreApdu)
    agent = running.emulator
    assert getattr(agent, "aborts_sent") == []  # noqa: B009


@pytest.mark.parametrize("port", PORTS)
def test_phd_extended_config_after_accepted_unknown_config(port: str) -> None:
    options = PhdOptions(dev_config_id=0x4001, readings_per_report=3)

    def client(url: str) -> PhdManager:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate(known_configs=())
            manager.scan_readings(7 + 3)  # seven readings, three with a meal context
            manager.release()
            return manager

    manager, _ = session(config("phd", port, options=options), client)
    report = manager.config
    assert report is not None and report.config_report_id == 0x4001
    assert [o.obj_handle for o in report.config_obj_list] == [HANDLE_BLOOD, HANDLE_CONTROL,
                                                              HANDLE_MEAL]
    got, meals = manager.readings()
    assert got == expected(HISTORY, newest_first=False)
    assert meals == {
        dt.datetime(2027, 2, 27, 7, 10): PhdDm.MDC_CTXT_GLU_MEAL_PREPRANDIAL,
        dt.datetime(2027, 2, 27, 12, 45): PhdDm.MDC_CTXT_GLU_MEAL_POSTPRANDIAL,
        dt.datetime(2027, 2, 28, 6, 55): PhdDm.MDC_CTXT_GLU_MEAL_FASTING,
    }


def test_phd_sends_standard_objects_when_the_manager_does_not_know_1700() -> None:
    def client(url: str) -> PhdManager:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate(known_configs=())
            manager.scan_readings(6)
            manager.release()
            return manager

    manager, _ = session(config("phd", "pty"), client)
    assert manager.config == standard_config_1700()
    got, _ = manager.readings()
    assert got == expected(HISTORY, control=False, newest_first=False)


def test_phd_live_reading_is_reported_while_associated() -> None:
    new = reading(dt.datetime(2027, 3, 1, 8, 5), 133)

    async def body() -> tuple[PhdManager, RunningEmulator]:
        running = await start_serial_emulator(config("phd", "tcp"))
        loop = asyncio.get_running_loop()

        def client(url: str) -> PhdManager:
            with open_port(url) as p:
                manager = PhdManager(p)
                manager.associate()
                manager.scan_readings(6)
                loop.call_soon_threadsafe(running.add_record, new)
                manager.scan_readings(7)
                manager.release()
                return manager

        try:
            return await client_session(running, client), running
        finally:
            await running.close()

    manager, running = run(body)
    assert running.errors == []
    got, _ = manager.readings()
    assert got[-1] == Got(dt.datetime(2027, 3, 1, 8, 5), 133)
    assert [s.scan_report_no for s in manager.scans] == [0, 1, 2]


def test_phd_aborts_when_a_report_is_not_confirmed() -> None:
    options = PhdOptions(response_timeout_s=0.3)

    def client(url: str) -> tuple[PhdManager, Apdu, float]:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            manager.pump(lambda a: isinstance(a, PrstApdu), confirm=False)
            start = time.monotonic()
            abort = manager.read()
            return manager, abort, time.monotonic() - start

    (_manager, abort, waited), running = session(config("phd", "pty", options=options), client)
    assert abort == AbrtApdu(AbortReason.RESPONSE_TIMEOUT)
    assert 0.2 <= waited <= 1.0
    assert getattr(running.emulator, "aborts_sent") == [AbortReason.RESPONSE_TIMEOUT]  # noqa: B009


def test_phd_aborts_on_garbage_and_answers_bad_invokes_with_errors() -> None:
    def client(url: str) -> dict[str, Apdu]:
        with open_port(url) as p:
            manager = PhdManager(p)
            out: dict[str, Apdu] = {}
            manager.associate()
            manager.scan_readings(6)
            # GET of an object the meter does not have → roer no-such-object-instance.
            manager.send(PrstApdu(DataApdu(7, DataApduChoice.ROIV_CMIP_GET,
                                           GetArgumentSimple(5))))
            out["get"] = manager.read()
            # A confirmed action it does not offer → roer no-such-action.
            manager.send(PrstApdu(DataApdu(8, DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION,
                                           ActionArgumentSimple(0, 3095))))
            out["action"] = manager.read()
            # Bytes that are no APDU at all → ABRT.
            p.write(bytes.fromhex("12 34 00 02 00 00"))
            out["garbage"] = manager.read()
            return out

    out, _ = session(config("phd", "tcp"), client)
    get, action = out["get"], out["action"]
    assert isinstance(get, PrstApdu) and get.data.invoke_id == 7
    assert get.data.message == ErrorResult(ErrorValue.NO_SUCH_OBJECT_INSTANCE)
    assert isinstance(action, PrstApdu) and action.data.invoke_id == 8
    assert action.data.message == ErrorResult(ErrorValue.NO_SUCH_ACTION)
    assert out["garbage"] == AbrtApdu(AbortReason.UNDEFINED)


def test_phd_get_of_selected_attributes() -> None:
    def client(url: str) -> AttributeList:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            mds = manager.get_mds(AttrId.MDC_ATTR_TIME_ABS)
            manager.scan_readings(6)
            manager.release()
            assert isinstance(mds, PrstApdu) and isinstance(mds.data.message, GetResultSimple)
            return mds.data.message.attribute_list

    attrs, _ = session(config("phd", "pty"), client)
    assert [a.attribute_id for a in attrs] == [AttrId.MDC_ATTR_TIME_ABS]
