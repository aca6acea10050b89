"""``hddt-bridge demo`` end to end: simulated devices → agent → embedded broker → backend."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SUMMARY = re.compile(r"(\d+) read at the gateway, (\d+) stored in the backend \((\d+) devices")
_TABLES = ("glucose_readings", "cgm_readings", "insulin_events", "annunciations")


def _demo(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state), "--patients", "3",
         "--history-days", "1", "--port", "0", "--http-port", "0", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)


def _stored_keys(state: Path) -> list[str]:
    with sqlite3.connect(state / "backend.sqlite") as db:
        return [key for table in _TABLES
                for (key,) in db.execute(f"SELECT key FROM {table}")]


def test_demo_delivers_everything_the_agent_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = _demo(state, "--duration", "6", "--speed", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    match = _SUMMARY.search(done.stdout)
    assert match is not None, done.stdout
    read, stored, devices = map(int, match.groups())
    assert read == stored > 500          # a day of CGM values for two patients, at least
    assert devices == 5
    # Each device's line counts the records its history holds for the agent to read: all of
    # them read, plus what the live minutes added.
    history = [int(n) for n in re.findall(r"\((\d+) records stored\)", done.stdout)]
    assert len(history) == 5 and 0 < sum(history) <= read
    assert "backfill" in done.stdout and "100.0%" in done.stdout
    assert (state / "connection.json").stat().st_mode & 0o077 == 0
    assert (state / "demo-gateway-1.password").stat().st_mode & 0o077 == 0
    # Each patient's devices arrive through that patient's own gateway and belong to them.
    with sqlite3.connect(state / "backend.sqlite") as db:
        owners = sorted(db.execute(
            "SELECT devices.patient_id, gateways.patient_id, COUNT(*) FROM devices "
            "JOIN gateways ON gateways.id = devices.gateway_id "
            "GROUP BY devices.patient_id, gateways.patient_id"))
        readers = dict(db.execute("SELECT patient_id, COUNT(DISTINCT device_id) "
                                  "FROM cgm_readings GROUP BY patient_id"))
    assert owners == [("demo-patient-1", "demo-patient-1", 3),
                      ("demo-patient-2", "demo-patient-2", 1),
                      ("demo-patient-3", "demo-patient-3", 1)]
    assert readers == {"demo-patient-1": 1, "demo-patient-2": 1}
    connection = json.loads((state / "connection.json").read_text())
    assert {g["patient"] for g in connection["gateways"]} == {
        "demo-patient-1", "demo-patient-2", "demo-patient-3"}
    assert connection["fhir_base_url"].startswith("https://127.0.0.1:")


def test_restart_on_the_same_state_folder_resumes_without_loss_or_duplicates(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _demo(state, "--exit-when-ready")
    assert first.returncode == 0, first.stdout + first.stderr
    keys_first = _stored_keys(state)
    assert len(keys_first) > 500
    # Live for a while at high speed, so the second run has new records to fetch.
    second = _demo(state, "--duration", "6", "--speed", "600")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(resumed)" in second.stdout
    keys_second = _stored_keys(state)
    assert set(keys_first) <= set(keys_second)              # nothing lost
    assert len(keys_second) == len(set(keys_second))          # nothing twice
    assert len(keys_second) > len(keys_first)                 # and the new ones arrived
    match = _SUMMARY.search(second.stdout)
    assert match is not None
    read, stored, _ = map(int, match.groups())
    assert read == stored == len(keys_second)


def test_a_state_folder_refuses_other_settings(tmp_path: Path) -> None:
    import datetime as dt

    from bridge.demo import DemoOptions, load_or_create_state

    state = tmp_path / "state"
    state.mkdir()
    _, resumed = load_or_create_state(DemoOptions(state_dir=state, history_days=1),
                                      dt.datetime.now(dt.UTC))
    assert not resumed
    other = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state), "--history-days",
         "5", "--port", "0", "--http-port", "0", "--exit-when-ready"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert other.returncode == 2
    assert "created with --history-days 1, not 5" in other.stderr
    (state / "demo.json").write_text("{not json")
    broken = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state), "--port", "0",
         "--http-port", "0", "--exit-when-ready"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert broken.returncode == 2
    assert "demo.json: cannot read" in broken.stderr


def test_real_ble_devices_get_their_own_gateway_on_the_bleak_backend(tmp_path: Path) -> None:
    from bridge.demo import BLE_GATEWAY_ID, DemoOptions, _ble_agent_doc
    from bridge.edge.config import parse_config

    (tmp_path / f"{BLE_GATEWAY_ID}.password").write_text("secret\n")
    doc = _ble_agent_doc([("glucose", "C0:26:DA:01:02:03"), ("cgm", "D0:11:22:33:44:55")],
                         "mqtt://127.0.0.1:18830", tmp_path, DemoOptions(state_dir=tmp_path))
    config = parse_config(doc, "demo", tmp_path)
    assert config.gateway_id == BLE_GATEWAY_ID
    assert [(d.profile, d.address, d.backend) for d in config.devices] == [
        ("glucose", "C0:26:DA:01:02:03", "bleak"), ("cgm", "D0:11:22:33:44:55", "bleak")]


def test_a_bad_ble_device_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(tmp_path / "s"),
         "--ble-device", "thermometer=AA:BB:CC:DD:EE:FF"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--ble-device wants PROFILE=ADDRESS" in done.stderr
    assert not (tmp_path / "s").exists()
