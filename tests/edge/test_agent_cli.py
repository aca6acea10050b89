"""The agent's command line: config errors that name the key, ``agent status``, ``agent run``
as a process, and the shipped example configurations."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.edge.cli import main, register
from bridge.edge.config import ConfigError, load_config, parse_config
from bridge.edge.outbox import Outbox
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind
from tests.edge.test_agent import to_toml

ROOT = Path(__file__).resolve().parents[2]


def good_doc(tmp_path: Path) -> dict[str, Any]:
    return {
        "agent": {"gateway_id": "gw-home"},
        "broker": {"url": "mqtt://127.0.0.1:1", "reconnect_min_s": 0.05,
                   "reconnect_max_s": 0.2},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "devices": [
            {"name": "meter", "transport": "ble", "profile": "glucose",
             "address": "F0:00:00:00:00:01"},
            {"name": "cgm", "transport": "ble", "profile": "cgm",
             "address": "F0:00:00:00:00:02", "backend": "bumble",
             "bumble_transport": "tcp-client:127.0.0.1:9102"},
            {"name": "ultra", "transport": "serial", "protocol": "onetouch-ultra2",
             "port": "/dev/ttyUSB0"},
        ],
    }


def write(tmp_path: Path, doc: dict[str, Any], name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def edited(tmp_path: Path, change: str, value: Any) -> dict[str, Any]:
    """``good_doc`` with one dotted key (``devices[2].transport``) set, or removed (None)."""
    doc = good_doc(tmp_path)
    *parents, last = change.split(".")
    node: Any = doc
    for part in parents:
        if "[" in part:
            name, index = part[:-1].split("[")
            node = node[name][int(index)]
        else:
            node = node.setdefault(part, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


BAD_KEYS = [
    ("devices[2].transport", "usb",
     "devices[2].transport: expected 'ble' or 'serial', got 'usb'"),
    ("devices[0].profile", "thermometer",
     "devices[0].profile: expected one of 'glucose', 'cgm', 'insulin-pump', got 'thermometer'"),
    ("devices[2].protocol", "xmodem", "devices[2].protocol: expected one of"),
    ("devices[1].bumble_transport", None, "devices[1].bumble_transport: missing"),
    ("devices[0].address", None, "devices[0].address: missing; expected a string"),
    ("devices[1].name", "meter", "devices[1].name: duplicate device name 'meter'"),
    ("devices[0].name", "kitchen meter", "devices[0].name: expected 1-64 of [A-Za-z0-9._-]"),
    ("devices[0].poll_interval_s", -5, "devices[0].poll_interval_s: expected a number > 0"),
    ("devices[0].poll_interval_s", "often", "devices[0].poll_interval_s: expected a number"),
    ("devices[0].timezone", "Mars/Olympus", "devices[0].timezone: unknown time zone"),
    ("devices[0].allow_time_write", "yes", "devices[0].allow_time_write: expected true or"),
    ("devices[0].passkey", 1234567, "devices[0].passkey: expected an integer 0..999999"),
    ("devices[0].port", "/dev/ttyUSB0", "devices[0].port: applies to serial devices only"),
    ("devices[2].backend", "bleak", "devices[2].backend: applies to BLE devices only"),
    ("devices[0].pol_interval_s", 5, "devices[0].pol_interval_s: unknown key"),
    ("devices[0].options.timeout_s", 5, "devices[0].options.timeout_s: set "
                                        "devices[0].timeout_s instead"),
    ("agent.gateway_id", None, "agent.gateway_id: missing"),
    ("agent.gateway_id", "gw/1", "agent.gateway_id: expected 1-64 of"),
    ("broker.url", "http://broker", "broker.url: expected mqtt://HOST[:PORT] or mqtts://"),
    ("broker.protocol", "3", "broker.protocol: expected '3.1.1' or '5', got '3'"),
    ("broker.batch_size", 0, "broker.batch_size: expected an integer 1..10000"),
    ("broker.tls", {"ca": "missing-ca.pem"}, "broker.tls.ca: no such file"),
    ("broker.reconnect_max_s", 0.01, "broker.reconnect_max_s: must be at least"),
    ("outbox.max_rows", 0, "outbox.max_rows: expected an integer 1 or more"),
    ("outbox.key_retention_days", 1, "outbox.key_retention_days: must be at least ttl_days"),
    ("clock.not_before", "yesterday", "clock.not_before: expected a date (YYYY-MM-DD)"),
    ("clock.tolerance_s", -1, "clock.tolerance_s: expected a number >= 0"),
    ("colck.tolerance_s", 1, "colck: unknown key"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_KEYS,
                         ids=[f"{k}={v}" for k, v, _ in BAD_KEYS])
def test_config_errors_name_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        key: str, value: Any, message: str) -> None:
    path = write(tmp_path, edited(tmp_path, key, value))
    assert main(["agent", "status", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ")
    assert message in err


def test_config_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="broker: missing; expected a table"):
        parse_config({"agent": {"gateway_id": "g"}})
    with pytest.raises(ConfigError, match=r"devices\[0\]: expected a table"):
        parse_config({"agent": {"gateway_id": "g"}, "broker": {"url": "mqtt://h"},
                      "devices": [1]})
    with pytest.raises(ConfigError, match="do not put a password in the URL"):
        parse_config({"agent": {"gateway_id": "g"}, "broker": {"url": "mqtt://u:p@h"}})


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    doc = good_doc(tmp_path)
    doc["outbox"]["path"] = "state/outbox.sqlite"
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / "pki" / name).write_text("x", encoding="utf-8")
    doc["broker"] = {"url": "mqtts://broker.example", "protocol": "3.1.1",
                     "tls": {"ca": "pki/ca.pem", "cert": "pki/gw.pem", "key": "pki/gw.key"}}
    config = load_config(write(tmp_path, doc))
    assert config.outbox_path == tmp_path / "state" / "outbox.sqlite"
    assert config.broker.port == 8883 and config.broker.protocol == "3.1.1"
    assert config.broker.tls is not None
    assert config.broker.tls.cert == tmp_path / "pki" / "gw.pem"
    assert config.broker.client_id == "hddt-gw-home"
    doc["broker"]["tls"] = {"ca": "pki/ca.pem", "cert": "pki/gw.pem"}
    with pytest.raises(ConfigError, match=r"broker\.tls\.key: cert and key go together"):
        load_config(write(tmp_path, doc))


@pytest.mark.parametrize("name", ["agent.toml", "agent-demo.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(ROOT / "configs" / name, check_files=False)
    assert config.devices
    assert config.broker.batch_size >= 1


def test_register_adds_the_commands_to_another_parser() -> None:
    parser = argparse.ArgumentParser(prog="hddt-bridge")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", "status", "--config", "x.toml", "--json"])
    assert args.json and callable(args.handler)
    args = parser.parse_args(["read", "--serial", "socket://127.0.0.1:9", "--protocol", "phd"])
    assert args.serial == "socket://127.0.0.1:9" and callable(args.handler)
    args = parser.parse_args(["scan", "--timeout", "2"])
    assert args.timeout == 2.0


def test_read_needs_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["read"])
    with pytest.raises(SystemExit, match="--ble needs --profile"):
        main(["read", "--ble", "F0:00:00:00:00:01"])
    path = write(tmp_path, good_doc(tmp_path))
    assert main(["read", "bathroom", "--config", str(path)]) == 1
    assert "no device named 'bathroom' (configured: meter, cgm, ultra)" in capsys.readouterr().err


def test_agent_status_shows_each_device(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, good_doc(tmp_path))
    assert main(["agent", "status", "--config", str(path)]) == 1
    assert "no outbox at" in capsys.readouterr().err
    t0 = dt.datetime(2027, 1, 4, 7, 0, tzinfo=dt.UTC)
    info = DeviceInfo(device_id="meter-a1", kind=DeviceKind.BLOOD_GLUCOSE_METER)
    records = [BloodGlucoseReading(device_id="meter-a1", time=t0 + dt.timedelta(hours=i),
                                   sequence=i, glucose_mg_dl=100.0) for i in range(12)]
    # The agent is "running": its outbox stays open for writing while status reads it.
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        outbox.put_sync("meter", records, {"last": 11}, info=info)
        outbox.delete([i.key for i in outbox.peek(5)])
        outbox.record_error("cgm", "DeviceTimeout: F0:00:00:00:00:02: no advertisement")
        assert main(["agent", "status", "--config", str(path)]) == 0
        text = capsys.readouterr().out
        assert main(["agent", "status", "--config", str(path), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    lines = text.splitlines()
    assert lines[0].startswith("gateway gw-home: 7 records queued")
    assert lines[1].split()[:4] == ["device", "last", "sync", "synced"]
    meter = next(line for line in lines if line.startswith("meter"))
    assert meter.split()[3:7] == ["12", "7", "0", "0"]
    cgm = next(line for line in lines if line.startswith("cgm"))
    assert "never" in cgm and "DeviceTimeout" in cgm
    assert any(line.startswith("ultra") for line in lines)  # configured, never seen
    by_name = {d["name"]: d for d in doc["devices"]}
    assert by_name["meter"]["records_synced"] == 12 and by_name["meter"]["queued"] == 7
    assert by_name["meter"]["device_id"] == "meter-a1"
    assert by_name["cgm"]["errors"] == 1 and by_name["ultra"]["last_sync"] is None
    assert doc["queued"] == 7


def test_agent_run_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    doc = good_doc(tmp_path)
    # A device that cannot be reached and a broker that is not there: the agent must keep
    # running, count the failures and stop cleanly when told to.
    doc["devices"] = [{"name": "ultra", "transport": "serial", "protocol": "onetouch-ultra2",
                       "port": "socket://127.0.0.1:1", "retry_min_s": 0.05,
                       "retry_max_s": 0.1, "timeout_s": 0.5}]
    path = write(tmp_path, doc)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.edge.cli", "agent", "run",
                             "--config", str(path), "--log-level", "warning"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        errors = 0
        while time.monotonic() < deadline and errors < 2:
            time.sleep(0.1)
            if (tmp_path / "outbox.sqlite").exists():
                with Outbox(tmp_path / "outbox.sqlite", create=False) as outbox:
                    errors = outbox.device_stats("ultra").errors
        assert errors >= 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "ultra: sync failed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    bad = write(tmp_path, edited(tmp_path, "devices[2].transport", "usb"), "bad.toml")
    result = subprocess.run([sys.executable, "-m", "bridge.edge.cli", "agent", "run",
                             "--config", str(bad)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {bad}: devices[2].transport: expected 'ble' or "
                                     "'serial', got 'usb'")


def test_profile_and_protocol_names_match_the_drivers() -> None:
    from bridge.devices.ble import BACKENDS, PROFILES
    from bridge.devices.serial import SERIAL_PROTOCOLS
    from bridge.edge import config

    assert set(config.BLE_PROFILES) == set(PROFILES)
    assert set(config.BLE_BACKENDS) == set(BACKENDS)
    assert set(config.SERIAL_PROTOCOLS) == set(SERIAL_PROTOCOLS)


DRIVER_OPTION_ERRORS = [
    ("devices[2].options", {"mtu": 185}, "devices[2].options.mtu: not an option of the "
                                         "onetouch-ultra2 driver"),
    ("devices[0].options", {"mtuu": 185}, "devices[0].options.mtuu: not an option of the "
                                          "glucose driver"),
    ("devices[0].options", {"mtu": 5}, "devices[0].options: option mtu must lie in 23"),
    ("devices[2].options", {"retries": "many"}, "devices[2].options: "),
]


@pytest.mark.parametrize(("key", "value", "message"), DRIVER_OPTION_ERRORS,
                         ids=[f"{k}={v}" for k, v, _ in DRIVER_OPTION_ERRORS])
def test_driver_options_are_checked_before_the_agent_starts(
        tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = write(tmp_path, edited(tmp_path, key, value))
    # A process with a deadline: should the check ever pass, the agent would run on.
    result = _run_cli("agent", "run", "--config", str(path), timeout=30)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "outbox.sqlite").exists()  # stopped before anything ran


def _run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bridge.edge.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_read_a_virtual_serial_meter_as_json_lines(tmp_path: Path) -> None:
    import asyncio

    from simulators.faults import FaultConfig
    from simulators.serial import SerialEmulatorConfig, start_serial_emulator
    from tests.edge.test_agent import past_history

    history = past_history(25)

    async def body() -> subprocess.CompletedProcess[str]:
        async with await start_serial_emulator(SerialEmulatorConfig(
                protocol="onetouch-ultra2", port="tcp", records=history,
                faults=FaultConfig(clock_offset_s=600))) as meter:
            result = await asyncio.to_thread(
                _run_cli, "read", "--serial", meter.url, "--protocol", "onetouch-ultra2",
                "--timezone", "UTC")
            assert meter.write_log == []
            return result

    result = asyncio.run(body())
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["type"] == "device-info" and lines[0]["kind"] == "blood-glucose-meter"
    clock = next(line for line in lines if line["type"] == "clock")
    assert clock["source"] == "serial-time-command"
    records = [line for line in lines if line["type"] == "record"]
    assert len(records) == 25
    assert all(r["key"].startswith(lines[0]["device_id"] + "|blood-glucose|") for r in records)
    # The meter's clock is 10 minutes fast: times come out corrected and flagged.
    assert all("device-clock-corrected" in r["time_quality"] for r in records)
    truth = sorted(r.time for r in history)
    got = sorted(dt.datetime.fromisoformat(r["time"]) for r in records)
    assert all(abs(a - b) < dt.timedelta(seconds=5) for a, b in zip(got, truth, strict=True))
    assert "25 records read from socket://" in result.stderr


def test_scan_finds_a_virtual_meter_over_virtual_controllers(tmp_path: Path) -> None:
    from tests.edge.mosquitto import free_port

    ports = (free_port(), free_port())
    controllers = subprocess.Popen(
        [sys.executable, "-m", "bumble.apps.controllers",
         *(f"tcp-server:127.0.0.1:{p}" for p in ports)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meter = None
    try:
        time.sleep(0.5)
        meter = subprocess.Popen(
            [sys.executable, "-m", "simulators.ble.runner", "meter", "--transport",
             f"tcp-client:127.0.0.1:{ports[0]}", "--records", "5"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert meter.stdout is not None
        assert meter.stdout.readline().startswith("READY F0:00:00:00:00:01")
        result = _run_cli("scan", "--backend", "bumble", "--bumble-transport",
                          f"tcp-client:127.0.0.1:{ports[1]}", "--timeout", "1.5")
        assert result.returncode == 0, result.stderr
        found = [json.loads(line) for line in result.stdout.splitlines()]
        ble = [f for f in found if f["type"] == "ble-device"]
        assert ble == [{"type": "ble-device", "address": "F0:00:00:00:00:01",
                        "name": "Virtual Meter", "rssi": ble[0]["rssi"],
                        "profiles": ["glucose"], "appearance": 0x0400}]
        assert all(f["type"] in ("ble-device", "serial-adapter") for f in found)
    finally:
        for proc in (meter, controllers):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def test_scan_serial_only_lists_adapters() -> None:
    result = _run_cli("scan", "--no-ble")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        doc = json.loads(line)
        assert doc["type"] == "serial-adapter" and doc["device"]
