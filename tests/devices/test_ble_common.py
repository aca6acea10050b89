"""The shared BLE peripheral base: advertising, several devices on one link, indications,
and a peripheral in another process over bumble's TCP virtual controllers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from bumble.core import AdvertisingData
from bumble.device import Advertisement
from bumble.link import LocalLink

from bridge.protocols import racp
from bridge.protocols.cgms import CgmMeasurement
from bridge.protocols.dis import DisString
from bridge.protocols.gls import GlucoseMeasurement
from bridge.protocols.racp import RacpOpCode, RacpResponse, RacpResponseCode
from bridge.records import DeviceKind
from simulators.ble.cgm_sensor import CgmSensorPeripheral
from simulators.ble.common import (
    Appearance,
    Indications,
    PeripheralConfig,
    SecurityConfig,
    build_device_information_service,
    system_id_from_info,
)
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
from simulators.ble.runner import demo_cgm_readings, demo_meter_readings
from tests.devices.conftest import (
    Central,
    FakeNow,
    device_info,
    drain,
    next_value,
    run,
    started,
    two_devices,
)

REPO = Path(__file__).resolve().parents[2]
SUCCESS = bytes(RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.SUCCESS))


def meter_config(address: str, device_id: str, name: str = "Meter") -> PeripheralConfig:
    return PeripheralConfig(name=name, address=address,
                            info=device_info(device_id, DeviceKind.BLOOD_GLUCOSE_METER),
                            now=FakeNow())


def test_advertising_carries_service_uuid_appearance_and_name() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = GlucoseMeterPeripheral(meter_config("F0:00:00:00:00:01", "m", "Glucose 1"),
                                       link)
        cgm = CgmSensorPeripheral(PeripheralConfig(
            name="A CGM sensor with a long name", address="F0:00:00:00:00:02",
            info=device_info("c", DeviceKind.CGM)), link)
        async with started(meter, cgm):
            central = await Central.open(link)
            seen: dict[str, AdvertisingData] = {}

            def on_advertisement(adv: Advertisement) -> None:
                seen.setdefault(str(adv.address), adv.data)
                if adv.is_scan_response or not adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME):
                    seen[str(adv.address) + "/scan"] = adv.data

            central.device.on(central.device.EVENT_ADVERTISEMENT, on_advertisement)
            try:
                await central.device.start_scanning(active=True)
                for _ in range(100):
                    if len([k for k in seen if "/" not in k]) >= 2:
                        break
                    await asyncio.sleep(0.02)
                await central.device.stop_scanning()
            finally:
                await central.close()
        meter_adv = next(v for k, v in seen.items() if k.startswith("F0:00:00:00:00:01")
                         and "/" not in k)
        assert meter_adv.get(AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS)
        raw_appearance = meter_adv.get(AdvertisingData.APPEARANCE, raw=True)
        assert raw_appearance == Appearance.GENERIC_GLUCOSE_METER.to_bytes(2, "little")
        assert meter_adv.get(AdvertisingData.COMPLETE_LOCAL_NAME) == "Glucose 1"
        # A name too long for the 31-octet advertising PDU goes to the scan response.
        adv, scan = cgm.advertising_data()
        assert len(adv) <= 31 and b"A CGM sensor with a long name" in scan
        assert Appearance.CONTINUOUS_GLUCOSE_MONITOR.to_bytes(2, "little") in adv

    run(body)


def test_dis_leaves_out_missing_fields_and_system_id_is_parsed() -> None:
    info = device_info("x", DeviceKind.CGM)
    assert system_id_from_info(info) is not None
    bare = type(info)(device_id="x", kind=DeviceKind.CGM, manufacturer="Only")
    service = build_device_information_service(bare)
    # Manufacturer and the PnP ID only.
    assert len(service.characteristics) == 2
    assert system_id_from_info(type(info)(device_id="x", kind=DeviceKind.CGM,
                                          system_id="not hex")) is None


def test_two_meters_and_a_cgm_on_one_link_at_once() -> None:
    async def body() -> None:
        link = LocalLink()
        m1 = GlucoseMeterPeripheral(meter_config("F0:00:00:00:00:11", "m1"), link,
                                    records=demo_meter_readings(4, seed=1, device_id="m1"))
        m2 = GlucoseMeterPeripheral(meter_config("F0:00:00:00:00:12", "m2"), link,
                                    records=demo_meter_readings(6, seed=2, device_id="m2"))
        cgm = CgmSensorPeripheral(PeripheralConfig(
            name="CGM", address="F0:00:00:00:00:13", info=device_info("c", DeviceKind.CGM),
            now=FakeNow()), link, records=demo_cgm_readings(5, seed=3))
        async with started(m1, m2, cgm):
            centrals = [await Central.open(link, f"C0:00:00:00:00:2{i}") for i in range(3)]
            try:
                for central, peripheral in zip(centrals, (m1, m2, cgm), strict=True):
                    await central.connect(peripheral.config.address)
                    await central.pair()
                    await central.discover()

                async def read_meter(central: Central) -> list[int]:
                    meas = await central.subscribe(0x2A18)
                    responses = await central.subscribe(0x2A52, indicate=True)
                    await central.write(0x2A52, bytes(racp.report_all()))
                    assert await next_value(responses) == SUCCESS
                    return [GlucoseMeasurement.from_bytes(v).sequence_number
                            for v in await drain(meas, 0.1)]

                async def read_cgm(central: Central) -> list[int]:
                    meas = await central.subscribe(0x2AA7)
                    responses = await central.subscribe(0x2A52, indicate=True)
                    await central.write(0x2A52, bytes(racp.report_all()))
                    assert await next_value(responses) == SUCCESS
                    return [r.time_offset_minutes for v in await drain(meas, 0.1)
                            for r in CgmMeasurement.from_bytes(v).records]

                got = await asyncio.gather(read_meter(centrals[0]), read_meter(centrals[1]),
                                           read_cgm(centrals[2]))
                assert got == [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [0, 5, 10, 15, 20]]
                serials = [DisString.from_bytes(await c.read(0x2A25)).value for c in centrals]
                assert serials == ["SN0001"] * 3
            finally:
                for central in centrals:
                    await central.close()

    run(body)


def test_indications_helper_waits_for_each_confirmation_and_needs_a_subscription() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = GlucoseMeterPeripheral(meter_config("F0:00:00:00:00:01", "m"), link)
        async with two_devices(meter, link) as central:
            assert meter.racp is not None and central.connection is not None
            connection = meter.connections[0]
            helper = Indications(meter, meter.racp.characteristic)
            assert await helper.send(connection, b"\x06\x00\x01\x01") is False
            queue = await central.subscribe(0x2A52, indicate=True)
            results = await asyncio.gather(*(helper.send(connection, bytes([6, 0, 1, i]))
                                             for i in range(1, 4)))
            assert results == [True, True, True]
            assert [await next_value(queue) for _ in range(3)] == [
                bytes([6, 0, 1, i]) for i in range(1, 4)]

    run(body)


def test_security_config_rejects_a_bad_passkey() -> None:
    with pytest.raises(ValueError):
        SecurityConfig(passkey=1_000_000)


# --- across processes over bumble's TCP virtual controllers ------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


_LINES: dict[int, queue.Queue[str]] = {}


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's next line of output. A reader thread per child feeds a queue: select() on
    the pipe would miss lines already read ahead into the text buffer."""
    assert proc.stdout is not None
    lines = _LINES.get(proc.pid)
    if lines is None:
        lines = _LINES[proc.pid] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:
            # The pipe is closed when the child is cleaned up; that simply ends the reader.
            with contextlib.suppress(ValueError, OSError):
                for line in stdout:
                    lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no output from {proc.args!r} (exit code {proc.poll()})") from None


