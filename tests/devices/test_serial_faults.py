"""Fault injection of the serial meter emulators, observed from the client side only.

Every fault of :class:`simulators.faults.FaultConfig` that a serial meter can show is driven
through pyserial and checked on what the client receives: the line dropping after N records,
frames whose checksum/CRC fails (and the retransmission paths of ASTM and the Ultra Easy),
answers that never come or come late, records sent twice, shifted or reset clocks, a memory
reset and a low battery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import pytest
import serial

from bridge.errors import CrcMismatch, ProtocolError
from bridge.protocols.astm import AstmControl, AstmHeader, AstmResult, encode_control
from bridge.protocols.mdc import AttrId
from bridge.protocols.onetouch_ultra2 import (
    Ultra2Command,
    Ultra2CommandCode,
    Ultra2DumpHeader,
    Ultra2Record,
)
from bridge.protocols.onetouch_ultra_easy import (
    ClockResponse,
    ReadClockRequest,
    ReadRecordCountRequest,
    ReadRecordRequest,
    ReadSerialNumberRequest,
    RecordCountResponse,
)
from bridge.protocols.phd import GetResultSimple, PrstApdu, decode_fixed_observations
from bridge.protocols.phd_attributes import AbsoluteTime
from bridge.records import BloodGlucoseReading
from simulators.faults import LOW_BATTERY_PERCENT, FaultConfig
from simulators.serial import (
    ContourOptions,
    PhdOptions,
    SerialEmulatorConfig,
    UltraEasyOptions,
    start_serial_emulator,
)
from tests.devices.conftest import run
from tests.devices.test_serial_emulators import (
    DEVICE_NOW,
    HISTORY,
    PORTS,
    AstmClient,
    Got,
    PhdManager,
    Ultra2Client,
    UltraEasyClient,
    astm_got,
    client_session,
    config,
    easy_got,
    expected,
    open_port,
    reading,
    session,
    ultra2_got,
)

PROTOCOLS = ("phd", "onetouch-ultra2", "onetouch-ultra-easy", "contour-astm")
#: Timers short enough for tests (the defaults are the specifications' seconds).
FAST: dict[str, PhdOptions | UltraEasyOptions | ContourOptions | None] = {
    "phd": PhdOptions(readings_per_report=4, response_timeout_s=1.0),
    "onetouch-ultra2": None,
    "onetouch-ultra-easy": UltraEasyOptions(ack_timeout_s=0.1, max_retransmits=20),
    "contour-astm": ContourOptions(reply_timeout_s=1.0),
}


def cfg(protocol: str, port: str = "pty", *, records: tuple[BloodGlucoseReading, ...] = HISTORY,
        **faults: object) -> SerialEmulatorConfig:
    return config(protocol, port, records=records, options=FAST[protocol],
                  faults=FaultConfig(**faults))  # type: ignore[arg-type]


def read_all(protocol: str) -> Callable[[str], list[Got]]:
    """A client reading every stored reading in the protocol's own order."""
    def phd(url: str) -> list[Got]:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            # Stop when no report comes for a while (the count depends on the fault).
            p.timeout = 0.5
            with contextlib.suppress(TimeoutError):
                manager.pump(lambda _a: False)
            return manager.readings()[0]

    def ultra2(url: str) -> list[Got]:
        with open_port(url) as p:
            return [ultra2_got(r) for r in Ultra2Client(p).dump()[1]]

    def ultra_easy(url: str) -> list[Got]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            return [easy_got(r) for r in host.read_records()]

    def contour(url: str) -> list[Got]:
        with open_port(url) as p:
            transfer = AstmClient(p).transfer()
            return [astm_got(r) for r in transfer.records if isinstance(r, AstmResult)]

    return {"phd": phd, "onetouch-ultra2": ultra2, "onetouch-ultra-easy": ultra_easy,
            "contour-astm": contour}[protocol]


def expected_for(protocol: str) -> list[Got]:
    if protocol == "phd":
        return expected(HISTORY, control=False, newest_first=False)
    if protocol == "onetouch-ultra-easy":
        return expected(HISTORY, control=False, limits=True)
    return expected(HISTORY)


# ================================================================================================
# Disconnect mid-transfer
# ================================================================================================


