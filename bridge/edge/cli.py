"""Command line of the edge agent: ``agent run``, ``agent status``, ``scan`` and ``read``.

:func:`register` adds the subcommands to the ``hddt-bridge`` parser; ``python -m
bridge.edge.cli`` runs the same commands on their own (the service unit and the crash tests
start the agent that way)::

    hddt-bridge agent run --config configs/agent.toml
    hddt-bridge agent status --config configs/agent.toml [--json]
    hddt-bridge scan [--timeout 10] [--backend bumble --bumble-transport usb:0]
    hddt-bridge read kitchen-meter --config configs/agent.toml
    hddt-bridge read --ble F0:00:00:00:00:01 --profile glucose
    hddt-bridge read --serial /dev/ttyUSB0 --protocol onetouch-ultra2
"""
# Each command imports what it needs when it runs: ``hddt-bridge --help`` and ``decode`` must
# not pay for loading the MQTT client, SQLite or the device stacks.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bridge.errors import BridgeError

if TYPE_CHECKING:
    from bridge.edge.config import ClockConfig, DeviceConfig

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=required,
                   help="agent configuration (TOML), e.g. configs/agent.toml")


def register(subparsers: Any) -> None:
    """Add ``agent``, ``scan`` and ``read`` to an ``argparse`` subparsers object."""
    agent = subparsers.add_parser(
        "agent", help="the edge agent: sync devices into the outbox and publish over MQTT",
        description="Run the edge agent or show what it has done.")
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    run = agent_sub.add_parser(
        "run", help="run the agent until SIGINT/SIGTERM",
        description="Sync every configured device, keep records in the outbox and publish "
                    "them at QoS 1; stops cleanly on SIGINT or SIGTERM.")
    _add_config(run)
    run.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    run.set_defaults(handler=_cmd_agent_run)
    status = agent_sub.add_parser(
        "status", help="per device: last sync, records synced, queued, dropped, errors",
        description="Read the outbox (also while the agent runs) and show each device's "
                    "counters.")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_cmd_agent_status)

    scan = subparsers.add_parser(
        "scan", help="list nearby BLE devices with a supported service, and serial adapters",
        description="Scan for BLE glucose meters, CGMs and insulin pumps and list the serial "
                    "adapters attached to this machine.")
    scan.add_argument("--timeout", type=float, default=10.0, metavar="S",
                      help="BLE scan duration in seconds (default 10)")
    scan.add_argument("--backend", choices=("bleak", "bumble"), default="bleak")
    scan.add_argument("--bumble-transport", metavar="SPEC",
                      help="bumble HCI transport, e.g. usb:0 (with --backend bumble)")
    scan.add_argument("--no-ble", action="store_true", help="list serial adapters only")
    scan.set_defaults(handler=_cmd_scan)

    read = subparsers.add_parser(
        "read", help="read one device once and print its records as JSON lines",
        description="Read every stored record of one device through the agent's drivers and "
                    "print the device information, the clock observation and each record "
                    "(clock-corrected, with its idempotency key) as JSON lines. No broker "
                    "and no outbox are involved; the device is not changed.")
    read.add_argument("device", nargs="?", help="a device name from --config")
    _add_config(read, required=False)
    read.add_argument("--ble", metavar="ADDRESS", help="BLE address of the device")
    read.add_argument("--profile", choices=("glucose", "cgm", "insulin-pump"))
    read.add_argument("--backend", choices=("bleak", "bumble"), default="bleak")
    read.add_argument("--bumble-transport", metavar="SPEC")
    read.add_argument("--passkey", type=int)
    read.add_argument("--serial", metavar="URL", help="serial port or pyserial URL")
    read.add_argument("--protocol", help="serial protocol, e.g. onetouch-ultra2")
    read.add_argument("--timezone", help="device time zone (default Europe/Berlin)")
    read.add_argument("--timeout", type=float, metavar="S",
                      help="per-answer timeout (default: the driver's own)")
    read.set_defaults(handler=_cmd_read)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- agent run / status ------------------------------------------------------------------

def _cmd_agent_run(args: argparse.Namespace) -> int:
    from bridge.edge.agent import Agent
    from bridge.edge.config import check_driver_options, load_config

    config = load_config(args.config)
    check_driver_options(config)
    _logging(args.log_level)

    async def main() -> None:
        agent = Agent(config)
        await agent.run()

    asyncio.run(main())
    return 0


