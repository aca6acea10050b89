"""Command line of the manufacturer backend: ``backend run|status|purge|provision|dead-letters``.

:func:`register` adds ``backend`` to the ``hddt-bridge`` parser; ``python -m
bridge.backend.cli backend …`` runs the same commands on their own::

    hddt-bridge backend run --config configs/backend.toml [--client-id ingest-2]
    hddt-bridge backend status --config configs/backend.toml [--json]
    hddt-bridge backend purge --config configs/backend.toml [--dry-run] [--json]
    hddt-bridge backend provision patient P-0001 --config … [--name "…"]
    hddt-bridge backend provision gateway pi-home-0001 --patient P-0001 --cert gateway.pem …
    hddt-bridge backend provision device cgm-1234 --patient P-0001 [--gateway pi-home-0001]
    hddt-bridge backend dead-letters --config … [--reason invalid] [--limit 20] [--json]

Every command opens the store and brings its schema up to date first.
"""
# Each command imports what it needs when it runs: ``hddt-bridge --help`` must not pay for
# SQLAlchemy, Alembic or the MQTT client.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BridgeError

if TYPE_CHECKING:
    from bridge.backend.config import BackendConfig
    from bridge.backend.store import Store

_LOG_LEVELS = ("debug", "info", "warning", "error")
_DEVICE_KINDS = ("blood-glucose-meter", "cgm", "insulin-pump")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=True,
                   help="backend configuration (TOML), e.g. configs/backend.toml")


def _add_actor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", metavar="NAME",
                   help="who does this, for the audit log (default: cli:<login name>)")


def register(subparsers: Any) -> None:
    """Add ``backend`` to an ``argparse`` subparsers object."""
    backend = subparsers.add_parser(
        "backend", help="the manufacturer backend: MQTT ingest, store, registry",
        description="Run an ingest worker, provision patients, gateways and devices, show "
                    "the ingest status, or purge data older than the retention.")
    sub = backend.add_subparsers(dest="backend_command", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run", help="run one ingest worker until SIGINT/SIGTERM",
        description="Subscribe to the gateways' records and status topics (a shared "
                    "subscription, so several workers split the load), store every record "
                    "once and acknowledge each message only after its commit.")
    _add_config(run)
    run.add_argument("--client-id", metavar="ID",
                     help="MQTT client id of this worker (overrides broker.client_id; each "
                          "worker needs its own, and the same one again after a restart)")
    run.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    run.set_defaults(handler=_cmd_run)

    status = sub.add_parser(
        "status", help="ingest rate, lag, dead letters by reason, gateways' last contact",
        description="Read the store and show records stored in the last minute, the lag "
                    "(now minus the newest record's receipt), dead letters by reason and each "
                    "gateway's status and last contact.")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_cmd_status)

    purge = sub.add_parser(
        "purge", help="delete data older than store.retention_days",
        description="Delete readings and events whose measurement time is older than "
                    "store.retention_days (at least 30) and dead letters older than "
                    "store.dead_letter_retention_days, and print the counts. The audit log "
                    "is kept.")
    _add_config(purge)
    purge.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    purge.add_argument("--json", action="store_true", help="print one JSON object")
    _add_actor(purge)
    purge.set_defaults(handler=_cmd_purge)

    prov = sub.add_parser(
        "provision", help="register a patient, a gateway or a device",
        description="Provisioning writes the registry and the audit log.")
    prov_sub = prov.add_subparsers(dest="provision_what", metavar="WHAT", required=True)
    patient = prov_sub.add_parser("patient", help="create a patient (or rename one)")
    patient.add_argument("patient_id", metavar="PATIENT_ID")
    patient.add_argument("--name", help="display name")
    _add_config(patient)
    _add_actor(patient)
    patient.set_defaults(handler=_cmd_provision_patient)

    gateway = prov_sub.add_parser(
        "gateway", help="register a gateway of a patient with its client certificate")
    gateway.add_argument("gateway_id", metavar="GATEWAY_ID")
    gateway.add_argument("--patient", required=True, metavar="PATIENT_ID")
    gateway.add_argument("--cert", metavar="PEM",
                         help="the gateway's client certificate: subject and SHA-256 "
                              "fingerprint are taken from it (its CN must be the gateway id)")
    gateway.add_argument("--cert-subject", metavar="SUBJECT")
    gateway.add_argument("--cert-fingerprint", metavar="SHA256")
    gateway.add_argument("--reassign", action="store_true",
                         help="move a gateway that belongs to another patient")
    _add_config(gateway)
    _add_actor(gateway)
    gateway.set_defaults(handler=_cmd_provision_gateway)

    device = prov_sub.add_parser("device", help="attach a device to a patient")
    device.add_argument("device_id", metavar="DEVICE_ID")
    device.add_argument("--patient", required=True, metavar="PATIENT_ID")
    device.add_argument("--gateway", metavar="GATEWAY_ID")
    device.add_argument("--kind", choices=_DEVICE_KINDS)
    device.add_argument("--reassign", action="store_true",
                        help="move a device that belongs to another patient")
    _add_config(device)
    _add_actor(device)
    device.set_defaults(handler=_cmd_provision_device)

    dead = sub.add_parser("dead-letters", help="list refused messages, newest first")
    _add_config(dead)
    dead.add_argument("--reason", help="only this reason (e.g. invalid, gateway-mismatch)")
    dead.add_argument("--limit", type=int, default=20)
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    dead.set_defaults(handler=_cmd_dead_letters)


