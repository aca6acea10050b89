"""The ``hddt-bridge`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge import __version__
from bridge.errors import BridgeError, ProtocolError

Handler = Callable[[argparse.Namespace], int]


def _parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise SystemExit(f"error: not a hex string: {text.strip()[:80]!r}") from None


def _cmd_decode(args: argparse.Namespace) -> int:
    from bridge.protocols.codec import to_json
    from bridge.protocols.fixtures import load_fixture_file
    from bridge.protocols.registry import all_codecs, get_codec

    if args.list:
        for name, codec in all_codecs().items():
            print(f"{name:28} {codec.summary}")
        return 0
    frames: list[tuple[str, bytes]] = []
    if args.fixture:
        for case in load_fixture_file(Path(args.fixture)).cases:
            frames.append((case.message, case.frame))
    else:
        if not args.message:
            print("error: name a message type (see --list) or give --fixture", file=sys.stderr)
            return 2
        try:
            get_codec(args.message)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
        text = args.hex if args.hex is not None else sys.stdin.read()
        frames.append((args.message, _parse_hex(text)))
    status = 0
    for message, frame in frames:
        try:
            value = get_codec(message).decode(frame)
        except ProtocolError as exc:
            if args.fixture:
                print(json.dumps({"message": message, "hex": frame.hex(),
                                  "error": type(exc).__name__, "detail": exc.reason,
                                  "offset": exc.offset}))
            else:
                print(f"error: {message}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps(to_json(value), indent=None if args.fixture else 2))
    return status


def _cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.demo import DemoError, DemoOptions, run_demo
    from bridge.edge.config import BLE_PROFILES

    if not 1 <= args.patients <= 3:
        print("error: --patients must be 1, 2 or 3", file=sys.stderr)
        return 2
    if not 0 <= args.history_days <= 90 or not 1 <= args.live_days <= 366:
        print("error: --history-days must be 0 to 90 and --live-days 1 to 366",
              file=sys.stderr)
        return 2
    if not 0 < args.speed <= 100_000 or (args.duration is not None and args.duration <= 0):
        print("error: --speed must be in (0, 100000] and --duration > 0", file=sys.stderr)
        return 2
    ble_devices = []
    for item in args.ble_device:
        profile, sep, address = item.partition("=")
        if not sep or profile not in BLE_PROFILES or not address:
            print(f"error: --ble-device wants PROFILE=ADDRESS with PROFILE one of "
                  f"{', '.join(BLE_PROFILES)}, not {item!r}", file=sys.stderr)
            return 2
        ble_devices.append((profile, address))
    options = DemoOptions(state_dir=Path(args.state_dir), patients=args.patients,
                          history_days=args.history_days, live_days=args.live_days,
                          speed=args.speed, duration_s=args.duration,
                          exit_when_ready=args.exit_when_ready, port=args.port,
                          http_port=args.http_port, broker_url=args.broker_url,
                          database_url=args.database_url, seed=args.seed,
                          ble_devices=tuple(ble_devices))
    try:
        summary = asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.stored < summary.read:
        print(f"error: the backend stored {summary.stored} of the {summary.read} records the "
              "agent read", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hddt-bridge",
        description="Device simulator, edge bridge and HDDT export backend (§374a SGB V).")
    parser.add_argument("--version", action="version", version=f"hddt-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "decode", help="decode a captured frame (hex) and print it as JSON",
        description="Decode one frame of a named message type. The frame is a hex string "
                    "(spaces and colons allowed), given as an argument or on stdin; or decode "
                    "every case of a fixture file. Exit status 1 when a frame is malformed.")
    p.add_argument("message", nargs="?", help="message type, e.g. gls-measurement (see --list)")
    p.add_argument("hex", nargs="?", help="the frame as hex; read from stdin when omitted")
    p.add_argument("--fixture", metavar="FILE", help="decode every case of a fixture JSON file")
    p.add_argument("--list", action="store_true", help="list the message types and exit")
    p.set_defaults(handler=_cmd_decode)

    from bridge.edge.cli import register as register_edge
    p = sub.add_parser(
        "demo", help="run the whole path on embedded defaults (no external services)",
        description="Simulated patients, their virtual BLE and serial devices, the edge agent "
                    "reading them through the real drivers, an in-process MQTT broker, the "
                    "backend ingest into SQLite and the HDDT interface over TLS. Backfills "
                    "the history, then streams live until Ctrl-C (or --duration), then "
                    "compares what the devices held with what the backend stored.")
    p.add_argument("--state-dir", default="demo-state",
                   help="folder for the databases, certificates, credentials and "
                        "connection.json (default: ./demo-state); running again on the same "
                        "folder resumes where it stopped")
    p.add_argument("--patients", type=int, default=3, help="1 to 3 demo patients (default 3)")
    p.add_argument("--history-days", type=int, default=30,
                   help="days of device history backfilled at start (default 30)")
    p.add_argument("--live-days", type=int, default=14,
                   help="days simulated ahead for live streaming (default 14)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated time per real time once live (default 1: real time)")
    p.add_argument("--duration", type=float, help="stop after this many seconds of live run")
    p.add_argument("--exit-when-ready", action="store_true",
                   help="stop as soon as the backfill is stored (scripts, CI)")
    p.add_argument("--port", type=int, default=18830,
                   help="port of the embedded MQTT broker (default 18830; a free one if taken)")
    p.add_argument("--http-port", type=int, default=8443,
                   help="HTTPS port of the HDDT API, portal and dashboard (default 8443; a "
                        "free one if taken)")
    p.add_argument("--broker-url", metavar="mqtt://HOST:PORT",
                   help="an external MQTT 5 broker (e.g. Mosquitto taking the demo's clients "
                        "anonymously) instead of the embedded one")
    p.add_argument("--database-url", metavar="URL",
                   help="an external database (postgresql+psycopg://USER@HOST/DB) instead "
                        "of SQLite in the state folder")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--ble-device", action="append", default=[], metavar="PROFILE=ADDRESS",
                   help="also read a real BLE device through bleak (BlueZ) for the patient "
                        "demo-patient-ble; PROFILE is glucose, cgm or insulin-pump "
                        "(repeatable)")
    p.set_defaults(handler=_cmd_demo)

    from bridge.backend.broker_cli import register as register_broker
    from bridge.backend.cli import register as register_backend
    from simulators.cli import register as register_simulate
    from simulators.devices_cli import register as register_sim_devices

    register_simulate(sub)
    register_sim_devices(sub)
    register_edge(sub)
    register_backend(sub)
    register_broker(sub)  # joins the "backend" command registered just above
    __import__("bridge.diga.cli", fromlist=["register"]).register(sub)  # hddt-bridge diga
    __import__("bridge.auth.cli", fromlist=["register"]).register(sub)  # auth, serve
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
