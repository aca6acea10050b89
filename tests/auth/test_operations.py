"""Operating the server: the trusted-proxy certificate header, the commands, the [api] and
[auth] configuration, the DiGA directory file, the sandbox PKI and portal accounts."""

from __future__ import annotations

import json
import ssl
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge.auth.accounts import add_account, authenticate, hash_password, verify_password
from bridge.auth.config import load_serve_config
from bridge.auth.directory import get_client, list_clients, load_directory_file
from bridge.auth.errors import AccountError, DirectoryError
from bridge.auth.pki import DIGA_CERT_DAYS, issue_hddt_pki
from bridge.auth.tls import TrustedProxyMiddleware
from bridge.backend import registry
from bridge.backend.config import ConfigError
from bridge.backend.pki import PkiError
from bridge.backend.store import Store
from bridge.cli import main
from bridge.hddt.access import client_certificate_chain
from bridge.web import HttpsServer, TlsFiles
from tests.auth.harness import BG, DIGA_A

# --- trusted proxy ---------------------------------------------------------------------------


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"chain": client_certificate_chain(request),
                         "header": request.headers.get("x-ssl-client-cert")})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    issue_hddt_pki(folder, [DIGA_A])
    return folder


def _proxied_server(pki: Path, proxies: list[str]) -> HttpsServer:
    app = TrustedProxyMiddleware(Starlette(routes=[Route("/", _echo)]), proxies=proxies,
                                 header="x-ssl-client-cert")
    return HttpsServer(app, tls=TlsFiles(pki / "server.pem", pki / "server.key",
                                         pki / "ca.pem"))


def _client(pki: Path, with_cert: bool) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(pki / "digas" / "10001.pem"), str(pki / "digas" / "10001.key"))
    return httpx.Client(verify=ctx)


def test_direct_tls_puts_the_client_certificate_in_the_scope(pki: Path) -> None:
    pem = (pki / "digas" / "10001.pem").read_text()
    with _proxied_server(pki, []) as server, _client(pki, True) as client, \
            _client(pki, False) as anonymous:
        body = client.get(server.base_url + "/").json()
        assert [c.strip() for c in body["chain"]] == [pem.strip()]
        assert anonymous.get(server.base_url + "/").json()["chain"] == []


def test_forwarded_certificate_counts_only_from_a_trusted_proxy(pki: Path) -> None:
    forged = quote((pki / "digas" / "10001.pem").read_text())
    with _proxied_server(pki, []) as server, _client(pki, False) as client:
        # Not a trusted proxy: the header is dropped and believed nowhere.
        body = client.get(server.base_url + "/", headers={"x-ssl-client-cert": forged}).json()
        assert body == {"chain": [], "header": None}
    with _proxied_server(pki, ["127.0.0.0/8"]) as server, _client(pki, False) as client:
        body = client.get(server.base_url + "/", headers={"x-ssl-client-cert": forged}).json()
        assert len(body["chain"]) == 1 and "BEGIN CERTIFICATE" in body["chain"][0]
        # From the proxy without the header: no certificate, even if the proxy had one.
        assert client.get(server.base_url + "/").json()["chain"] == []


# --- PKI -------------------------------------------------------------------------------------

def test_sandbox_pki_follows_the_hddt_certificate_rules(tmp_path: Path) -> None:
    pki = issue_hddt_pki(tmp_path, [DIGA_A], server_names=["hddt.test"])
    client = x509.load_pem_x509_certificate(pki.diga(DIGA_A).cert.read_bytes())
    days = (client.not_valid_after_utc - client.not_valid_before_utc).days
    assert 365 <= days <= 398 and days >= DIGA_CERT_DAYS - 1
    usage = client.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "hddt.test"} <= set(names.get_values_for_type(x509.DNSName))
    # Idempotent: a second call keeps everything, a new DiGA is signed by the same CA.
    again = issue_hddt_pki(tmp_path, [DIGA_A, "urn:diga:bfarm:20000"],
                           server_names=["hddt.test"])
    assert again.created == (again.diga("urn:diga:bfarm:20000").cert,
                             again.diga("urn:diga:bfarm:20000").key)
    with pytest.raises(PkiError, match="five digits"):
        issue_hddt_pki(tmp_path, ["urn:diga:bfarm:123"])


# --- directory, accounts ---------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'b.sqlite'}") as s:
        with s.begin() as conn:
            registry.provision_patient(conn, "P-1", actor="test")
        yield s


