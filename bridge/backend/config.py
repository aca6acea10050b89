"""The backend's TOML configuration (``configs/backend.toml`` documents every key).

The whole file is checked at start and every problem names the file and the dotted key,
e.g. ``backend.toml: store.retention_days: expected at least 30 (HDDT exports the last 30
days), got 7``. Unknown keys are refused, so a misspelt setting never passes silently.
Relative paths (the SQLite file, certificates, password files) are relative to the file's
own folder.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote, unquote, urlsplit

from bridge.backend.store import MIN_RETENTION_DAYS
from bridge.errors import BridgeError
from bridge.messages import MAX_PAYLOAD_BYTES, check_id
from bridge.tomlconfig import Bounds, TomlTable, Wording


class ConfigError(BridgeError):
    """The configuration is missing, not TOML, or has a bad key (named in the message)."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    #: SQLAlchemy URL: ``sqlite:///ABSOLUTE/PATH`` or ``postgresql+psycopg://USER@HOST/DB``.
    url: str
    retention_days: int = 90
    dead_letter_retention_days: int = 90
    #: At most this many bytes of a refused payload are kept in ``dead_letters``.
    dead_letter_max_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca: Path | None
    cert: Path | None
    key: Path | None
    check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    #: ``$share/<group>/`` prefix of the subscriptions; "" subscribes plainly (one worker).
    shared_group: str = "ingest"
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    #: How long the broker keeps this worker's session (and queue) while it is away.
    session_expiry_s: int = 7 * 24 * 3600
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may send at once.
    receive_maximum: int = 1000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class IngestConfig:
    #: A batch is committed when it holds this many records …
    batch_records: int = 2000
    #: … or this long after its first message arrived.
    batch_ms: int = 200
    #: Create a patient and gateway for an unknown gateway id (demo only).
    auto_provision: bool = False
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    #: Also consume the gateway and device status topics.
    status_topics: bool = True
    #: Backoff between attempts to commit a batch while the database is unavailable.
    retry_min_s: float = 0.2
    retry_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class BackendConfig:
    source: str
    store: StoreConfig
    broker: BrokerConfig
    ingest: IngestConfig

    def with_client_id(self, client_id: str) -> BackendConfig:
        check_id(client_id, "client id")
        return replace(self, broker=replace(self.broker, client_id=client_id))


class BackendFileWording(Wording):
    """The backend file's wording for integers: ``expected at least 30 (…), got 7``. Every
    table of the file reads alike (the ``[api]`` and ``[auth]`` tables use it too)."""

    def out_of_range(self, kind: Literal["integer", "number"], value: float,
                     bounds: Bounds) -> str:
        if kind == "number":
            return super().out_of_range(kind, value, bounds)
        if bounds.too_low(value):
            return f"expected at least {bounds.lo}{bounds.why}, got {value!r}"
        return f"expected at most {bounds.hi}, got {value!r}"


class _Table:
    """One TOML table being read through :class:`~bridge.tomlconfig.TomlTable`, with the
    signatures this module's schema (and :mod:`bridge.auth.config`) call."""

    def __init__(self, source: str, where: str, data: Mapping[str, Any], *,
                 reader: TomlTable | None = None) -> None:
        self.source, self.where = source, where
        self._t = reader or TomlTable(
            data, where=where, wording=BackendFileWording(),
            error=lambda key, message: ConfigError(source, key or None, message))

    @property
    def data(self) -> Mapping[str, Any]:
        return self._t.data

    @property
    def used(self) -> set[str]:
        return self._t.used

    def key(self, name: str) -> str:
        return self._t.key(name)

    def fail(self, name: str, message: str) -> ConfigError:
        return cast("ConfigError", self._t.fail(name, message))

    def text(self, name: str, default: str | None = None, *, required: bool = False,
             allow_empty: bool = False) -> str | None:
        if required:
            return self._t.text(name, allow_empty=allow_empty)
        if default is None:
            return self._t.opt_text(name, allow_empty=allow_empty)
        return self._t.text(name, default, allow_empty=allow_empty)

    def integer(self, name: str, default: int, *, minimum: int,
                maximum: int | None = None, why: str = "") -> int:
        return self._t.integer(name, default, lo=minimum, hi=maximum, why=why)

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        return self._t.number(name, default, lo=minimum, lo_open=True)

    def boolean(self, name: str, default: bool) -> bool:
        return self._t.boolean(name, default)

    def path(self, name: str, base: Path) -> Path | None:
        return self._t.path(name, base)

    def table(self, name: str, *, required: bool = False) -> _Table:
        child = self._t.table(name, required=required)
        return _Table(self.source, child.where, child.data, reader=child)

    def finish(self) -> None:
        self._t.finish()


def _read_secret(t: _Table, name: str, base: Path) -> str | None:
    path = t.path(name, base)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise t.fail(name, f"cannot read {path}: {exc.strerror or exc}") from None


