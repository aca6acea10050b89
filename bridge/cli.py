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

    from bridge.demo import DemoOptions, run_demo

    if not 1 <= args.patients <= 3:
        print("error: --patients must be 1, 2 or 3", file=sys.stderr)
        return 2
    if args.history_days < 0 or args.speed <= 0 or (args.duration is not None
                                                     and args.duration <= 0):
        print("error: --history-days must be >= 0, --speed and --duration > 0",
              file=sys.stderr)
        return 2
    options = DemoOptions(state_dir=Path(args.state_dir), patients=args.patients,
                          history_days=args.history_days, speed=args.speed,
                          duration_s=args.duration, port=args.port)
    summary = asyncio.run(run_demo(options))
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
                    "reading them through the real drivers, an in-process MQTT broker and the "
                    "backend ingest into SQLite. Runs until Ctrl-C (or --duration), then "
                    "compares what the devices held with what the backend stored.")
    p.add_argument("--state-dir", default="demo-state",
                   help="folder for the databases, credentials and connection.json "
                        "(default: ./demo-state)")
    p.add_argument("--patients", type=int, default=3, help="1 to 3 demo patients (default 3)")
    p.add_argument("--history-days", type=int, default=2,
                   help="days of device history before now (default 2)")
    p.add_argument("--speed", type=float, default=60.0,
                   help="simulated time per real time for live records (default 60)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--port", type=int, default=18830,
                   help="port of the embedded MQTT broker (default 18830; a free one if taken)")
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
