"""The ``[api]`` and ``[auth]`` tables of the backend TOML: the HTTPS server and the
authorization server (``configs/backend.toml`` documents every key).

Checked like the rest of the file (:mod:`bridge.backend.config`): every problem names the
file and the dotted key; unknown keys are refused; relative paths are relative to the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from bridge.auth.settings import DEFAULT_PROXY_CERT_HEADER, AuthSettings
from bridge.backend.config import BackendConfig, ConfigError, _Table, parse_config


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


def _paths(t: _Table, name: str, base: Path, check_files: bool) -> tuple[Path, ...]:
    value = t.data.get(name, [])
    t.used.add(name)
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise t.fail(name, f"expected a path or a list of paths, got {value!r}")
    out = tuple(Path(v).expanduser() if Path(v).expanduser().is_absolute()
                else base / v for v in values)
    for p in out:
        if check_files and not p.is_file():
            raise t.fail(name, f"no such file: {p}")
    return out


def _file(t: _Table, name: str, base: Path, check_files: bool) -> Path:
    path = t.path(name, base)
    if path is None:
        raise t.fail(name, "missing; expected a PEM file")
    if check_files and not path.is_file():
        raise t.fail(name, f"no such file: {path}")
    return path


def _api(t: _Table, base: Path, check_files: bool) -> tuple[ApiConfig, str]:
    host = cast("str", t.text("host", "127.0.0.1"))
    port = t.integer("port", 8443, minimum=1, maximum=65535)
    public_url = cast("str", t.text("public_url", f"https://{host}:{port}")).rstrip("/")
    parts = urlsplit(public_url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise t.fail("public_url", f"expected https://HOST[:PORT][/PATH], got {public_url!r}")
    api = ApiConfig(host=host, port=port, cert=_file(t, "cert", base, check_files),
                    key=_file(t, "key", base, check_files),
                    client_ca=_paths(t, "client_ca", base, check_files),
                    dashboard=t.boolean("dashboard", True))
    return api, public_url


def _auth(t: _Table, base: Path, issuer: str, proxies: tuple[str, ...],
          proxy_header: str) -> tuple[AuthSettings, Path | None]:
    state_dir = t.path("state_dir", base)
    if state_dir is None:
        raise t.fail("state_dir", "missing; expected the folder of the signing key, the "
                                  "Pairing ID salt and the session key")
    settings = AuthSettings(
        issuer=issuer, audience=f"{issuer}/fhir", state_dir=state_dir,
        access_token_lifetime_s=t.integer("access_token_lifetime_s", 600, minimum=30,
                                          maximum=24 * 3600),
        par_lifetime_s=t.integer("par_lifetime_s", 600, minimum=10, maximum=3600),
        code_lifetime_s=t.integer("code_lifetime_s", 60, minimum=5, maximum=600),
        session_lifetime_s=t.integer("session_lifetime_s", 1800, minimum=60,
                                     maximum=24 * 3600),
        service_documentation=t.text("service_documentation"),
        trusted_proxies=proxies, proxy_cert_header=proxy_header)
    directory = t.path("directory_file", base)
    return settings, directory


def parse_serve_config(data: dict[str, Any], source: str, base: Path, *,
                       check_files: bool = True) -> ServeConfig:
    backend = parse_config(data, source, base, check_files=check_files)
    root = _Table(source, "", data)
    api_table = root.table("api", required=True)
    api, issuer = _api(api_table, base, check_files)
    proxies_value = api_table.data.get("trusted_proxies", [])
    api_table.used.add("trusted_proxies")
    if not isinstance(proxies_value, list) or not all(isinstance(p, str)
                                                      for p in proxies_value):
        raise api_table.fail("trusted_proxies", "expected a list of IP addresses or networks")
    import ipaddress  # noqa: PLC0415

    for proxy in proxies_value:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise api_table.fail("trusted_proxies", f"not an IP address or network: "
                                                    f"{proxy!r}") from None
    header = cast("str", api_table.text("proxy_cert_header", DEFAULT_PROXY_CERT_HEADER))
    api_table.finish()
    auth_table = root.table("auth", required=True)
    auth, directory = _auth(auth_table, base, issuer, tuple(proxies_value), header)
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
