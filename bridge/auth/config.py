"""The ``[api]`` and ``[auth]`` tables of the backend TOML: the HTTPS server and the
authorization server (``configs/backend.toml`` documents every key).

Checked like the rest of the file (:mod:`bridge.backend.config`), with the shared
:class:`~bridge.tomlconfig.TomlTable`: every problem names the file and the dotted key;
unknown keys are refused; relative paths are relative to the file.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.auth.settings import DEFAULT_PROXY_CERT_HEADER, AuthSettings
from bridge.backend.config import BackendConfig, BackendFileWording, ConfigError, parse_config
from bridge.tomlconfig import TomlTable


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where and how the HTTPS server listens."""

    host: str
    port: int
    #: Server certificate and key (PEM).
    cert: Path
    key: Path
    #: CA certificates trusted to have issued DiGA client certificates; every registered DiGA
    #: certificate is trusted as well (bridge.web.client_trust_bundle).
    client_ca: tuple[Path, ...]
    dashboard: bool = True


@dataclass(frozen=True, slots=True)
class ServeConfig:
    backend: BackendConfig
    api: ApiConfig
    auth: AuthSettings
    #: A DiGA directory file (TOML/JSON) loaded at every start, or None.
    directory_file: Path | None = None


def _root(data: Mapping[str, Any], source: str) -> TomlTable:
    return TomlTable(data, wording=BackendFileWording(),
                     error=lambda key, message: ConfigError(source, key or None, message))


def _paths(t: TomlTable, name: str, base: Path, check_files: bool) -> tuple[Path, ...]:
    value = t.raw(name)
    values = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise t.fail(name, f"expected a path or a list of paths, got {value!r}")
    out = tuple(Path(v).expanduser() if Path(v).expanduser().is_absolute()
                else base / v for v in values)
    for p in out:
        if check_files and not p.is_file():
            raise t.fail(name, f"no such file: {p}")
    return out


def _file(t: TomlTable, name: str, base: Path, check_files: bool) -> Path:
    path = t.path(name, base)
    if path is None:
        raise t.fail(name, "missing; expected a PEM file")
    if check_files and not path.is_file():
        raise t.fail(name, f"no such file: {path}")
    return path


def _api(t: TomlTable, base: Path, check_files: bool) -> tuple[ApiConfig, str]:
    host = t.text("host", "127.0.0.1")
    port = t.integer("port", 8443, lo=1, hi=65535)
    public_url = t.text("public_url", f"https://{host}:{port}").rstrip("/")
    parts = urlsplit(public_url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise t.fail("public_url", f"expected https://HOST[:PORT][/PATH], got {public_url!r}")
    api = ApiConfig(host=host, port=port, cert=_file(t, "cert", base, check_files),
                    key=_file(t, "key", base, check_files),
                    client_ca=_paths(t, "client_ca", base, check_files),
                    dashboard=t.boolean("dashboard", True))
    return api, public_url


def _proxies(t: TomlTable) -> tuple[str, ...]:
    value = t.raw("trusted_proxies")
    proxies = [] if value is None else value
    if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
        raise t.fail("trusted_proxies", "expected a list of IP addresses or networks")
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise t.fail("trusted_proxies",
                         f"not an IP address or network: {proxy!r}") from None
    return tuple(proxies)


def _auth(t: TomlTable, base: Path, issuer: str, proxies: tuple[str, ...],
          proxy_header: str) -> tuple[AuthSettings, Path | None]:
    state_dir = t.path("state_dir", base)
    if state_dir is None:
        raise t.fail("state_dir", "missing; expected the folder of the signing key, the "
                                  "Pairing ID salt and the session key")
    settings = AuthSettings(
        issuer=issuer, audience=f"{issuer}/fhir", state_dir=state_dir,
        access_token_lifetime_s=t.integer("access_token_lifetime_s", 600, lo=30,
                                          hi=24 * 3600),
        par_lifetime_s=t.integer("par_lifetime_s", 600, lo=10, hi=3600),
        code_lifetime_s=t.integer("code_lifetime_s", 60, lo=5, hi=600),
        session_lifetime_s=t.integer("session_lifetime_s", 1800, lo=60, hi=24 * 3600),
        login_max_failures=t.integer("login_max_failures", 5, lo=1, hi=100),
        login_failure_window_s=t.integer("login_failure_window_s", 900, lo=60,
                                         hi=24 * 3600),
        login_max_failures_per_address=t.integer("login_max_failures_per_address", 50,
                                                 lo=0, hi=100_000),
        service_documentation=t.opt_text("service_documentation"),
        trusted_proxies=proxies, proxy_cert_header=proxy_header)
    directory = t.path("directory_file", base)
    return settings, directory


def parse_serve_config(data: dict[str, Any], source: str, base: Path, *,
                       check_files: bool = True) -> ServeConfig:
    backend = parse_config(data, source, base, check_files=check_files)
    root = _root(data, source)
    api_table = root.table("api", required=True)
    api, issuer = _api(api_table, base, check_files)
    proxies = _proxies(api_table)
    header = api_table.text("proxy_cert_header", DEFAULT_PROXY_CERT_HEADER)
    api_table.finish()
    auth_table = root.table("auth", required=True)
    auth, directory = _auth(auth_table, base, issuer, proxies, header)
    auth_table.finish()
    return ServeConfig(backend=backend, api=api, auth=auth, directory_file=directory)


def load_serve_config(path: str | Path, *, check_files: bool = True) -> ServeConfig:
    """Read the backend TOML at ``path`` including its ``[api]`` and ``[auth]`` tables."""
    p = Path(path)
    source = str(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from None
    return parse_serve_config(data, source, p.resolve().parent, check_files=check_files)
