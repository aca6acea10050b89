"""``hddt-bridge sim-devices``: serve a fleet of virtual devices until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.fleet import BleAttachment, FleetConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim-devices", help="serve virtual BLE and serial devices fed by simulated patients",
        description="Start the virtual devices of a fleet file (see configs/sim-devices.toml): "
                    "BLE peripherals on a bumble HCI transport and serial meters on ptys or "
                    "TCP ports. Prints where each device is, then serves until Ctrl-C.")
    p.add_argument("--config", required=True, type=Path, help="fleet file (TOML)")
    radio = p.add_mutually_exclusive_group()
    radio.add_argument("--link-server", metavar="TRANSPORT",
                       help="put all BLE devices on one virtual radio and open a virtual "
                            "controller on TRANSPORT for the central, e.g. "
                            "tcp-server:127.0.0.1:9102 (the central then uses "
                            "tcp-client:127.0.0.1:9102)")
    radio.add_argument("--transport", action="append", default=[], metavar="TRANSPORT",
                       help="bumble HCI transport for one BLE device, repeated in fleet "
                            "order: usb:0 (a dongle), tcp-client:127.0.0.1:9101 (toward "
                            "python -m bumble.apps.controllers)")
    p.add_argument("--duration", type=float,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from simulators.errors import SimulatorError
    from simulators.fleet import BleAttachment, ble_device_names, load_fleet

    try:
        config = load_fleet(args.config)
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    radios = ble_device_names(config)
    if radios and not args.link_server and len(args.transport) != len(radios):
        print(f"error: the fleet has {len(radios)} BLE device(s) ({', '.join(radios)}): give "
              "--link-server tcp-server:127.0.0.1:9102, or one --transport per BLE device",
              file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print("error: --duration must be positive", file=sys.stderr)
        return 2
    try:
        ble = BleAttachment(link_server=args.link_server, transports=tuple(args.transport))
        asyncio.run(_serve(config, ble, args.duration))
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: FleetConfig, ble: BleAttachment, duration: float | None) -> None:
    from simulators.fleet import describe, start_fleet

    print(f"simulating {len(config.patients)} patient(s), {config.history_days} day(s) of "
          f"history, live at {config.speed:g}x ...", flush=True)
    if ble.link_server:
        print(f"virtual radio: a central connects through {ble.link_server}", flush=True)
    fleet = await start_fleet(config, ble,
                              on_device=lambda d: print(describe(d), flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print("READY" + ("" if duration else " (Ctrl-C to stop)"), flush=True)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await fleet.close()
        print("stopped", flush=True)
