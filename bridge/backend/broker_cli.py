"""Command line of the broker side: ``backend pki`` and ``backend broker``.

::

    hddt-bridge backend pki --out pki/ --gateway pi-home-0001 --gateway pi-home-0002
    hddt-bridge backend broker [--port 18830] [--host 127.0.0.1] [--users FILE]

:func:`register` adds both under the ``backend`` command (creating it when the parser has
none yet); :func:`add_commands` adds them to the ``backend`` command's own subparsers.
``python -m bridge.backend.broker_cli pki ...`` runs them on their own.
"""
# Each command imports what it needs when it runs: ``hddt-bridge --help`` must not load
# cryptography or the broker.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError


def add_commands(backend_subparsers: Any) -> None:
    """Add ``pki`` and ``broker`` to the subparsers of the ``backend`` command."""
    pki = backend_subparsers.add_parser(
        "pki", help="issue the sandbox PKI: CA, broker, ingest and gateway certificates",
        description="Create the sandbox CA and the certificates for the broker's mutual TLS "
                    "(the broker takes each client certificate's CN as its user name: the "
                    "gateway id, or 'ingest'). Existing files are kept; a new gateway is "
                    "signed by the existing CA. Keys are written with mode 0600.")
    pki.add_argument("--out", required=True, metavar="DIR", type=Path,
                     help="folder for the PEM files (created with mode 0700)")
    pki.add_argument("--gateway", action="append", default=[], metavar="ID",
                     help="issue a client certificate for this gateway id (repeatable)")
    pki.add_argument("--broker-name", action="append", default=[], metavar="NAME",
                     help="another DNS name or IP address for the broker certificate, besides "
                          "localhost, 127.0.0.1 and ::1 (repeatable)")
    pki.add_argument("--force", action="store_true",
                     help="start over with a new CA: every certificate issued before stops "
                          "working")
    pki.set_defaults(handler=_cmd_pki)

    broker = backend_subparsers.add_parser(
        "broker", help="run the embedded demo MQTT broker (amqtt, MQTT 3.1.1, in memory)",
        description="Run the embedded broker until SIGINT/SIGTERM. For the demo only: MQTT "
                    "3.1.1, nothing kept on disk, no shared subscriptions, no resend of "
                    "unacknowledged messages after a reconnect. Clients must send a user "
                    "name (the gateway id, or 'ingest'). Production uses Mosquitto with "
                    "configs/mosquitto/.")
    broker.add_argument("--port", type=int, default=None, metavar="PORT",
                        help="TCP port (default 18830; 0 for any free port; never 1883)")
    broker.add_argument("--host", default=None, metavar="ADDR",
                        help="address to listen on (default 127.0.0.1)")
    broker.add_argument("--users", type=Path, metavar="FILE",
                        help="check passwords: one 'name:password' per line ('#' comments)")
    broker.set_defaults(handler=_cmd_broker)


def _subparsers_of(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(subparsers: Any) -> None:
    """Add ``backend pki`` and ``backend broker`` to the ``hddt-bridge`` parser's subparsers,
    joining the ``backend`` command if another module has created it already."""
    backend = subparsers.choices.get("backend")
    if backend is None:
        backend = subparsers.add_parser(
            "backend", help="the manufacturer backend: broker, PKI, ingest",
            description="The manufacturer backend's commands.")
    nested = _subparsers_of(backend)
    if nested is None:
        nested = backend.add_subparsers(dest="backend_command", metavar="ACTION",
                                        required=True)
    add_commands(nested)


def _cmd_pki(args: argparse.Namespace) -> int:
    from bridge.backend.pki import issue_sandbox_pki

    pki = issue_sandbox_pki(args.out, args.gateway, broker_names=args.broker_name,
                            force=args.force)
    created = set(pki.created)
    files = [pki.ca, pki.broker, pki.ingest, pki.monitor, *pki.gateways.values()]
    for pair in files:
        for path in (pair.cert, pair.key):
            print(f"{'created' if path in created else 'kept   '} {path}")
    print(f"\nbroker (Mosquitto): cafile {pki.ca.cert}, certfile {pki.broker.cert}, "
          f"keyfile {pki.broker.key}")
    print(f"ingest workers: ca {pki.ca.cert}, cert {pki.ingest.cert}, key {pki.ingest.key}")
    for gateway_id, pair in pki.gateways.items():
        print(f"gateway {gateway_id}: ca {pki.ca.cert}, cert {pair.cert}, key {pair.key}")
    print(f"\nKeep {pki.ca.key} away from the broker and the gateways: whoever holds it can "
          "issue identities.")
    return 0


def read_users(path: Path) -> dict[str, str]:
    """``name:password`` lines; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BridgeError(f"cannot read {path}: {exc.strerror or exc}") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name:
            raise BridgeError(f"{path}:{number}: expected 'name:password'")
        users[name] = password
    return users


def _cmd_broker(args: argparse.Namespace) -> int:
    from bridge.backend.embedded_broker import DEFAULT_HOST, DEFAULT_PORT, EmbeddedBroker

    users = read_users(args.users) if args.users is not None else None
    port = DEFAULT_PORT if args.port is None else args.port
    host = args.host or DEFAULT_HOST

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with EmbeddedBroker(port, host, users=users) as broker:
            print(f"embedded MQTT broker on {broker.url} (MQTT 3.1.1, in memory, demo only); "
                  "Ctrl-C stops it", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.backend.broker_cli",
                                     description="The broker side of the backend.")
    add_commands(parser.add_subparsers(dest="backend_command", metavar="ACTION",
                                       required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
