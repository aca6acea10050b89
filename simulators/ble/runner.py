"""Run a virtual BLE peripheral as a process of its own, on any bumble HCI transport.

    python -m simulators.ble.runner meter --transport tcp-client:127.0.0.1:9101 --records 20
    python -m simulators.ble.runner cgm --transport usb:0 --e2e-crc
    python -m simulators.ble.runner pump --transport tcp-client:127.0.0.1:9101 --days 2

With ``python -m bumble.apps.controllers tcp-server:_:9101 tcp-server:_:9102`` running, a
collector in another process (or language) connects through ``tcp-client:127.0.0.1:9102``.
The process prints ``READY <address>`` once it advertises and runs until SIGINT/SIGTERM.

:func:`serve` and the ``build_*`` functions are what a command line front end reuses:
build a peripheral from canonical records, then serve it until asked to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import signal
import sys
import typing
from collections.abc import Callable, Sequence

from bridge.records import BloodGlucoseReading, CgmReading, DeviceInfo, DeviceKind, MealContext
from simulators.ble.cgm_sensor import CgmSensorPeripheral
from simulators.ble.common import (
    HciTransport,
    PairingMode,
    PeripheralConfig,
    SecurityConfig,
    VirtualPeripheral,
)
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
from simulators.ble.insulin_pump import InsulinPumpPeripheral, PumpConfig, PumpRecord
from simulators.faults import FaultConfig
from simulators.physiology import standard_patient
from simulators.run import simulate_cohort
from simulators.scenario import load_scenario

PUMP_RECORD_TYPES = typing.get_args(PumpRecord)

DEFAULT_METER_ADDRESS = "F0:00:00:00:00:01"
DEFAULT_CGM_ADDRESS = "F0:00:00:00:00:02"
DEFAULT_PUMP_ADDRESS = "F0:00:00:00:00:03"
#: Start of the demo histories (true time).
DEMO_START = dt.datetime(2027, 1, 4, 7, 0, tzinfo=dt.UTC)


def demo_meter_readings(count: int, seed: int = 0, device_id: str = "demo-meter",
                        start: dt.datetime = DEMO_START) -> list[BloodGlucoseReading]:
    """A small deterministic meter history: four readings a day, meal contexts alternating."""
    rng = random.Random(seed)
    meals = (MealContext.FASTING, MealContext.POSTPRANDIAL, MealContext.PREPRANDIAL, None)
    out = []
    for i in range(count):
        time = start + dt.timedelta(hours=6 * i, minutes=rng.randrange(0, 30))
        out.append(BloodGlucoseReading(device_id=device_id, time=time, sequence=i + 1,
                                       glucose_mg_dl=float(rng.randrange(70, 220)),
                                       meal=meals[i % len(meals)]))
    return out


def demo_cgm_readings(count: int, seed: int = 0, device_id: str = "demo-cgm",
                      start: dt.datetime = DEMO_START) -> list[CgmReading]:
    """A small deterministic CGM history: one value every five minutes."""
    rng = random.Random(seed)
    out = []
    value = 120.0
    for i in range(count):
        step = rng.uniform(-4.0, 4.0)
        value = min(350.0, max(45.0, value + step))
        out.append(CgmReading(device_id=device_id, time=start + dt.timedelta(minutes=5 * i),
                              glucose_mg_dl=float(round(value)),
                              trend_mg_dl_per_min=round(step / 5, 1),
                              quality_percent=95.0, session_start=start,
                              time_offset_min=5 * i))
    return out


def peripheral_config(kind: DeviceKind, *, name: str, address: str,
                      security: SecurityConfig | None = None,
                      faults: FaultConfig | None = None,
                      now: Callable[[], dt.datetime] | None = None) -> PeripheralConfig:
    device_id = f"{kind.value}-{address.replace(':', '').lower()}"
    info = DeviceInfo(device_id=device_id, kind=kind, manufacturer="hddt-bridge simulator",
                      model=f"virtual {kind.value}", serial_number=address.replace(":", ""),
                      firmware_revision="1.0", hardware_revision="1.0",
                      software_revision="1.0", transport="ble", address=address)
    config = PeripheralConfig(name=name, address=address, info=info,
                              security=security or SecurityConfig(),
                              faults=faults or FaultConfig())
    return config if now is None else dataclasses.replace(config, now=now)


def build_meter(transport: HciTransport, readings: Sequence[BloodGlucoseReading], *,
                name: str = "Virtual Meter", address: str = DEFAULT_METER_ADDRESS,
                security: SecurityConfig | None = None,
                faults: FaultConfig | None = None) -> GlucoseMeterPeripheral:
    config = peripheral_config(DeviceKind.BLOOD_GLUCOSE_METER, name=name, address=address,
                               security=security, faults=faults)
    return GlucoseMeterPeripheral(config, transport, records=readings)


def build_cgm(transport: HciTransport, readings: Sequence[CgmReading], *,
              name: str = "Virtual CGM", address: str = DEFAULT_CGM_ADDRESS,
              security: SecurityConfig | None = None, faults: FaultConfig | None = None,
              e2e_crc: bool = False) -> CgmSensorPeripheral:
    config = peripheral_config(DeviceKind.CGM, name=name, address=address,
                               security=security, faults=faults)
    return CgmSensorPeripheral(config, transport, records=readings, e2e_crc=e2e_crc)


def demo_pump_records(days: int = 1, seed: int = 0,
                      patient: str = "adult#001") -> list[PumpRecord]:
    """A simulated patient's pump history (``days`` local days ending before today)."""
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days + 1)
    scenario = dataclasses.replace(load_scenario("three-meals"), start_date=start)
    result = simulate_cohort([standard_patient(patient)], scenario, days, seed=seed,
                             records=True)
    assert result.devices is not None and result.devices[0].pump is not None
    return [r for r in result.devices[0].pump.records if isinstance(r, PUMP_RECORD_TYPES)]


