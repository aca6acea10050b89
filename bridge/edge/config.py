"""The agent's TOML configuration, validated as a whole at start.

Every problem is reported with the file and the dotted path of the bad key, e.g.
``configs/agent.toml: devices[2].transport: expected 'ble' or 'serial', got 'usb'``, so an
installer at a patient's home can fix the file without reading code. Relative paths in the
file (outbox, certificates) are relative to the file's own directory. ``docs/edge-agent.md``
and ``configs/agent.toml`` document every key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from bridge.edge.clock import DEFAULT_NOT_BEFORE, ClockPolicy
from bridge.edge.outbox import OutboxLimits
from bridge.edge.uplink import TlsSettings, UplinkSettings
from bridge.errors import BridgeError
from bridge.tomlconfig import TomlTable

#: BLE GATT profiles the agent can run (``bridge.devices.ble.PROFILES``; kept here so that
#: reading a configuration does not load the BLE stack; a test keeps the two equal).
BLE_PROFILES = ("glucose", "cgm", "insulin-pump")
#: Serial meter protocols (``bridge.devices.serial.SERIAL_PROTOCOLS``; ``ieee11073`` is
#: another name for ``phd``).
SERIAL_PROTOCOLS = ("phd", "ieee11073", "onetouch-ultra2", "onetouch-ultra-easy",
                    "contour-astm")
BLE_BACKENDS = ("bleak", "bumble")
DEFAULT_TIMEZONE = "Europe/Berlin"
_DEFAULT_NOT_BEFORE_DATE = DEFAULT_NOT_BEFORE.date()


class ConfigError(BridgeError):
    """The configuration file is missing, not TOML, or has a bad key (named in the message)."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class ClockConfig:
    tolerance_s: float = 120.0
    future_tolerance_s: float = 300.0
    jump_threshold_s: float = 300.0
    not_before: dt.date = _DEFAULT_NOT_BEFORE_DATE


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One device the agent reads. ``transport`` selects which of ``profile``/``address``
    (BLE) or ``protocol``/``port`` (serial) apply."""

    name: str
    transport: Literal["ble", "serial"]
    profile: str | None = None
    address: str | None = None
    backend: Literal["bleak", "bumble"] = "bleak"
    bumble_transport: str | None = None
    protocol: str | None = None
    port: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    poll_interval_s: float = 300.0
    #: Per-answer timeout handed to the driver; ``None``: the driver's own default.
    timeout_s: float | None = None
    retry_min_s: float = 5.0
    retry_max_s: float = 600.0
    sync_timeout_s: float = 600.0
    allow_time_write: bool = False
    passkey: int | None = None
    not_before: dt.date | None = None
    enabled: bool = True
    #: Further driver options, passed through untouched.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """What the driver opens: the BLE address or the serial port URL."""
        return (self.address if self.transport == "ble" else self.port) or ""

    def clock_policy(self, clock: ClockConfig) -> ClockPolicy:
        not_before = self.not_before or clock.not_before
        return ClockPolicy(
            zone=zoneinfo.ZoneInfo(self.timezone),
            tolerance=dt.timedelta(seconds=clock.tolerance_s),
            future_tolerance=dt.timedelta(seconds=clock.future_tolerance_s),
            jump_threshold=dt.timedelta(seconds=clock.jump_threshold_s),
            not_before=dt.datetime.combine(not_before, dt.time(), dt.UTC))

    def driver_options(self) -> dict[str, Any]:
        """The options handed to the driver: ``options`` plus the keys documented at device
        level (only where set, so each driver keeps its own defaults). The time zone is not
        among them: the agent, not the driver, places device times on the UTC axis."""
        out: dict[str, Any] = dict(self.options)
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.allow_time_write:
            out["allow_time_write"] = True
        if self.passkey is not None:
            out["passkey"] = self.passkey
        return out


@dataclass(frozen=True, slots=True)
class AgentConfig:
    source: str
    gateway_id: str
    timezone: str
    broker: UplinkSettings
    broker_url: str
    outbox_path: Path
    outbox_limits: OutboxLimits
    clock: ClockConfig
    devices: tuple[DeviceConfig, ...]
    status_interval_s: float = 60.0

    def device(self, name: str) -> DeviceConfig:
        for device in self.devices:
            if device.name == name:
                return device
        known = ", ".join(d.name for d in self.devices) or "none"
        raise ConfigError(self.source, None, f"no device named {name!r} (configured: {known})")


def _error_factory(source: str) -> Callable[[str, str], ConfigError]:
    return lambda key, message: ConfigError(source, key or None, message)


def _broker(t: TomlTable, base: Path, gateway_id: str,
            check_files: bool) -> tuple[UplinkSettings, str]:
    url = t.text("url")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise t.fail("url", f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise t.fail("url", f"bad port in {url!r}") from None
    tls_table = t.table("tls")
    tls: TlsSettings | None = None
    if parts.scheme == "mqtts" or tls_table.data:
        cert = tls_table.path("cert", base)
        key = tls_table.path("key", base)
        ca = tls_table.path("ca", base)
        for name, p in (("ca", ca), ("cert", cert), ("key", key)):
            if check_files and p is not None and not p.is_file():
                raise tls_table.fail(name, f"no such file: {p}")
        if (cert is None) != (key is None):
            raise tls_table.fail("cert" if cert is None else "key",
                                 "cert and key go together (mutual TLS)")
        tls = TlsSettings(ca=ca, cert=cert, key=key,
                          check_hostname=tls_table.boolean("check_hostname", True))
        tls_table.finish()
        if parts.scheme != "mqtts":
            raise t.fail("url", "a [broker.tls] table needs an mqtts:// URL")
    username = unquote(parts.username) if parts.username else t.opt_text("username")
    password: str | None = None
    password_file = t.path("password_file", base)
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise t.fail("password_file", f"cannot read {password_file}: {exc}") from None
    if parts.password:
        raise t.fail("url", "do not put a password in the URL; use password_file")
    settings = UplinkSettings(
        host=parts.hostname, port=port,
        client_id=t.ident("client_id", f"hddt-{gateway_id}"),
        protocol=cast("Literal['3.1.1', '5']", t.choice("protocol", ("3.1.1", "5"), "5")),
        tls=tls, username=username, password=password,
        keepalive_s=t.integer("keepalive_s", 60, lo=5, hi=65535),
        connect_timeout_s=t.positive("connect_timeout_s", 10.0),
        publish_timeout_s=t.positive("publish_timeout_s", 10.0),
        reconnect_min_s=t.positive("reconnect_min_s", 1.0),
        reconnect_max_s=t.positive("reconnect_max_s", 60.0),
        batch_size=t.integer("batch_size", 100, lo=1, hi=10_000),
        idle_poll_s=t.positive("idle_poll_s", 5.0))
    if settings.reconnect_max_s < settings.reconnect_min_s:
        raise t.fail("reconnect_max_s", "must be at least reconnect_min_s")
    t.finish()
    return settings, url


def _device(t: TomlTable, default_zone: str, names: set[str]) -> DeviceConfig:
    name = t.ident("name")
    if name in names:
        raise t.fail("name", f"duplicate device name {name!r}")
    names.add(name)
    transport = t.choice("transport", ("ble", "serial"))
    kwargs: dict[str, Any] = {}
    if transport == "ble":
        kwargs["profile"] = t.choice("profile", BLE_PROFILES)
        kwargs["address"] = t.text("address")
        backend = t.choice("backend", BLE_BACKENDS, "bleak")
        kwargs["backend"] = backend
        kwargs["bumble_transport"] = t.opt_text("bumble_transport")
        if backend == "bumble" and kwargs["bumble_transport"] is None:
            raise t.fail("bumble_transport", "missing; the bumble backend needs an HCI "
                                             "transport such as 'usb:0' or "
                                             "'tcp-client:127.0.0.1:9101'")
        kwargs["passkey"] = t.opt_integer("passkey", lo=0, hi=999_999)
        for other in ("protocol", "port"):
            if other in t:
                raise t.fail(other, "applies to serial devices only")
    else:
        kwargs["protocol"] = t.choice("protocol", SERIAL_PROTOCOLS)
        kwargs["port"] = t.text("port")
        for other in ("profile", "address", "backend", "bumble_transport", "passkey"):
            if other in t:
                raise t.fail(other, "applies to BLE devices only")
    options = t.table("options")
    for own in ("timeout_s", "allow_time_write", "passkey"):
        if own in options:
            raise options.fail(own, f"set {t.key(own)} instead")
    kwargs["options"] = options.remaining()
    poll = t.positive("poll_interval_s", 300.0)
    retry_min = t.positive("retry_min_s", 5.0)
    retry_max = t.positive("retry_max_s", 600.0)
    if retry_max < retry_min:
        raise t.fail("retry_max_s", "must be at least retry_min_s")
    device = DeviceConfig(
        name=name, transport=cast("Literal['ble', 'serial']", transport),
        timezone=t.zone("timezone", default_zone), poll_interval_s=poll,
        timeout_s=t.opt_number("timeout_s", lo=0.0, lo_open=True),
        sync_timeout_s=t.positive("sync_timeout_s", 600.0), retry_min_s=retry_min,
        retry_max_s=retry_max,
        allow_time_write=t.boolean("allow_time_write", False),
        not_before=t.date("not_before"), enabled=t.boolean("enabled", True), **kwargs)
    t.finish()
    return device


def parse_config(data: Mapping[str, Any], source: str = "<config>",
                 base: Path | None = None, *, check_files: bool = True) -> AgentConfig:
    """Validate a parsed TOML document; ``base`` resolves relative paths (default: cwd).
    ``check_files=False`` skips checking that certificate files exist (for a config that
    is checked on one machine and used on another)."""
    root = TomlTable(data, error=_error_factory(source))
    base = base or Path.cwd()
    agent = root.table("agent", required=True)
    gateway_id = agent.ident("gateway_id")
    zone = agent.zone("timezone", DEFAULT_TIMEZONE)
    status_interval = agent.positive("status_interval_s", 60.0)
    agent.finish()

    broker, url = _broker(root.table("broker", required=True), base, gateway_id, check_files)

    ob = root.table("outbox")
    outbox_path = ob.path("path", base, "outbox.sqlite")
    ttl = dt.timedelta(days=ob.positive("ttl_days", 30.0))
    retention = dt.timedelta(days=ob.positive("key_retention_days", 90.0))
    if retention < ttl:
        raise ob.fail("key_retention_days", "must be at least ttl_days (a key must outlive "
                                            "its queued record)")
    limits = OutboxLimits(
        max_rows=ob.integer("max_rows", 100_000, lo=1),
        max_bytes=ob.integer("max_bytes", 64 * 1024 * 1024, lo=1024),
        ttl=ttl, key_retention=retention)
    ob.finish()

    ck = root.table("clock")
    clock = ClockConfig(
        tolerance_s=ck.number("tolerance_s", 120.0, lo=0),
        future_tolerance_s=ck.number("future_tolerance_s", 300.0, lo=0),
        jump_threshold_s=ck.number("jump_threshold_s", 300.0, lo=0),
        not_before=ck.date("not_before", _DEFAULT_NOT_BEFORE_DATE))
    ck.finish()

    names: set[str] = set()
    devices = tuple(_device(t, zone, names) for t in root.tables("devices"))
    root.finish()
    return AgentConfig(source=source, gateway_id=gateway_id, timezone=zone, broker=broker,
                       broker_url=url, outbox_path=outbox_path, outbox_limits=limits,
                       clock=clock, devices=devices, status_interval_s=status_interval)


def load_config(path: str | Path, *, check_files: bool = True) -> AgentConfig:
    """Read and validate the agent configuration at ``path``."""
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


def _options_class(device: DeviceConfig) -> Any:
    # Imported here: only `agent run` and `read` need the driver stacks.
    if device.transport == "ble":
        from bridge.devices.device_information import BleOptions  # noqa: PLC0415

        return BleOptions
    from bridge.devices.contour_astm import ContourDriverOptions  # noqa: PLC0415
    from bridge.devices.onetouch_ultra2 import Ultra2DriverOptions  # noqa: PLC0415
    from bridge.devices.onetouch_ultra_easy import UltraEasyDriverOptions  # noqa: PLC0415
    from bridge.devices.serial_phd import PhdDriverOptions  # noqa: PLC0415

    return {"phd": PhdDriverOptions, "ieee11073": PhdDriverOptions,
            "onetouch-ultra2": Ultra2DriverOptions,
            "onetouch-ultra-easy": UltraEasyDriverOptions,
            "contour-astm": ContourDriverOptions}[device.protocol or ""]


def check_driver_options(config: AgentConfig, *, only: str | None = None) -> None:
    """Check each device's (or only the named device's) driver options against its driver,
    naming the bad key.

    Separate from :func:`load_config` because it loads the driver stacks; ``agent run`` and
    ``read`` call it before they start, so a wrong option stops the agent at once instead of
    failing every sync.
    """
    from bridge.errors import BridgeError as _Error  # noqa: PLC0415

    own = {"timeout_s", "allow_time_write", "passkey"}
    for index, device in enumerate(config.devices):
        if only is not None and device.name != only:
            continue
        where = f"devices[{index}]"
        cls = _options_class(device)
        known = {f.name for f in dataclasses.fields(cls)} - {"now"}
        options = device.driver_options()
        what = device.profile if device.transport == "ble" else device.protocol
        for name in options:
            if name not in known:
                key = f"{where}.{name}" if name in own else f"{where}.options.{name}"
                raise ConfigError(config.source, key, f"not an option of the {what} driver "
                                                      f"(known: {', '.join(sorted(known))})")
        try:
            cls.from_mapping(options)
        except (ValueError, TypeError, _Error) as exc:
            raise ConfigError(config.source, f"{where}.options", str(exc)) from None