def read_until_drop(protocol: str) -> Callable[[str], tuple[int, BaseException | None]]:
    """A client counting the records it got before the line dropped."""
    def phd(url: str) -> tuple[int, BaseException | None]:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            try:
                manager.pump(lambda _a: False)
            except (serial.SerialException, TimeoutError) as exc:
                return manager.observation_count(), exc
        return manager.observation_count(), None

    def ultra2(url: str) -> tuple[int, BaseException | None]:
        got = 0
        with open_port(url) as p:
            host = Ultra2Client(p)
            p.write(bytes(Ultra2Command(Ultra2CommandCode.DUMP_RECORDS)))
            header = Ultra2DumpHeader.from_bytes(host.line())
            assert header.count == 7
            try:
                for _ in range(header.count):
                    Ultra2Record.from_bytes(host.line())
                    got += 1
            except (serial.SerialException, TimeoutError) as exc:
                return got, exc
        return got, None

    def ultra_easy(url: str) -> tuple[int, BaseException | None]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            got = 0
            try:
                count = host.request(ReadRecordCountRequest())
                assert isinstance(count, RecordCountResponse)
                for i in range(count.count):
                    host.request(ReadRecordRequest(i))
                    got += 1
            except (serial.SerialException, TimeoutError) as exc:
                return got, exc
        return got, None

    def contour(url: str) -> tuple[int, BaseException | None]:
        with open_port(url) as p:
            host = AstmClient(p)
            results = 0
            try:
                assert host.item() == encode_control(AstmControl.ENQ)
                host.send(AstmControl.ACK)
                while True:
                    raw = host.item()
                    if raw.startswith(b"\x02") and raw[2:3] == b"R":
                        results += 1
                    host.send(AstmControl.ACK)
            except (serial.SerialException, TimeoutError) as exc:
                return results, exc

    return {"phd": phd, "onetouch-ultra2": ultra2, "onetouch-ultra-easy": ultra_easy,
            "contour-astm": contour}[protocol]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_disconnect_after_records(protocol: str, port: str) -> None:
    (got, error), _ = session(cfg(protocol, port, disconnect_after_records=2),
                              read_until_drop(protocol))
    assert got == 2
    # The line dropped: pyserial reports the device/socket gone (not a mere time-out).
    assert isinstance(error, serial.SerialException)


def test_pty_reappears_after_an_unplug_and_serves_again() -> None:
    async def body() -> tuple[str, str, int, int]:
        running = await start_serial_emulator(
            cfg("onetouch-ultra2", "pty", disconnect_after_records=3))
        try:
            first_url = running.url
            first, _ = await client_session(running, read_until_drop("onetouch-ultra2"))
            second_url = running.url
            second, _ = await client_session(running, read_until_drop("onetouch-ultra2"))
            return first_url, second_url, first, second
        finally:
            await running.close()

    first_url, second_url, first, second = run(body)
    assert first_url != second_url  # a new pty, as a USB adapter re-enumerates
    assert first == second == 3


# ================================================================================================
# Corrupted frames
# ================================================================================================


def test_ultra2_corrupted_record_lines_fail_their_checksum() -> None:
    def client(url: str) -> tuple[list[bytes], list[Exception]]:
        with open_port(url) as p:
            host = Ultra2Client(p)
            p.write(bytes(Ultra2Command(Ultra2CommandCode.DUMP_RECORDS)))
            header = Ultra2DumpHeader.from_bytes(host.line())
            lines = [host.line() for _ in range(header.count)]
            errors: list[Exception] = []
            for line in lines:
                try:
                    Ultra2Record.from_bytes(line)
                except ProtocolError as exc:
                    errors.append(exc)
            return lines, errors

    (lines, errors), _ = session(cfg("onetouch-ultra2", corrupt_frame_rate=1.0), client)
    assert len(lines) == 7
    assert len(errors) == 7 and all(isinstance(e, CrcMismatch) for e in errors)


@pytest.mark.parametrize("port", PORTS)
def test_ultra_easy_corrupted_answers_are_retransmitted(port: str) -> None:
    def client(url: str) -> tuple[list[Got], list[CrcMismatch]]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            return [easy_got(r) for r in host.read_records()], host.crc_errors

    (got, crc_errors), _ = session(
        cfg("onetouch-ultra-easy", port, corrupt_frame_rate=0.5, seed=3), client)
    assert crc_errors and all(isinstance(e, CrcMismatch) for e in crc_errors)
    assert got == expected_for("onetouch-ultra-easy")


@pytest.mark.parametrize("port", PORTS)
def test_contour_corrupted_frames_are_nakked_and_resent(port: str) -> None:
    def client(url: str) -> tuple[list[Got], int, int]:
        with open_port(url) as p:
            transfer = AstmClient(p).transfer()
            results = [astm_got(r) for r in transfer.records if isinstance(r, AstmResult)]
            numbers = [f.frame_number for f in transfer.frames]
            assert numbers == [(i + 1) % 8 for i in range(len(numbers))]
            return results, len(transfer.crc_errors), transfer.naks_sent

    (got, crc_errors, naks), _ = session(
        cfg("contour-astm", port, corrupt_frame_rate=0.5, seed=1), client)
    assert crc_errors > 0
    assert naks == crc_errors
    assert got == expected_for("contour-astm")