def build_pump(transport: HciTransport, records: Sequence[PumpRecord], *,
               name: str = "Virtual Pump", address: str = DEFAULT_PUMP_ADDRESS,
               security: SecurityConfig | None = None, faults: FaultConfig | None = None,
               e2e: bool = False) -> InsulinPumpPeripheral:
    config = peripheral_config(DeviceKind.INSULIN_PUMP, name=name, address=address,
                               security=security, faults=faults)
    return InsulinPumpPeripheral(config, transport, records=records, pump=PumpConfig(e2e=e2e))


async def serve(peripheral: VirtualPeripheral, stop: asyncio.Event | None = None,
                on_ready: Callable[[VirtualPeripheral], None] | None = None) -> None:
    """Start ``peripheral``, call ``on_ready`` once it advertises, run until ``stop`` is set
    (or SIGINT/SIGTERM when no event is given), then stop it cleanly."""
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop_event.set)
                installed.append(sig)
    try:
        await peripheral.start()
        if on_ready is not None:
            on_ready(peripheral)
        await stop_event.wait()
    finally:
        await peripheral.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators.ble.runner",
                                description="Run a virtual BLE glucose meter, CGM sensor or "
                                            "insulin pump.")
    p.add_argument("device", choices=("meter", "cgm", "pump"))
    p.add_argument("--transport", required=True,
                   help="bumble HCI transport, e.g. tcp-client:127.0.0.1:9101 or usb:0")
    p.add_argument("--address", help="LE random static address (default per device)")
    p.add_argument("--name", help="advertised name")
    p.add_argument("--records", type=int, default=20, help="records in the demo history")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e-crc", action="store_true", help="CGM, pump: enable E2E protection")
    p.add_argument("--days", type=int, default=1, help="pump: days of simulated history")
    p.add_argument("--passkey", type=int, help="pair with this fixed passkey (else Just Works)")
    p.add_argument("--no-bonding", action="store_true",
                   help="allow reading without pairing (bonding required by default)")
    return p


async def _main(args: argparse.Namespace) -> None:
    security = SecurityConfig(
        bonding_required=not args.no_bonding,
        mode=PairingMode.PASSKEY if args.passkey is not None else PairingMode.JUST_WORKS,
        passkey=args.passkey if args.passkey is not None else 123456)
    peripheral: VirtualPeripheral
    if args.device == "meter":
        peripheral = build_meter(args.transport, demo_meter_readings(args.records, args.seed),
                                 name=args.name or "Virtual Meter",
                                 address=args.address or DEFAULT_METER_ADDRESS,
                                 security=security)
    elif args.device == "pump":
        peripheral = build_pump(args.transport, demo_pump_records(args.days, args.seed),
                                name=args.name or "Virtual Pump",
                                address=args.address or DEFAULT_PUMP_ADDRESS,
                                security=security, e2e=args.e2e_crc)
    else:
        peripheral = build_cgm(args.transport, demo_cgm_readings(args.records, args.seed),
                               name=args.name or "Virtual CGM",
                               address=args.address or DEFAULT_CGM_ADDRESS,
                               security=security, e2e_crc=args.e2e_crc)

    def ready(p: VirtualPeripheral) -> None:
        print(f"READY {p.config.address}", flush=True)

    await serve(peripheral, on_ready=ready)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
