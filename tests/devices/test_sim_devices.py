"""The fleet behind ``hddt-bridge sim-devices``: simulated patients served by virtual devices."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
import serial
from bumble.link import LocalLink

from bridge.protocols import racp
from bridge.protocols.onetouch_ultra2 import Ultra2Command, Ultra2CommandCode, parse_dump
from bridge.protocols.racp import RacpNumberOfRecords, parse_racp
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
from simulators.fleet import (
    BleAttachment,
    FleetConfigError,
    load_fleet,
    parse_fleet,
    start_fleet,
)
from tests.devices.conftest import Central, next_value, run
from tests.devices.test_ble_common import _process, _read_line

NOW = dt.datetime(2027, 3, 10, 9, 0, tzinfo=dt.UTC)
METER = "F0:00:00:00:07:01"

FLEET = {
    "simulation": {"history_days": 1, "live_days": 1, "speed": 7200.0, "seed": 3},
    "patient": [
        {"name": "adult#002", "device": [
            {"kind": "meter", "transport": "ble", "address": METER, "name": "Meter A"}]},
        {"name": "type2#001", "device": [
            {"kind": "meter", "transport": "serial", "protocol": "onetouch-ultra2",
             "name": "Ultra 2"}]},
    ],
}


async def _ble_count(central: Central) -> int:
    await central.connect(METER)
    await central.pair()
    await central.discover()
    responses = await central.subscribe(0x2A52, indicate=True)
    await central.write(0x2A52, bytes(racp.count_all()))
    answer = parse_racp(await next_value(responses, 10))
    assert isinstance(answer, RacpNumberOfRecords)
    return answer.count


def _serial_dump(url: str) -> int:
    with serial.serial_for_url(url, timeout=3) as port:
        port.write(bytes(Ultra2Command(Ultra2CommandCode.DUMP_RECORDS)))
        header = port.read_until(b"\r\n")
        count = int(header.split(b",")[0].split()[-1])
        lines = [header] + [port.read_until(b"\r\n") for _ in range(count)]
    return len(parse_dump(b"".join(lines)).records)


def test_fleet_serves_history_and_feeds_live_records() -> None:
    config = parse_fleet(FLEET)

    async def body() -> None:
        link = LocalLink()
        fleet = await start_fleet(config, BleAttachment(link=link), now=NOW)
        central = await Central.open(link)
        try:
            meter, ultra2 = fleet.devices
            assert meter.stored > 0 and ultra2.stored > 0
            assert all(r.time <= NOW for r in meter.log.records[:meter.stored])
            # Live records may already have joined the history at this speed.
            peripheral = meter.peripheral
            assert isinstance(peripheral, GlucoseMeterPeripheral)
            assert meter.stored <= await _ble_count(central) <= len(peripheral.memory)
            assert ultra2.serial is not None
            assert await asyncio.to_thread(_serial_dump, ultra2.serial.url) >= ultra2.stored
            # At 7200x, the next simulated day passes in 12 s: live records keep arriving.
            before = len(peripheral.memory)
            for _ in range(100):
                if len(peripheral.memory) > before:
                    break
                await asyncio.sleep(0.1)
            assert len(peripheral.memory) > before
        finally:
            await central.close()
            await fleet.close()

    run(body, timeout_s=90)


def test_sim_devices_command_serves_a_serial_meter(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(
        '[simulation]\nhistory_days = 1\nlive_days = 1\nspeed = 1.0\n'
        '[[patient]]\nname = "type2#002"\n'
        '[[patient.device]]\nkind = "meter"\ntransport = "serial"\n'
        'protocol = "onetouch-ultra2"\nname = "Ultra 2"\nport = "tcp"\n')
    with _process("-m", "bridge", "sim-devices", "--config", str(fleet_file),
                  "--duration", "60") as proc:
        lines = []
        while not (line := _read_line(proc, 60)).startswith("READY"):
            lines.append(line)
        described = next(x for x in lines if "onetouch-ultra2" in x)
        url = described.split("(")[0].split()[-1]
        stored = int(described.split("(")[1].split()[0])
        assert url.startswith("socket://127.0.0.1:") and stored > 0
        assert _serial_dump(url) == stored


def test_sim_devices_command_needs_a_radio_for_ble_devices(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(
        '[[patient]]\nname = "adult#003"\n'
        f'[[patient.device]]\nkind = "meter"\ntransport = "ble"\naddress = "{METER}"\n')
    with _process("-m", "bridge", "sim-devices", "--config", str(fleet_file)) as proc:
        assert proc.wait(60) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"simulation": {"speed": 0}}, "simulation.speed"),
        ({"simulation": {"history_days": "2"}}, "simulation.history_days: expected int"),
        ({"patient": []}, "no [[patient]] entries"),
        ({"patient": [{"name": "adult#001", "device": [{"kind": "toaster"}]}]},
         "patient[0].device[0].kind"),
        ({"patient": [{"name": "adult#001", "device": [{"kind": "meter"}]}]},
         "patient[0].device[0].address: required"),
        ({"patient": [{"name": "adult#001", "device": [
            {"kind": "meter", "transport": "serial", "protocol": "dexcom"}]}]},
         "patient[0].device[0].protocol"),
        ({"patient": [{"name": "adult#001", "device": [
            {"kind": "cgm", "transport": "serial", "protocol": "onetouch-ultra2"}]}]},
         "serial emulators are meters"),
        ({"patient": [{"name": "adult#001", "device": [
            {"kind": "meter", "address": METER, "faults": {"corrupt_rate": 0.1}}]}]},
         "faults: unknown key"),
        ({"patient": [{"name": "adult#001", "colour": "red", "device": []}]},
         "patient[0]: unknown key"),
    ],
)
def test_fleet_errors_name_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(FleetConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_fleet(FLEET | change, "fleet.toml")


def test_shipped_fleet_file_parses() -> None:
    config = load_fleet(Path(__file__).resolve().parents[2] / "configs" / "sim-devices.toml")
    assert len(config.patients) == 2
    assert {d.kind for p in config.patients for d in p.devices} == {"pump", "cgm", "meter"}


def test_unknown_patient_is_reported_before_any_device_starts() -> None:
    config = parse_fleet(FLEET | {"patient": [{"name": "adult#099", "device": [
        {"kind": "meter", "transport": "serial", "protocol": "onetouch-ultra2"}]}]})
    with pytest.raises(FleetConfigError, match="adult#099"):
        run(lambda: start_fleet(config, now=NOW))