def test_phd_corrupted_scan_reports_are_refused_by_the_decoder() -> None:
    def client(url: str) -> tuple[int, list[ProtocolError]]:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            manager.scan_readings(6)
            manager.release()
            assert manager.config is not None
            errors: list[ProtocolError] = []
            for scan in manager.scans:
                try:
                    for obs in decode_fixed_observations(manager.config, scan):
                        assert obs.timestamp is not None
                        obs.timestamp.to_datetime()
                except ProtocolError as exc:
                    errors.append(exc)
            return len(manager.scans), errors

    (reports, errors), _ = session(cfg("phd", corrupt_frame_rate=1.0), client)
    assert reports == 2
    assert len(errors) == 2


def test_the_same_seed_corrupts_the_same_frames() -> None:
    def client(url: str) -> list[bytes]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            host.read_records()
            return [e.data for e in host.crc_errors]

    first, _ = session(cfg("onetouch-ultra-easy", corrupt_frame_rate=0.4, seed=3), client)
    second, _ = session(cfg("onetouch-ultra-easy", corrupt_frame_rate=0.4, seed=3), client)
    assert first  # this seed damages some frames …
    assert first == second  # … and the very same bytes every run


# ================================================================================================
# Missing and slow responses
# ================================================================================================


def test_ultra2_missing_answer_times_out() -> None:
    def client(url: str) -> bytes:
        with open_port(url, timeout=0.5) as p:
            p.write(bytes(Ultra2Command(Ultra2CommandCode.READ_SERIAL_NUMBER)))
            return bytes(p.read_until(b"\r\n"))

    answer, _ = session(cfg("onetouch-ultra2", drop_response_rate=1.0), client)
    assert answer == b""


def test_ultra_easy_missing_answer_times_out_after_the_ack() -> None:
    def client(url: str) -> Exception | None:
        with open_port(url, timeout=0.5) as p:
            host = UltraEasyClient(p)
            host.connect()
            host.send_request(ReadSerialNumberRequest())  # the ACK frame still comes
            try:
                host.answer()
            except TimeoutError as exc:
                return exc
            return None

    error, _ = session(cfg("onetouch-ultra-easy", drop_response_rate=1.0), client)
    assert isinstance(error, TimeoutError)


def test_phd_missing_get_answer_times_out() -> None:
    def client(url: str) -> Exception | None:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            manager.scan_readings(6)  # scan reports are not responses: they still come
            p.timeout = 0.5
            try:
                manager.get_mds()
            except TimeoutError as exc:
                return exc
            return None

    error, _ = session(cfg("phd", drop_response_rate=1.0), client)
    assert isinstance(error, TimeoutError)


def test_contour_lost_frames_end_the_transfer_with_eot() -> None:
    def client(url: str) -> tuple[bytes, float]:
        with open_port(url) as p:
            host = AstmClient(p)
            assert host.item() == encode_control(AstmControl.ENQ)
            host.send(AstmControl.ACK)
            start = time.monotonic()
            return host.item(), time.monotonic() - start

    (item, waited), _ = session(cfg("contour-astm", drop_response_rate=1.0), client)
    assert item == encode_control(AstmControl.EOT)  # no frame ever came
    assert waited >= 0.9


def test_slow_answers() -> None:
    delay = 0.3

    def ultra2(url: str) -> float:
        with open_port(url) as p:
            start = time.monotonic()
            Ultra2Client(p).ask(Ultra2CommandCode.READ_SERIAL_NUMBER)
            return time.monotonic() - start

    def ultra_easy(url: str) -> tuple[float, float]:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            start = time.monotonic()
            host.send_request(ReadClockRequest())
            ack = time.monotonic() - start
            host.answer()
            return ack, time.monotonic() - start

    def phd(url: str) -> float:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            manager.scan_readings(6)
            start = time.monotonic()
            manager.get_mds()
            return time.monotonic() - start

    elapsed, _ = session(cfg("onetouch-ultra2", response_delay_s=delay), ultra2)
    assert elapsed >= delay
    (ack, answer), _ = session(cfg("onetouch-ultra-easy", response_delay_s=delay), ultra_easy)
    assert ack < delay <= answer  # the link ACK is immediate, the answer slow
    elapsed, _ = session(cfg("phd", response_delay_s=delay), phd)
    assert elapsed >= delay


# ================================================================================================
# Records: duplicates, memory reset
# ================================================================================================


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_duplicate_records(protocol: str) -> None:
    got, _ = session(cfg(protocol, duplicate_record_rate=1.0), read_all(protocol))
    assert got == [g for g in expected_for(protocol) for _ in range(2)]


def test_memory_reset_in_the_history() -> None:
    got, _ = session(cfg("onetouch-ultra2", sequence_reset_at_record=4),
                     read_all("onetouch-ultra2"))
    assert got == expected(HISTORY[4:])