def _config(args: argparse.Namespace) -> BackendConfig:
    from bridge.backend.config import load_config

    config = load_config(args.config)
    client_id = getattr(args, "client_id", None)
    return config.with_client_id(client_id) if client_id else config


def _open(config: BackendConfig) -> Store:
    from bridge.backend.store import Store

    return Store.open(config.store.url)


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _iso(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


# --- run -----------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from bridge.backend.ingest import IngestWorker

    config = _config(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker = IngestWorker(config)
    worker.run_until(stop)
    s = worker.stats
    logging.getLogger("bridge.backend").info(
        "%s stopped: %d messages, %d records stored, %d duplicates, %d dead letters",
        worker.client_id, s.messages, s.inserted, s.duplicates, sum(s.dead_letters.values()))
    return 0


# --- status --------------------------------------------------------------------------------

def _cmd_status(args: argparse.Namespace) -> int:
    with _open(_config(args)) as store:
        status = store.status()
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    lag = "-" if status.lag_s is None else f"{status.lag_s:.1f} s"
    total = sum(status.records_total.values())
    print(f"records stored in the last minute: {status.records_last_minute}")
    print(f"records stored in all: {total} ("
          + ", ".join(f"{k} {v}" for k, v in status.records_total.items()) + ")")
    print(f"lag (now - newest record received): {lag}  "
          f"(newest received {_iso(status.newest_received_at)})")
    if status.dead_letters_by_reason:
        print("dead letters: " + ", ".join(
            f"{reason} {n}" for reason, n in status.dead_letters_by_reason.items()))
    else:
        print("dead letters: none")
    if not status.gateways:
        print("gateways: none provisioned")
        return 0
    print(f"{'gateway':24} {'patient':20} {'status':8} {'last contact':26} devices")
    for g in status.gateways:
        flag = " (auto)" if g.auto_provisioned else ""
        print(f"{g.gateway_id:24} {g.patient_id:20} {g.status:8} "
              f"{_iso(g.last_contact):26} {g.devices}{flag}")
    return 0


# --- purge ---------------------------------------------------------------------------------

def _cmd_purge(args: argparse.Namespace) -> int:
    from bridge.backend.store import audit, purge

    config = _config(args)
    with _open(config) as store, store.begin() as conn:
        counts = purge(conn, retention_days=config.store.retention_days,
                       dead_letter_retention_days=config.store.dead_letter_retention_days,
                       dry_run=args.dry_run)
        if not args.dry_run:
            audit(conn, actor=_actor(args), action="purge", subject_type="store",
                  subject_id="retention",
                  detail={"retention_days": config.store.retention_days,
                          "dead_letter_retention_days":
                              config.store.dead_letter_retention_days,
                          "deleted": counts})
    if args.json:
        print(json.dumps({"dry_run": args.dry_run,
                          "retention_days": config.store.retention_days, "counts": counts}))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"retention {config.store.retention_days} days: {verb} "
          + ", ".join(f"{n} {table}" for table, n in counts.items())
          + f" ({sum(counts.values())} rows)")
    return 0


# --- provisioning --------------------------------------------------------------------------

def _cmd_provision_patient(args: argparse.Namespace) -> int:
    from bridge.backend.registry import provision_patient

    with _open(_config(args)) as store, store.begin() as conn:
        created = provision_patient(conn, args.patient_id, actor=_actor(args),
                                    display_name=args.name)
    print(f"patient {args.patient_id}: {'created' if created else 'updated'}")
    return 0


def _cmd_provision_gateway(args: argparse.Namespace) -> int:
    from bridge.backend.registry import RegistryError, certificate_identity, provision_gateway

    subject, fingerprint = args.cert_subject, args.cert_fingerprint
    if args.cert is not None:
        if subject is not None or fingerprint is not None:
            raise RegistryError("give --cert, or --cert-subject/--cert-fingerprint, not both")
        try:
            pem = Path(args.cert).read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read {args.cert}: {exc.strerror or exc}") from None
        subject, fingerprint, cn = certificate_identity(pem)
        # The broker takes the certificate's CN as the user name and its ACL allows the topics
        # of that name only: a CN other than the gateway id could never publish as it.
        if cn is not None and cn != args.gateway_id:
            raise RegistryError(f"certificate CN {cn!r} is not the gateway id "
                                f"{args.gateway_id!r}")
    with _open(_config(args)) as store, store.begin() as conn:
        created = provision_gateway(conn, args.gateway_id, patient_id=args.patient,
                                    actor=_actor(args), cert_subject=subject,
                                    cert_fingerprint=fingerprint, reassign=args.reassign)
    print(f"gateway {args.gateway_id} of patient {args.patient}: "
          f"{'created' if created else 'updated'}"
          + (f" (certificate sha256 {fingerprint})" if fingerprint else ""))
    return 0


def _cmd_provision_device(args: argparse.Namespace) -> int:
    from bridge.backend.registry import assign_device
    from bridge.records import DeviceKind

    with _open(_config(args)) as store, store.begin() as conn:
        created = assign_device(conn, args.device_id, patient_id=args.patient,
                                actor=_actor(args), gateway_id=args.gateway,
                                kind=None if args.kind is None else DeviceKind(args.kind),
                                reassign=args.reassign)
    print(f"device {args.device_id} of patient {args.patient}: "
          f"{'created' if created else 'updated'}")
    return 0


# --- dead letters --------------------------------------------------------------------------

def _cmd_dead_letters(args: argparse.Namespace) -> int:
    with _open(_config(args)) as store:
        letters = store.dead_letters(reason=args.reason, limit=max(1, args.limit))
    for d in letters:
        if args.json:
            print(json.dumps({"id": d.id, "received_at": d.received_at.isoformat(),
                              "topic": d.topic, "gateway_id": d.gateway_id,
                              "reason": d.reason, "detail": d.detail,
                              "payload_size": d.payload_size,
                              "payload_sha256": d.payload_sha256,
                              "payload_head": d.payload[:200].decode("utf-8", "replace")}))
        else:
            print(f"{_iso(d.received_at)} {d.reason:24} {d.gateway_id or '-':20} "
                  f"{d.payload_size:>7} B  {d.detail[:120]}")
    if not letters and not args.json:
        print("no dead letters")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.backend.cli",
                                     description="The hddt-bridge manufacturer backend.")
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
