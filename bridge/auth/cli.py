"""Command line of the HDDT server: ``auth pki|diga|account`` and ``serve``.

::

    hddt-bridge auth pki --out DIR [--diga urn:diga:bfarm:12345 ...] [--name api.example]
    hddt-bridge auth diga add urn:diga:bfarm:12345 --config backend.toml --name "…" \\
        --redirect-uri https://diga.example/callback --cert diga.pem [--scope …]
    hddt-bridge auth diga list|deactivate|load … --config backend.toml
    hddt-bridge auth account add USER --patient P-0001 --config backend.toml
    hddt-bridge auth purge --config backend.toml
    hddt-bridge serve --config backend.toml

Every command that opens the store brings its schema up to date first.
"""
# Commands import what they need when they run: ``hddt-bridge --help`` stays fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BridgeError

if TYPE_CHECKING:
    from bridge.backend.store import Store


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=True,
                   help="backend configuration (TOML) with [store], [api] and [auth]")


def _store(args: argparse.Namespace) -> Store:
    from bridge.backend.config import load_config
    from bridge.backend.store import Store

    return Store.open(load_config(args.config, check_files=False).store.url)


def _actor(args: argparse.Namespace) -> str:
    return str(getattr(args, "actor", None) or f"cli:{getpass.getuser()}")


def register(subparsers: Any) -> None:
    """Add ``auth`` and ``serve`` to an ``argparse`` subparsers object."""
    auth = subparsers.add_parser(
        "auth", help="HDDT authorization server: sandbox PKI, DiGA directory, portal logins",
        description="Issue the sandbox PKI, keep the DiGA directory stand-in and the patient "
                    "portal logins.")
    sub = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)

    p = sub.add_parser("pki", help="issue the sandbox CA, server and DiGA client certificates")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the PKI")
    p.add_argument("--diga", action="append", default=[], metavar="CLIENT_ID",
                   help="a DiGA client certificate (urn:diga:bfarm:NNNNN); repeatable")
    p.add_argument("--name", action="append", default=[], metavar="HOST",
                   help="extra server host name or IP (localhost, 127.0.0.1 and ::1 always)")
    p.add_argument("--force", action="store_true", help="start over with a new CA")
    p.set_defaults(handler=_cmd_pki)

    diga = sub.add_parser("diga", help="the DiGA directory stand-in")
    dsub = diga.add_subparsers(dest="diga_command", metavar="ACTION", required=True)
    p = dsub.add_parser("add", help="register a DiGA (or update it with --update)")
    p.add_argument("client_id", help="urn:diga:bfarm: and the five-digit DiGA-ID")
    p.add_argument("--name", required=True)
    p.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris",
                   help="exact redirect URI; repeatable")
    p.add_argument("--scope", action="append", dest="scopes",
                   help="allowed SMART scope; repeatable (default: both glucose MIVs, "
                        "Device and DeviceMetric)")
    p.add_argument("--cert", required=True, metavar="PEM",
                   help="the DiGA's TLS client certificate")
    p.add_argument("--update", action="store_true", help="update an existing entry")
    p.add_argument("--actor")
    _add_config(p)
    p.set_defaults(handler=_cmd_diga_add)
    p = dsub.add_parser("list", help="list registered DiGAs")
    p.add_argument("--json", action="store_true")
    _add_config(p)
    p.set_defaults(handler=_cmd_diga_list)
    p = dsub.add_parser("deactivate", help="deactivate a DiGA and revoke all its pairings")
    p.add_argument("client_id")
    p.add_argument("--actor")
    _add_config(p)
    p.set_defaults(handler=_cmd_diga_deactivate)
    p = dsub.add_parser("load", help="register or update every DiGA of a TOML/JSON file")
    p.add_argument("file")
    p.add_argument("--actor")
    _add_config(p)
    p.set_defaults(handler=_cmd_diga_load)

    p = sub.add_parser("purge", help="delete pushed requests, codes and tokens expired for "
                                     "more than a day")
    _add_config(p)
    p.set_defaults(handler=_cmd_purge)

    account = sub.add_parser("account", help="patient portal logins")
    asub = account.add_subparsers(dest="account_command", metavar="ACTION", required=True)
    p = asub.add_parser("add", help="create a portal login for a provisioned patient")
    p.add_argument("username")
    p.add_argument("--patient", required=True, metavar="PATIENT_ID")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from this file (default: prompt)")
    p.add_argument("--actor")
    _add_config(p)
    p.set_defaults(handler=_cmd_account_add)

    p = subparsers.add_parser(
        "serve", help="run the HTTPS server: FHIR API, authorization server, portal, dashboard",
        description="Serve /fhir, the OAuth endpoints, /portal and /dashboard over TLS with "
                    "optional client certificates, as configured in [api] and [auth].")
    _add_config(p)
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=_cmd_serve)