@contextlib.contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A child process that is always terminated (killed if need be) and reaped."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        _LINES.pop(proc.pid, None)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_meter_in_another_process_over_tcp_virtual_controllers() -> None:
    peripheral_port, central_port = _free_port(), _free_port()
    expected = demo_meter_readings(12, seed=7)
    with _process("-m", "bumble.apps.controllers", f"tcp-server:127.0.0.1:{peripheral_port}",
                  f"tcp-server:127.0.0.1:{central_port}"):
        _wait_for_port(peripheral_port)
        _wait_for_port(central_port)
        with _process("-m", "simulators.ble.runner", "meter", "--transport",
                      f"tcp-client:127.0.0.1:{peripheral_port}", "--records", "12",
                      "--seed", "7", "--address", "F0:00:00:00:00:31") as meter:
            assert _read_line(meter, 30).strip() == "READY F0:00:00:00:00:31"

            async def body() -> list[GlucoseMeasurement]:
                central = await Central.open(f"tcp-client:127.0.0.1:{central_port}")
                try:
                    await central.connect("F0:00:00:00:00:31")
                    await central.pair()
                    await central.discover()
                    meas = await central.subscribe(0x2A18)
                    responses = await central.subscribe(0x2A52, indicate=True)
                    await central.write(0x2A52, bytes(racp.report_all()))
                    assert await next_value(responses, 10) == SUCCESS
                    return [GlucoseMeasurement.from_bytes(v) for v in await drain(meas, 0.3)]
                finally:
                    await central.close()

            got = run(body, timeout_s=60)
            assert [m.sequence_number for m in got] == [r.sequence for r in expected]
            assert [m.glucose_mg_dl() for m in got] == [Decimal(round(r.glucose_mg_dl or 0))
                                                        for r in expected]
            assert [m.time() for m in got] == [
                r.time.astimezone(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
                for r in expected]


def test_cgm_in_another_process_over_tcp_virtual_controllers() -> None:
    from bridge.protocols.cgms import CgmMeasurement

    peripheral_port, central_port = _free_port(), _free_port()
    expected = demo_cgm_readings(30, seed=5)
    with _process("-m", "bumble.apps.controllers", f"tcp-server:127.0.0.1:{peripheral_port}",
                  f"tcp-server:127.0.0.1:{central_port}"):
        _wait_for_port(peripheral_port)
        _wait_for_port(central_port)
        with _process("-m", "simulators.ble.runner", "cgm", "--transport",
                      f"tcp-client:127.0.0.1:{peripheral_port}", "--records", "30",
                      "--seed", "5", "--e2e-crc", "--address", "F0:00:00:00:00:32") as cgm:
            assert _read_line(cgm, 30).strip() == "READY F0:00:00:00:00:32"

            async def body() -> list[bytes]:
                central = await Central.open(f"tcp-client:127.0.0.1:{central_port}")
                try:
                    await central.connect("F0:00:00:00:00:32")
                    await central.pair()
                    await central.discover()
                    meas = await central.subscribe(0x2AA7)
                    responses = await central.subscribe(0x2A52, indicate=True,
                                                        service=0x181F)
                    await central.write(0x2A52, bytes(racp.report_all()), service=0x181F)
                    assert await next_value(responses, 10) == SUCCESS
                    return await drain(meas, 0.3)
                finally:
                    await central.close()

            records = [r for n in run(body, timeout_s=60)
                       for r in CgmMeasurement.from_bytes(n, True).records]
            assert [r.time_offset_minutes for r in records] == [
                f.time_offset_min for f in expected]
            assert [r.glucose_mg_dl for r in records] == [
                round(f.glucose_mg_dl or 0) for f in expected]


def test_pump_in_another_process_over_tcp_virtual_controllers() -> None:
    from bridge.protocols.ids import IdsCharacteristic as C
    from bridge.protocols.ids import racp_report_all
    from bridge.protocols.ids_history import HistoryData
    from simulators.ble.runner import demo_pump_records
    from tests.devices.test_ble_insulin_pump import expected_view, from_history

    peripheral_port, central_port = _free_port(), _free_port()
    expected = demo_pump_records(1, seed=4)
    with _process("-m", "bumble.apps.controllers", f"tcp-server:127.0.0.1:{peripheral_port}",
                  f"tcp-server:127.0.0.1:{central_port}"):
        _wait_for_port(peripheral_port)
        _wait_for_port(central_port)
        with _process("-m", "simulators.ble.runner", "pump", "--transport",
                      f"tcp-client:127.0.0.1:{peripheral_port}", "--days", "1",
                      "--seed", "4", "--address", "F0:00:00:00:00:33") as pump:
            assert _read_line(pump, 60).strip() == "READY F0:00:00:00:00:33"

            async def body() -> list[bytes]:
                central = await Central.open(f"tcp-client:127.0.0.1:{central_port}")
                try:
                    await central.connect("F0:00:00:00:00:33")
                    await central.pair()
                    await central.discover()
                    history = await central.subscribe(C.IDD_HISTORY_DATA)
                    responses = await central.subscribe(C.IDD_RECORD_ACCESS_CONTROL_POINT,
                                                        indicate=True)
                    await central.write(C.IDD_RECORD_ACCESS_CONTROL_POINT,
                                        bytes(racp_report_all()))
                    await next_value(responses, 15)
                    return await drain(history, 0.3)
                finally:
                    await central.close()

            events = [HistoryData.from_bytes(f, False) for f in run(body, timeout_s=90)]
            assert events and from_history(events) == expected_view(expected)