def test_memory_reset_makes_the_record_count_drop() -> None:
    live = [reading(dt.datetime(2027, 3, 1, 9 + i, 0), 100 + i) for i in range(3)]

    def count(url: str) -> int:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            answer = host.request(ReadRecordCountRequest())
            assert isinstance(answer, RecordCountResponse)
            return answer.count

    async def body() -> list[int]:
        # Records 0…2 are the history; the memory is cleared when record 5 arrives.
        running = await start_serial_emulator(
            cfg("onetouch-ultra-easy", records=HISTORY[:3], sequence_reset_at_record=5))
        try:
            counts = [await client_session(running, count)]
            running.add_record(live[0])
            running.add_record(live[1])
            counts.append(await client_session(running, count))
            running.add_record(live[2])
            counts.append(await client_session(running, count))
            return counts
        finally:
            await running.close()
            assert running.errors == []

    assert run(body) == [3, 5, 1]


# ================================================================================================
# Clock faults and battery
# ================================================================================================


def shifted(got: list[Got], delta: dt.timedelta) -> list[Got]:
    return [dataclasses.replace(g, device_time=g.device_time + delta) for g in got]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clock_offset_shifts_every_device_time(protocol: str) -> None:
    got, _ = session(cfg(protocol, clock_offset_s=3600), read_all(protocol))
    assert got == shifted(expected_for(protocol), dt.timedelta(hours=1))


def test_clock_offset_shows_in_every_clock_read() -> None:
    hour = dt.timedelta(hours=1)

    def ultra2(url: str) -> dt.datetime:
        with open_port(url) as p:
            return Ultra2Client(p).ask(Ultra2CommandCode.READ_DATE_TIME).device_time()

    def ultra_easy(url: str) -> dt.datetime:
        with open_port(url) as p:
            host = UltraEasyClient(p)
            host.connect()
            answer = host.request(ReadClockRequest())
            assert isinstance(answer, ClockResponse)
            return answer.device_time

    def contour(url: str) -> dt.datetime | None:
        with open_port(url) as p:
            header = AstmClient(p).transfer().records[0]
            assert isinstance(header, AstmHeader)
            return header.device_time

    def phd(url: str) -> object:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            mds = manager.get_mds(AttrId.MDC_ATTR_TIME_ABS)
            manager.scan_readings(6)
            manager.release()
            assert isinstance(mds, PrstApdu) and isinstance(mds.data.message, GetResultSimple)
            return mds.data.message.attribute_list.get(AttrId.MDC_ATTR_TIME_ABS)

    assert session(cfg("onetouch-ultra2", clock_offset_s=3600), ultra2)[0] == DEVICE_NOW + hour
    assert session(cfg("onetouch-ultra-easy", clock_offset_s=3600),
                   ultra_easy)[0] == DEVICE_NOW + hour
    assert session(cfg("contour-astm", clock_offset_s=3600), contour)[0] == DEVICE_NOW + hour
    assert session(cfg("phd", clock_offset_s=3600), phd)[0] == AbsoluteTime.from_datetime(
        DEVICE_NOW + hour)


def test_clock_reset_at_a_record() -> None:
    reset_to = dt.datetime(2000, 1, 1)
    # Record 5 was taken right after the reset; record 6 4 h 15 min later.
    got, _ = session(cfg("onetouch-ultra2", clock_reset_at_record=5), read_all("onetouch-ultra2"))
    want = expected(HISTORY)
    want[1] = dataclasses.replace(want[1], device_time=reset_to)
    want[0] = dataclasses.replace(want[0], device_time=reset_to + dt.timedelta(hours=4,
                                                                              minutes=15))
    assert got == want

    def clock(url: str) -> dt.datetime:
        with open_port(url) as p:
            return Ultra2Client(p).ask(Ultra2CommandCode.READ_DATE_TIME).device_time()

    now, _ = session(cfg("onetouch-ultra2", clock_reset_at_record=5), clock)
    assert now == reset_to + (DEVICE_NOW - dt.datetime(2027, 3, 1, 3, 15))


def test_phd_battery_low_shows_in_the_mds() -> None:
    def client(url: str) -> object:
        with open_port(url) as p:
            manager = PhdManager(p)
            manager.associate()
            mds = manager.get_mds(AttrId.MDC_ATTR_VAL_BATT_CHARGE)
            manager.scan_readings(6)
            manager.release()
            assert isinstance(mds, PrstApdu) and isinstance(mds.data.message, GetResultSimple)
            return mds.data.message.attribute_list.get(AttrId.MDC_ATTR_VAL_BATT_CHARGE)

    assert session(cfg("phd", battery_low=True), client)[0] == LOW_BATTERY_PERCENT

