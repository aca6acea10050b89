"""The bleak GATT backend against a real Bluetooth adapter (BlueZ) — opt-in.

bleak has no in-process virtual radio, so its adapter is proved on hardware: a Linux host
with BlueZ and an adapter, and a peripheral in range — a real meter, CGM or pump, or one of
the project's virtual peripherals on a second adapter, e.g. a USB dongle driven by bumble::

    python -m simulators.ble.runner meter --transport usb:0 --records 20

Then, naming the BlueZ adapter and the peripheral::

    HDDT_BLE_ADAPTER=hci0 HDDT_BLE_ADDRESS=F0:00:00:00:00:01 HDDT_BLE_PROFILE=glucose \\
        .venv/bin/pytest -m hardware tests/edge/test_bleak_hardware.py

``HDDT_BLE_PROFILE`` is ``glucose`` (default), ``cgm`` or ``insulin-pump``. Without
``HDDT_BLE_ADAPTER`` every test here is skipped; see docs/ble.md.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bridge.devices.base import SyncResult
from bridge.devices.ble import PROFILES, open_ble_driver, scan_ble
from bridge.devices.device_information import BleDriver
from bridge.devices.gatt import ForbiddenWrite

ADAPTER = os.environ.get("HDDT_BLE_ADAPTER")
ADDRESS = os.environ.get("HDDT_BLE_ADDRESS")
PROFILE = os.environ.get("HDDT_BLE_PROFILE", "glucose")

pytestmark = [
    pytest.mark.hardware,
    pytest.mark.skipif(not ADAPTER, reason="set HDDT_BLE_ADAPTER (e.g. hci0) to run the "
                       "bleak hardware tests"),
]

#: One write the guard must refuse for each profile, as (characteristic, service, value).
FORBIDDEN = {
    "glucose": (0x2A52, 0x1808, b"\x02\x01"),        # RACP delete all records
    "cgm": (0x2AAC, 0x181F, b"\x1a"),                # SOCP start session
    "insulin-pump": (0x2B25, 0x183A, b"\x4b\x11"),   # IDD Command CP: set bolus
}


def _need_address() -> str:
    if not ADDRESS:
        pytest.skip("set HDDT_BLE_ADDRESS to the peripheral's address")
    assert PROFILE in PROFILES, f"HDDT_BLE_PROFILE must be one of {sorted(PROFILES)}"
    return ADDRESS


def test_scan_lists_medical_devices() -> None:
    pytest.importorskip("bleak")
    found = asyncio.run(scan_ble(backend="bleak", adapter=ADAPTER, timeout_s=8.0))
    if ADDRESS:
        assert ADDRESS.upper() in {r.address for r in found}, found


def test_sync_and_guard_over_bluez() -> None:
    pytest.importorskip("bleak")
    address = _need_address()

    async def body() -> tuple[SyncResult, SyncResult]:
        driver = await open_ble_driver(PROFILE, address, backend="bleak",
                                       options={"adapter": ADAPTER, "timeout_s": 15.0,
                                                "connect_timeout_s": 30.0})
        assert isinstance(driver, BleDriver)
        try:
            first = await driver.sync({})
            second = await driver.sync(first.state)
            uuid, service, value = FORBIDDEN[PROFILE]
            target = driver.central.require(uuid, service)
            with pytest.raises(ForbiddenWrite):
                await driver.central.write(target, value)
            assert driver.central.refused_writes
            return first, second
        finally:
            await driver.close()

    first, second = asyncio.run(body())
    assert first.info.transport == "ble"
    assert not [r for r in second.records
                if r.idempotency_key() in {x.idempotency_key() for x in first.records}]