def test_directory_file_registers_and_updates(store: Store, tmp_path: Path, pki: Path) -> None:
    pem = (pki / "digas" / "10001.pem").read_text()
    (tmp_path / "a.pem").write_text(pem)
    file = tmp_path / "directory.toml"
    file.write_text(textwrap.dedent(f"""
        [[diga]]
        client_id = "{DIGA_A}"
        name = "Glucose Coach"
        redirect_uris = ["https://coach.example/cb"]
        scopes = ["{BG}"]
        certificate = "a.pem"
        """))
    with store.begin() as conn:
        load_directory_file(conn, file, actor="test")
        assert get_client(conn, DIGA_A) is not None
    file.write_text(file.read_text().replace("Glucose Coach", "Glucose Coach 2") +
                    "active = false\n")
    with store.begin() as conn:
        (entry,) = load_directory_file(conn, file, actor="test")
    assert entry.name == "Glucose Coach 2" and not entry.active
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"client_id": DIGA_A, "name": "x", "redirect_uris": ["cb"],
                                "scopes": [BG], "certificate_pem": pem}]))
    with store.begin() as conn, pytest.raises(DirectoryError, match=r"entry 1.*absolute URI"):
        load_directory_file(conn, bad, actor="test")


def test_accounts_hash_and_refuse(store: Store) -> None:
    stored = hash_password("s3cret-passphrase")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_password(stored, "s3cret-passphrase")
    assert not verify_password(stored, "s3cret-passphrasE")
    with store.begin() as conn:
        add_account(conn, "pat", "long enough", patient_id="P-1", actor="test")
        assert authenticate(conn, "pat", "long enough") == "P-1"
        assert authenticate(conn, "pat", "wrong one!") is None
        assert authenticate(conn, "nobody", "long enough") is None
        with pytest.raises(AccountError, match="taken"):
            add_account(conn, "pat", "long enough", patient_id="P-1", actor="test")
        with pytest.raises(AccountError, match="not provisioned"):
            add_account(conn, "x", "long enough", patient_id="P-404", actor="test")
        with pytest.raises(AccountError, match="at least"):
            add_account(conn, "y", "short", patient_id="P-1", actor="test")


# --- configuration and commands --------------------------------------------------------------

def _config(tmp_path: Path, pki: Path, extra: str = "") -> Path:
    path = tmp_path / "backend.toml"
    path.write_text(textwrap.dedent(f"""
        [store]
        path = "b.sqlite"
        [broker]
        url = "mqtt://127.0.0.1:1"
        [api]
        port = 9443
        cert = "{pki / 'server.pem'}"
        key = "{pki / 'server.key'}"
        client_ca = ["{pki / 'ca.pem'}"]
        trusted_proxies = ["10.0.0.0/8"]
        [auth]
        state_dir = "auth-state"
        access_token_lifetime_s = 300
        """) + extra)
    return path