def _cmd_pki(args: argparse.Namespace) -> int:
    from bridge.auth.pki import issue_hddt_pki

    pki = issue_hddt_pki(Path(args.out), args.diga, server_names=args.name, force=args.force)
    print(f"CA:     {pki.ca.cert}")
    print(f"server: {pki.server.cert}")
    for client_id, pair in pki.digas.items():
        print(f"{client_id}: {pair.cert}")
    print(f"{len(pki.created)} files written")
    return 0


def _cmd_diga_add(args: argparse.Namespace) -> int:
    from bridge.auth.directory import register_client, update_client
    from bridge.auth.errors import DirectoryError
    from bridge.hddt.access import (
        MIV_BLOOD_GLUCOSE,
        MIV_CONTINUOUS_GLUCOSE,
        SCOPE_DEVICE,
        SCOPE_DEVICE_METRIC,
        observation_scope,
    )

    try:
        pem = Path(args.cert).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"cannot read {args.cert}: {exc}") from None
    scopes = args.scopes or [observation_scope(MIV_BLOOD_GLUCOSE),
                             observation_scope(MIV_CONTINUOUS_GLUCOSE), SCOPE_DEVICE,
                             SCOPE_DEVICE_METRIC]
    with _store(args) as store, store.begin() as conn:
        if args.update:
            entry = update_client(conn, args.client_id, actor=_actor(args), name=args.name,
                                  redirect_uris=args.redirect_uris, scopes=scopes,
                                  certificate_pem=pem)
        else:
            entry = register_client(conn, args.client_id, name=args.name,
                                    redirect_uris=args.redirect_uris, scopes=scopes,
                                    certificate_pem=pem, actor=_actor(args))
    print(json.dumps(entry.to_json(), indent=2))
    return 0


def _cmd_diga_list(args: argparse.Namespace) -> int:
    from bridge.auth.directory import list_clients

    with _store(args) as store, store.begin() as conn:
        entries = list_clients(conn)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    for e in entries:
        state = "active" if e.active else "inactive"
        print(f"{e.client_id}  {state:8}  {e.name}  sha256:{e.certificate_sha256[:16]}…")
    return 0


def _cmd_diga_deactivate(args: argparse.Namespace) -> int:
    from bridge.auth.directory import deactivate_client

    with _store(args) as store, store.begin() as conn:
        deactivate_client(conn, args.client_id, actor=_actor(args))
    print(f"{args.client_id} deactivated; its pairings are revoked")
    return 0


def _cmd_diga_load(args: argparse.Namespace) -> int:
    from bridge.auth.directory import load_directory_file

    with _store(args) as store, store.begin() as conn:
        entries = load_directory_file(conn, Path(args.file), actor=_actor(args))
    print(f"{len(entries)} DiGA entries loaded")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from bridge.auth.pairing import purge_expired

    with _store(args) as store, store.begin() as conn:
        counts = purge_expired(conn)
    print(json.dumps(counts))
    return 0


def _cmd_account_add(args: argparse.Namespace) -> int:
    from bridge.auth.accounts import add_account

    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"error: cannot read {args.password_file}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    with _store(args) as store, store.begin() as conn:
        add_account(conn, args.username, password, patient_id=args.patient,
                    actor=_actor(args))
    print(f"portal login {args.username!r} created for patient {args.patient}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from bridge.auth.config import load_serve_config
    from bridge.auth.directory import load_directory_file
    from bridge.backend.store import Store
    from bridge.web import TlsFiles, client_trust_bundle, create_app, serve

    config = load_serve_config(args.config)
    store = Store.open(config.backend.store.url)
    try:
        if config.directory_file is not None:
            with store.begin() as conn:
                load_directory_file(conn, config.directory_file, actor="serve")
        trust = client_trust_bundle(store, config.api.client_ca,
                                    config.auth.state_dir / "client-trust.pem")
        app = create_app(store, config.auth, dashboard=config.api.dashboard)
        print(f"serving {config.auth.issuer} (FHIR base {config.auth.audience})",
              file=sys.stderr)
        serve(app, host=config.api.host, port=config.api.port,
              tls=TlsFiles(config.api.cert, config.api.key, trust), log_level=args.log_level,
              store=store)
    except BridgeError:
        raise
    finally:
        store.close()
    return 0
