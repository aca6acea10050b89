"""``hddt-bridge diga …``: the DiGA reference client on the command line.

::

    hddt-bridge diga pair    --connection demo-state/connection.json --patient p1
    hddt-bridge diga fetch   --connection demo-state/connection.json --name p1 --plot spark
    hddt-bridge diga summary --connection demo-state/connection.json --name p1
    hddt-bridge diga refresh|unpair|show --connection … --name p1

The connection file (written by ``hddt-bridge demo``) names the recorder and the DiGA; every
value in it can be given (or overridden) by a flag instead. Pairing state (tokens, cursors)
lives in ``--state-dir``, one ``<name>.json`` per pairing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from bridge.diga.client import DigaClient
from bridge.diga.connection import Connection, PortalLogin, parse_connection
from bridge.diga.errors import ConnectionFileError, DigaError
from bridge.diga.polling import PollResult, Reading, iso, parse_datetime
from bridge.diga.render import sparkline, summary_lines, svg, table
from bridge.diga.state import PairingState, PairingStore, check_name
from bridge.hddt.access import MIV_BLOOD_GLUCOSE, MIV_CONTINUOUS_GLUCOSE, observation_scope

DEFAULT_CONNECTION = Path("demo-state/connection.json")


def register(subparsers: Any) -> None:
    """Add ``diga`` and its subcommands to the ``hddt-bridge`` parser."""
    diga = subparsers.add_parser(
        "diga", help="the DiGA reference client: pair, fetch, summary, refresh, unpair",
        description="A DiGA backend talking HDDT to the Device Data Recorder: pairing with "
                    "PAR + PKCE over mutual TLS, token refresh with rotation, unpairing, and "
                    "polling blood glucose and CGM data as the specification describes.")
    sub = diga.add_subparsers(dest="diga_command", metavar="ACTION", required=True)

    p = sub.add_parser("pair", help="pair with a patient (portal login in the sandbox, or "
                                    "print the consent URL for a person)")
    _common(p)
    p.add_argument("--username", help="portal login (instead of --patient)")
    p.add_argument("--password", help="portal password (with --username)")
    p.add_argument("--grant", action="append", metavar="SCOPE",
                   help="tick only these scopes on the consent page (repeatable; default "
                        "all requested)")
    p.add_argument("--scope", action="append", metavar="SCOPE",
                   help="scopes to request (repeatable; default: the DiGA's registered ones)")
    p.add_argument("--deny", action="store_true", help="decline on the consent page")
    p.add_argument("--redirected-to", metavar="URL",
                   help="finish a pairing started without a login: the URL the browser was "
                        "sent to after the consent (it carries code and state)")
    p.add_argument("--prescription-end", metavar="YYYY-MM-DD",
                   help="last day of the patient's prescription: the consent ends with it")
    p.add_argument("--par-param", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra form parameter for the pushed authorization request")
    p.set_defaults(handler=_cmd_pair)

    p = sub.add_parser("refresh", help="refresh the access token (the refresh token rotates)")
    _common(p)
    p.set_defaults(handler=_cmd_refresh)

    p = sub.add_parser("unpair", help="revoke the pairing (RFC 7009) and forget the tokens")
    _common(p)
    p.set_defaults(handler=_cmd_unpair)

    p = sub.add_parser("fetch", help="poll new blood glucose and CGM readings")
    _common(p)
    p.add_argument("--kind", choices=["bg", "cgm", "all"], default="all",
                   help="which MIV to poll (default all granted)")
    p.add_argument("--since", help="start of the first poll (ISO date/time; default "
                                   "--days before now); later polls go on from the cursor")
    p.add_argument("--days", type=float, default=1.0,
                   help="first poll reaches this many days back (default 1)")
    p.add_argument("--overlap", type=float, default=0.0, metavar="SECONDS",
                   help="re-ask this much before where the last poll stopped, for data "
                        "the recorder receives late (its Delay-From-Real-Time); readings "
                        "already delivered are dropped")
    p.add_argument("--replay", action="store_true",
                   help="read from --since/--days again with a fresh cursor, leaving the "
                        "pairing's cursor untouched (e.g. to plot a period)")
    p.add_argument("--format", choices=["table", "json", "none"], default="table",
                   help="how to print the new readings (default table)")
    p.add_argument("--plot", metavar="spark|FILE.svg",
                   help="also plot them: a terminal sparkline, or an SVG file")
    p.add_argument("--follow", type=float, metavar="SECONDS",
                   help="keep polling at this interval until Ctrl-C (or --polls)")
    p.add_argument("--polls", type=int, help="with --follow: stop after this many polls")
    p.set_defaults(handler=_cmd_fetch)

    p = sub.add_parser("summary", help="the CGM summary report ($hddt-cgm-summary)")
    _common(p)
    p.add_argument("--start", help="effectivePeriodStart (ISO; default: --days before now)")
    p.add_argument("--end", help="effectivePeriodEnd (ISO; default: the recorder's now)")
    p.add_argument("--days", type=float, default=14.0,
                   help="period length when --start is not given (default 14)")
    p.add_argument("--related", action="store_true", help="include the sensors' Devices")
    p.add_argument("--json", action="store_true", help="print the Bundle as JSON")
    p.set_defaults(handler=_cmd_summary)

    p = sub.add_parser("show", help="show pairings and cursors (no secrets)")
    _common(p)
    p.set_defaults(handler=_cmd_show)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connection", type=Path,
                   help=f"connection file (default {DEFAULT_CONNECTION} when it exists)")
    p.add_argument("--state-dir", type=Path,
                   help="folder of the pairing state files (default: 'diga' beside the "
                        "connection file, else ./diga-state)")
    p.add_argument("--name", help="pairing name (default: the --patient id, else 'default')")
    p.add_argument("--patient", help="sandbox patient id from the connection file: the "
                                     "default pairing name; 'pair' logs in and consents at "
                                     "the portal as this patient")
    g = p.add_argument_group("explicit connection (instead of or over the connection file)")
    g.add_argument("--fhir-base-url")
    g.add_argument("--issuer")
    g.add_argument("--ca", type=Path, help="CA certificate the recorder's TLS chains to")
    g.add_argument("--client-id", help="urn:diga:bfarm:NNNNN")
    g.add_argument("--cert", type=Path, help="DiGA client certificate (PEM)")
    g.add_argument("--key", type=Path, help="DiGA private key (PEM)")
    g.add_argument("--redirect-uri")
    g.add_argument("--registered-scope", action="append", metavar="SCOPE",
                   help="a scope the DiGA is registered for (repeatable)")


# --- plumbing --------------------------------------------------------------------------------

def _connection(args: argparse.Namespace) -> Connection:
    path: Path | None = args.connection
    if path is None and DEFAULT_CONNECTION.is_file():
        path = DEFAULT_CONNECTION
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConnectionFileError(str(path), "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConnectionFileError(str(path), f"cannot read: {exc}") from None
        if not isinstance(data, dict):
            raise ConnectionFileError(str(path), "the file must be a JSON object")
        base = path.parent
    overrides = {"fhir_base_url": args.fhir_base_url, "issuer": args.issuer,
                 "ca_certificate": None if args.ca is None else str(args.ca.resolve())}
    data.update({k: v for k, v in overrides.items() if v is not None})
    diga = dict(data.get("diga") or {})
    diga_overrides = {"client_id": args.client_id,
                      "certificate": None if args.cert is None else str(args.cert.resolve()),
                      "private_key": None if args.key is None else str(args.key.resolve()),
                      "redirect_uri": args.redirect_uri, "scopes": args.registered_scope}
    diga.update({k: v for k, v in diga_overrides.items() if v is not None})
    data["diga"] = diga
    if path is None and not args.fhir_base_url:
        raise ConnectionFileError(str(DEFAULT_CONNECTION),
                                  "no connection file; give --connection or the explicit "
                                  "flags (--fhir-base-url, --issuer, --ca, --client-id, "
                                  "--cert, --key, --redirect-uri, --registered-scope)")
    return parse_connection(data, base=base, where=str(path or "flags"))


def _store(args: argparse.Namespace) -> PairingStore:
    if args.state_dir is not None:
        return PairingStore(args.state_dir)
    path: Path | None = args.connection
    if path is None and DEFAULT_CONNECTION.is_file():
        path = DEFAULT_CONNECTION
    return PairingStore(path.parent / "diga" if path is not None else Path("diga-state"))


def _name(args: argparse.Namespace) -> str:
    name = args.name or args.patient or "default"
    return check_name(str(name))


def _client(args: argparse.Namespace) -> DigaClient:
    return DigaClient(_connection(args), _store(args))


def _when(text: str, flag: str) -> dt.datetime:
    try:
        return parse_datetime(text)
    except DigaError:
        raise DigaError(f"{flag}: not an ISO date or date-time: {text!r}") from None


def _describe(state: PairingState) -> str:
    lines = [f"pairing   {state.name}: {state.status}",
             f"recorder  {state.fhir_base_url} (issuer {state.issuer})",
             f"client    {state.client_id}"]
    if state.pairing_id:
        lines.append(f"pairing id {state.pairing_id}")
    if state.scope:
        lines.append("scopes    " + "\n          ".join(sorted(state.scopes)))
    if state.access_token_expires_at:
        lines.append(f"access token expires  {iso(state.access_token_expires_at)}")
    if state.refresh_token_expires_at:
        lines.append(f"refresh token expires {iso(state.refresh_token_expires_at)}")
    if state.ended_at:
        lines.append(f"ended     {iso(state.ended_at)}: {state.ended_reason}")
    if state.blood_glucose.newest:
        lines.append(f"blood glucose cursor  newest {iso(state.blood_glucose.newest)}")
    if state.cgm.search_from or state.cgm.chunks:
        when = iso(state.cgm.search_from) if state.cgm.search_from else "-"
        lines.append(f"CGM cursor            search from {when}, open chunks "
                     f"{', '.join(state.cgm.open_chunks()) or 'none'}")
    return "\n".join(lines)


# --- commands --------------------------------------------------------------------------------

def _cmd_pair(args: argparse.Namespace) -> int:
    extra: dict[str, str] = {}
    for item in args.par_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DigaError(f"--par-param wants NAME=VALUE, not {item!r}")
        extra[key] = value
    prescription_end = None
    if args.prescription_end:
        try:
            prescription_end = dt.date.fromisoformat(args.prescription_end)
        except ValueError:
            raise DigaError(f"--prescription-end: not a date: {args.prescription_end!r}"
                            ) from None
    with _client(args) as client:
        name = _name(args)
        if args.redirected_to:
            state = client.complete_pairing(name, args.redirected_to)
            print(_describe(state))
            return 0
        login: PortalLogin | None = None
        if args.patient:
            login = client.connection.patient(args.patient)
        elif args.username:
            if not args.password:
                raise DigaError("--username needs --password")
            login = PortalLogin(id=name, portal_username=args.username,
                                portal_password=args.password)
        if login is None:
            state = client.start_pairing(name, args.scope, prescription_end=prescription_end,
                                         extra=extra)
            assert state.pending is not None
            print("Open this URL in the patient's browser, log in and consent:")
            print(f"  {state.pending.authorize_url}")
            print("The portal then sends the browser to the DiGA's redirect URI. Finish with:")
            print(f"  hddt-bridge diga pair --name {name} --redirected-to '<that URL>'")
            return 0
        pending = client.start_pairing(name, args.scope, prescription_end=prescription_end,
                                       extra=extra).pending
        assert pending is not None
        redirected = client.consent_in_portal(pending.authorize_url, login,
                                              grant=args.grant, deny=args.deny)
        state = client.complete_pairing(name, redirected)
        print(_describe(state))
        return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    with _client(args) as client:
        state = client.refresh(_name(args))
        expires = state.access_token_expires_at
        print(f"refreshed {state.name}: access token valid until "
              f"{iso(expires) if expires else '?'}; refresh token rotated")
        return 0


def _cmd_unpair(args: argparse.Namespace) -> int:
    with _client(args) as client:
        state = client.unpair(_name(args))
        print(f"unpaired {state.name} (Pairing ID {state.pairing_id}): the recorder revoked "
              "the grant, its tokens and the consent")
        return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.days <= 0 or args.overlap < 0:
        raise DigaError("--days must be > 0 and --overlap >= 0")
    if args.follow is not None and args.follow <= 0:
        raise DigaError("--follow must be > 0 seconds")
    with _client(args) as client:
        name = _name(args)
        start = (_when(args.since, "--since") if args.since
                 else client.clock() - dt.timedelta(days=args.days))
        overlap = dt.timedelta(seconds=args.overlap)
        polls = 0
        collected: list[Reading] = []
        while True:
            result = _poll(client, name, args.kind, start, overlap, replay=args.replay)
            polls += 1
            collected.extend(result.readings)
            _print_result(result, args.format)
            if args.follow is None or (args.polls is not None and polls >= args.polls):
                break
            try:
                time.sleep(args.follow)
            except KeyboardInterrupt:
                break
        if args.plot:
            if args.plot == "spark":
                for kind in ("blood-glucose", "cgm"):
                    chosen = [r for r in collected if r.kind == kind]
                    if chosen:
                        print(f"{kind:13} {sparkline(chosen)}")
            else:
                Path(args.plot).write_text(svg(collected, title=f"Glucose - pairing {name}"),
                                           encoding="utf-8")
                print(f"wrote {args.plot}", file=sys.stderr)
        return 0


def _poll(client: DigaClient, name: str, kind: str, start: dt.datetime,
          overlap: dt.timedelta, *, replay: bool) -> PollResult:
    state = client.store.load(name)
    result = PollResult()
    granted = state.scopes
    if kind in {"bg", "all"} and (kind == "bg" or observation_scope(MIV_BLOOD_GLUCOSE)
                                  in granted):
        result.extend(client.fetch_blood_glucose(name, start, overlap, replay=replay))
    if kind in {"cgm", "all"} and (kind == "cgm" or observation_scope(MIV_CONTINUOUS_GLUCOSE)
                                   in granted):
        result.extend(client.fetch_cgm(name, start, overlap, replay=replay))
    return result


def _print_result(result: PollResult, fmt: str) -> None:
    if fmt == "json":
        for reading in result.readings:
            print(json.dumps(reading.to_json()))
    elif fmt == "table":
        if result.readings:
            print(table(result.readings))
        print(f"{len(result.readings)} new readings", file=sys.stderr)
    for refusal in result.rejected:
        print(f"refused {refusal.observation_id}: {refusal.reason}", file=sys.stderr)


def _cmd_summary(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise DigaError("--days must be > 0")
    with _client(args) as client:
        end = _when(args.end, "--end") if args.end else None
        start = (_when(args.start, "--start") if args.start
                 else (end or client.clock()) - dt.timedelta(days=args.days))
        bundle = client.cgm_summary(_name(args), start, end, related=args.related)
        if args.json:
            print(json.dumps(bundle, indent=2))
        else:
            print("\n".join(summary_lines(bundle)) or "(empty report)")
        return 0


def _cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    names = [_name(args)] if args.name or args.patient else store.names()
    if not names:
        print(f"no pairings in {store.folder}")
        return 0
    for index, name in enumerate(names):
        if index:
            print()
        print(_describe(store.load(name)))
    return 0