def test_serve_configuration_is_checked(tmp_path: Path, pki: Path) -> None:
    config = load_serve_config(_config(tmp_path, pki))
    assert config.auth.issuer == "https://127.0.0.1:9443"
    assert config.auth.audience == "https://127.0.0.1:9443/fhir"
    assert config.auth.state_dir == tmp_path / "auth-state"
    assert config.auth.access_token_lifetime_s == 300
    assert config.auth.trusted_proxies == ("10.0.0.0/8",)
    with pytest.raises(ConfigError, match=r"auth\.access_token_lifetme_s: unknown key"):
        load_serve_config(_config(tmp_path, pki, "access_token_lifetme_s = 3\n"))
    assert (config.auth.login_max_failures, config.auth.login_failure_window_s,
            config.auth.login_max_failures_per_address) == (5, 900, 50)
    tuned = load_serve_config(_config(tmp_path, pki, "login_max_failures = 3\n"
                                                     "login_failure_window_s = 600\n"
                                                     "login_max_failures_per_address = 0\n"))
    assert (tuned.auth.login_max_failures, tuned.auth.login_failure_window_s,
            tuned.auth.login_max_failures_per_address) == (3, 600, 0)
    with pytest.raises(ConfigError, match=r"auth\.login_max_failures: expected at least 1, "
                                          r"got 0"):
        load_serve_config(_config(tmp_path, pki, "login_max_failures = 0\n"))
    with pytest.raises(ConfigError, match=r"auth\.login_failure_window_s: expected at most "
                                          r"86400, got 100000"):
        load_serve_config(_config(tmp_path, pki, "login_failure_window_s = 100000\n"))
    # The messages of the other keys, as they were before the login keys came.
    for old, new, message in [
            ("access_token_lifetime_s = 300", "access_token_lifetime_s = 3",
             r"auth\.access_token_lifetime_s: expected at least 30, got 3"),
            ('state_dir = "auth-state"', "", r"auth\.state_dir: missing; expected the folder"),
            ("port = 9443", "port = 70000", r"api\.port: expected at most 65535, got 70000"),
            ('"10.0.0.0/8"', '"proxy.lan"', r"api\.trusted_proxies: not an IP"),
            ('trusted_proxies = ["10.0.0.0/8"]', 'trusted_proxies = "10.0.0.0/8"',
             r"api\.trusted_proxies: expected a list of IP addresses or networks"),
            (f'client_ca = ["{pki / "ca.pem"}"]', "client_ca = 5",
             r"api\.client_ca: expected a path or a list of paths, got 5"),
            ("[api]\n", '[api]\npublic_url = "http://x"\n',
             r"api\.public_url: expected https://HOST\[:PORT\]\[/PATH\], got 'http://x'"),
            ("[api]\n", "[api]\nhost = 1\n", r"api\.host: expected a string, got 1")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(_config(tmp_path, pki).read_text().replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_serve_config(bad)


def test_commands_keep_the_directory_and_accounts(tmp_path: Path, pki: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path, pki))
    out = tmp_path / "pki2"
    assert main(["auth", "pki", "--out", str(out), "--diga", DIGA_A]) == 0
    assert (out / "digas" / "10001.pem").is_file()
    assert main(["auth", "diga", "add", DIGA_A, "--config", config, "--name", "Coach",
                 "--redirect-uri", "https://coach.example/cb", "--cert",
                 str(out / "digas" / "10001.pem")]) == 0
    capsys.readouterr()
    assert main(["auth", "diga", "list", "--config", config, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["client_id"] for d in listed] == [DIGA_A] and listed[0]["active"]
    assert main(["auth", "diga", "deactivate", DIGA_A, "--config", config]) == 0
    with Store.open(f"sqlite:///{tmp_path / 'b.sqlite'}") as s, s.begin() as conn:
        assert [c.active for c in list_clients(conn)] == [False]
        registry.provision_patient(conn, "P-9", actor="test")
    (tmp_path / "pw").write_text("a good password\n")
    assert main(["auth", "account", "add", "pat9", "--patient", "P-9", "--config", config,
                 "--password-file", str(tmp_path / "pw")]) == 0
    assert main(["auth", "account", "add", "pat9", "--patient", "P-9", "--config", config,
                 "--password-file", str(tmp_path / "pw")]) == 1
    assert "taken" in capsys.readouterr().err
    assert main(["auth", "diga", "add", "urn:diga:x", "--config", config, "--name", "X",
                 "--redirect-uri", "https://x.example/cb", "--cert",
                 str(out / "digas" / "10001.pem")]) == 1
    assert "five-digit" in capsys.readouterr().err


def test_serve_command_answers_over_tls(tmp_path: Path, pki: Path) -> None:
    import subprocess
    import sys
    import time

    from bridge.web import free_port

    port = free_port()
    config = _config(tmp_path, pki).read_text().replace("port = 9443", f"port = {port}")
    (tmp_path / "serve.toml").write_text(config)
    process = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config",
                                str(tmp_path / "serve.toml"), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with _client(pki, False) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    response = client.get(f"https://127.0.0.1:{port}"
                                          "/.well-known/oauth-authorization-server")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.communicate()[1].decode()
                    assert time.monotonic() < deadline, "serve did not come up"
                    time.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["issuer"] == f"https://127.0.0.1:{port}"
        assert (tmp_path / "auth-state" / "signing-key.pem").stat().st_mode & 0o077 == 0
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down cleanly and then re-raises the signal it caught.
    assert process.returncode in (0, -15), err.decode()
    assert b"Traceback" not in err


def test_the_trust_refresher_adds_certificates_registered_later_in_the_background(
        tmp_path: Path) -> None:
    import time

    from bridge.auth.errors import AuthError
    from bridge.web import ClientTrustRefresher, register_diga
    from tests.auth.harness import ALL_GLUCOSE, redirect_uri, self_signed_certificate

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with Store.open(f"sqlite:///{tmp_path / 'backend.sqlite'}") as store:
        with pytest.raises(AuthError, match="interval"):
            ClientTrustRefresher(store, context, interval_s=0)
        refresher = ClientTrustRefresher(store, context, interval_s=0.05).start()
        try:
            before = context.cert_store_stats()["x509"]
            client_id = "urn:diga:bfarm:10042"
            cert, _ = self_signed_certificate(tmp_path, client_id)
            register_diga(store, client_id, name="Late DiGA",
                          redirect_uris=[redirect_uri(client_id)], scopes=ALL_GLUCOSE,
                          certificate_pem=cert.read_text(), actor="test")
            deadline = time.monotonic() + 10
            while context.cert_store_stats()["x509"] == before:
                assert time.monotonic() < deadline, "the refresher never loaded the certificate"
                time.sleep(0.02)
            assert context.cert_store_stats()["x509"] == before + 1
        finally:
            refresher.stop()
