"""The ``hddt-bridge`` command line."""

from __future__ import annotations

import argparse
import json
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
    from simulators.cli import register as register_simulate
    from simulators.devices_cli import register as register_sim_devices

    register_simulate(sub)
    register_sim_devices(sub)
    register_edge(sub)
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


if __name__ == "__main__":
    raise SystemExit(main())