def _fmt_time(value: dt.datetime | None) -> str:
    return "never" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cmd_agent_status(args: argparse.Namespace) -> int:
    from bridge.edge.clock import ClockState
    from bridge.edge.config import load_config
    from bridge.edge.outbox import DeviceStats, Outbox

    config = load_config(args.config)
    with Outbox(config.outbox_path, config.outbox_limits, create=False) as outbox:
        stats = outbox.stats()
    devices: dict[str, DeviceStats] = dict(stats.devices)
    for device in config.devices:
        if device.name not in devices:
            devices[device.name] = DeviceStats(device.name, None, None, 0, 0, 0, 0, 0, 0, 0,
                                               None, None, ClockState())
    if args.json:
        doc = {"gateway_id": config.gateway_id, "outbox": str(config.outbox_path),
               "queued": stats.queued, "queued_bytes": stats.queued_bytes,
               "devices": [devices[name].to_json() for name in sorted(devices)]}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"gateway {config.gateway_id}: {stats.queued} records queued "
          f"({stats.queued_bytes} bytes) in {config.outbox_path}")
    header = ("device", "last sync", "synced", "queued", "dropped", "errors", "last error")
    rows = [header]
    for name in sorted(devices):
        s = devices[name]
        rows.append((name, _fmt_time(s.last_sync), str(s.records_synced), str(s.queued),
                     str(s.dropped), str(s.errors), (s.last_error or "")[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1])
    return 0


# --- scan ----------------------------------------------------------------------------------

def _cmd_scan(args: argparse.Namespace) -> int:
    serial_mod = importlib.import_module("bridge.devices.serial")
    for adapter in serial_mod.list_serial_adapters():
        print(json.dumps({"type": "serial-adapter", **_plain(adapter)}, default=str))
    if args.no_ble:
        return 0
    ble_mod = importlib.import_module("bridge.devices.ble")

    async def scan() -> list[Any]:
        found: list[Any] = await ble_mod.scan_ble(timeout_s=args.timeout, backend=args.backend,
                                                  transport=args.bumble_transport)
        return found

    for device in asyncio.run(scan()):
        print(json.dumps({"type": "ble-device", **_plain(device)}, default=str))
    return 0


def _plain(value: Any) -> dict[str, Any]:
    """A scan result as a JSON object (dataclass, mapping or plain value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return {"value": str(value)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# --- read ----------------------------------------------------------------------------------

def _read_target(args: argparse.Namespace) -> tuple[DeviceConfig, ClockConfig]:
    """The device to read and the clock config, from --config NAME or the flags."""
    from bridge.edge.config import check_driver_options, load_config, parse_config

    if args.device:
        if args.ble or args.serial:
            raise SystemExit("error: give a device name from --config, or --ble/--serial, "
                             "not both")
        if not args.config:
            raise SystemExit("error: a device name needs --config")
        config = load_config(args.config)
        device = config.device(args.device)
        check_driver_options(config, only=device.name)
        return device, config.clock
    if bool(args.ble) == bool(args.serial):
        raise SystemExit("error: name a configured device, or give exactly one of --ble "
                         "ADDRESS --profile P / --serial URL --protocol P")
    # Build the device through the same validation as a config file, so a bad flag gets the
    # same precise message.
    spec: dict[str, Any] = {"name": "cli"}
    if args.timeout is not None:
        spec["timeout_s"] = args.timeout
    if args.timezone:
        spec["timezone"] = args.timezone
    if args.ble:
        if not args.profile:
            raise SystemExit("error: --ble needs --profile")
        spec |= {"transport": "ble", "address": args.ble, "profile": args.profile,
                 "backend": args.backend}
        if args.bumble_transport:
            spec["bumble_transport"] = args.bumble_transport
        if args.passkey is not None:
            spec["passkey"] = args.passkey
    else:
        if not args.protocol:
            raise SystemExit("error: --serial needs --protocol")
        spec |= {"transport": "serial", "port": args.serial, "protocol": args.protocol}
    doc = {"agent": {"gateway_id": "cli"}, "broker": {"url": "mqtt://localhost"},
           "devices": [spec]}
    parsed = parse_config(doc, "command line")
    check_driver_options(parsed)
    return parsed.devices[0], parsed.clock


def _cmd_read(args: argparse.Namespace) -> int:
    from bridge.edge.agent import open_driver
    from bridge.edge.clock import ClockState, correct_sync
    from bridge.records import record_to_json

    device, clock_config = _read_target(args)

    async def read() -> int:
        driver = await open_driver(device)
        try:
            info = await driver.read_info()
            print(json.dumps({"type": "device-info", **record_to_json(info)}))
            result = await asyncio.wait_for(driver.sync({}), device.sync_timeout_s)
        finally:
            await driver.close()
        if result.clock is not None:
            obs = result.clock
            print(json.dumps({"type": "clock", "device_time": obs.device_time.isoformat(),
                              "gateway_time": obs.gateway_time.isoformat(),
                              "source": str(obs.source),
                              "utc_offset_s": None if obs.utc_offset is None
                              else obs.utc_offset.total_seconds()}))
        records, _ = correct_sync(result.records, result.clock, ClockState(),
                                  device.clock_policy(clock_config), dt.datetime.now(dt.UTC))
        for record in records:
            print(json.dumps({"type": "record", "key": record.idempotency_key(),
                              **record_to_json(record)}))
        for notice in result.notices:
            print(json.dumps({"type": "notice", "message": notice}))
        return len(records)

    count = asyncio.run(read())
    print(f"{count} records read from {device.target}", file=sys.stderr)
    return 0


# --- stand-alone entry point -------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.edge.cli",
                                     description="The hddt-bridge edge agent.")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