def _store(t: _Table, base: Path) -> StoreConfig:
    url = t.text("url")
    path = t.path("path", base)
    if (url is None) == (path is None):
        raise t.fail("url", "give exactly one of url (PostgreSQL or SQLite URL) and path "
                            "(an SQLite file)")
    if path is not None:
        url = f"sqlite:///{path}"
    assert url is not None
    scheme = url.split(":", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgresql+psycopg"):
        raise t.fail("url", f"expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, "
                            f"got {url!r}")
    if scheme == "postgresql":
        url = "postgresql+psycopg" + url[len("postgresql"):]
    password = _read_secret(t, "password_file", base)
    if password is not None:
        if not scheme.startswith("postgresql"):
            raise t.fail("password_file", "applies to PostgreSQL URLs only")
        parts = urlsplit(url)
        if parts.password:
            raise t.fail("url", "do not put a password in the URL; use password_file")
        if not parts.username:
            raise t.fail("url", "a password_file needs a user name in the URL")
        netloc = f"{parts.username}:{quote(password, safe='')}@{parts.netloc.split('@', 1)[1]}"
        url = parts._replace(netloc=netloc).geturl()
    why = f" (HDDT exports the last {MIN_RETENTION_DAYS} days)"
    store = StoreConfig(
        url=url,
        retention_days=t.integer("retention_days", 90, minimum=MIN_RETENTION_DAYS, why=why),
        dead_letter_retention_days=t.integer("dead_letter_retention_days", 90, minimum=1),
        dead_letter_max_bytes=t.integer("dead_letter_max_bytes", 64 * 1024, minimum=0,
                                        maximum=MAX_PAYLOAD_BYTES))
    t.finish()
    return store


def _broker(t: _Table, base: Path, check_files: bool) -> BrokerConfig:
    url = cast("str", t.text("url", required=True))
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise t.fail("url", f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise t.fail("url", f"bad port in {url!r}") from None
    if parts.password:
        raise t.fail("url", "do not put a password in the URL; use password_file")
    tls_table = t.table("tls")
    tls: TlsConfig | None = None
    if parts.scheme == "mqtts" or tls_table.data:
        if parts.scheme != "mqtts":
            raise t.fail("url", "a [broker.tls] table needs an mqtts:// URL")
        ca, cert, key = (tls_table.path(n, base) for n in ("ca", "cert", "key"))
        for name, p in (("ca", ca), ("cert", cert), ("key", key)):
            if check_files and p is not None and not p.is_file():
                raise tls_table.fail(name, f"no such file: {p}")
        if (cert is None) != (key is None):
            raise tls_table.fail("cert" if cert is None else "key",
                                 "cert and key go together (mutual TLS)")
        tls = TlsConfig(ca, cert, key, tls_table.boolean("check_hostname", True))
        tls_table.finish()
    client_id = cast("str", t.text("client_id", "hddt-ingest"))
    try:
        check_id(client_id, "client id")
    except BridgeError as exc:
        raise t.fail("client_id", str(exc)) from None
    group = cast("str", t.text("shared_group", "ingest", allow_empty=True))
    if group and ("/" in group or "+" in group or "#" in group):
        raise t.fail("shared_group", f"must not contain '/', '+' or '#', got {group!r}")
    protocol = t.text("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        raise t.fail("protocol", f"expected '5' or '3.1.1', got {protocol!r}")
    broker = BrokerConfig(
        host=parts.hostname, port=port, client_id=client_id,
        protocol=cast("Literal['5', '3.1.1']", protocol), shared_group=group, tls=tls,
        username=unquote(parts.username) if parts.username else t.text("username"),
        password=_read_secret(t, "password_file", base),
        keepalive_s=t.integer("keepalive_s", 30, minimum=5, maximum=65535),
        session_expiry_s=t.integer("session_expiry_s", 7 * 24 * 3600, minimum=60,
                                   maximum=0xFFFFFFFF),
        receive_maximum=t.integer("receive_maximum", 1000, minimum=1, maximum=65535),
        reconnect_min_s=t.number("reconnect_min_s", 0.5),
        reconnect_max_s=t.number("reconnect_max_s", 30.0))
    if broker.reconnect_max_s < broker.reconnect_min_s:
        raise t.fail("reconnect_max_s", "must be at least reconnect_min_s")
    t.finish()
    return broker


def _ingest(t: _Table) -> IngestConfig:
    ingest = IngestConfig(
        batch_records=t.integer("batch_records", 2000, minimum=1, maximum=100_000),
        batch_ms=t.integer("batch_ms", 200, minimum=1, maximum=60_000),
        auto_provision=t.boolean("auto_provision", False),
        max_payload_bytes=t.integer("max_payload_bytes", MAX_PAYLOAD_BYTES, minimum=1024,
                                    maximum=MAX_PAYLOAD_BYTES),
        status_topics=t.boolean("status_topics", True),
        retry_min_s=t.number("retry_min_s", 0.2),
        retry_max_s=t.number("retry_max_s", 10.0))
    if ingest.retry_max_s < ingest.retry_min_s:
        raise t.fail("retry_max_s", "must be at least retry_min_s")
    t.finish()
    return ingest


def parse_config(data: Mapping[str, Any], source: str = "<config>",
                 base: Path | None = None, *, check_files: bool = True) -> BackendConfig:
    """Validate a parsed TOML document; ``base`` resolves relative paths (default: cwd).
    ``check_files=False`` skips checking that certificate files exist (for a file checked on
    one machine and used on another)."""
    root = _Table(source, "", data)
    base = base or Path.cwd()
    store = _store(root.table("store", required=True), base)
    broker = _broker(root.table("broker", required=True), base, check_files)
    ingest = _ingest(root.table("ingest"))
    root.used.update({"api", "auth"})  # the HTTPS server's tables, read by bridge.auth.config
    root.finish()
    return BackendConfig(source=source, store=store, broker=broker, ingest=ingest)


def load_config(path: str | Path, *, check_files: bool = True) -> BackendConfig:
    """Read and validate the backend configuration at ``path``."""
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from None
    return parse_config(data, source, p.resolve().parent, check_files=check_files)
