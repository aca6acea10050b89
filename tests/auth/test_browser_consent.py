"""The patient's side of pairing in a real browser (headless Chromium over the DevTools
protocol, real TLS): the portal login, the consent screen naming the DiGA and each MIV, a
subset granted, the pairings list, and revocation from the portal. Screenshots are saved.

Chromium is required: in CI a missing browser fails the test (see tests/conftest.py).
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import ssl
import threading
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.auth.harness import (
    BG,
    CGM,
    DIGA_A,
    PASSWORD,
    bearer,
    redirect_uri,
    running_sandbox,
)
from tests.dashboard.cdp import Browser, chromium_path

SHOTS = os.environ.get("HDDT_SCREENSHOTS")


class _DigaCallback:
    """The DiGA's redirect URI endpoint: takes one GET and keeps its query parameters."""

    def __init__(self, cert: Path, key: Path) -> None:
        received: queue.Queue[dict[str, str]] = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                received.put({k: v[0] for k, v in query.items()})
                body = b"<p>Paired. You can return to the app.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.received = received
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def wait(self, timeout_s: float) -> dict[str, str]:
        return self.received.get(timeout=timeout_s)

    def __enter__(self) -> _DigaCallback:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def _js(value: str) -> str:
    return json.dumps(value)


def test_pairing_and_revocation_in_headless_chromium(tmp_path: Path) -> None:
    if chromium_path() is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the browser test")
        pytest.skip(message)
    shots = Path(SHOTS) if SHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with running_sandbox(tmp_path, patients=("alice",)) as box, \
            _DigaCallback(box.pki.server.cert, box.pki.server.key) as callback_server, \
            Browser(tmp_path / "profile", height=1000, extra_args=(
                "--ignore-certificate-errors",
                f"--host-resolver-rules=MAP {urlsplit(redirect_uri(DIGA_A)).hostname} "
                f"127.0.0.1:{callback_server.port}")) as browser:
        pending = box.push(DIGA_A)
        page = browser.new_page()
        page.open(f"{box.base_url}/authorize?client_id={quote(DIGA_A)}"
                  f"&request_uri={quote(pending.request_uri)}")
        # The portal asks the patient to log in first.
        page.wait_for("document.querySelector('input[name=password]') !== null")
        page.screenshot(shots / "portal-login.png")
        page.evaluate(f"""(() => {{
            document.querySelector('input[name=username]').value = {_js('alice')};
            document.querySelector('input[name=password]').value = {_js(PASSWORD)};
            document.querySelector('form[action="/portal/login"]').submit(); }})()""")
        # The consent screen names the DiGA and each requested MIV; nothing is pre-ticked.
        page.wait_for("document.querySelectorAll('input[name=scope]').length > 0")
        page.screenshot(shots / "portal-consent.png")
        offered = page.evaluate("Array.from(document.querySelectorAll('input[name=scope]'))"
                                ".map(b => [b.value, b.checked])")
        assert sorted(v for v, _ in offered) == sorted([BG, CGM, "patient/Device.rs",
                                                       "patient/DeviceMetric.rs"])
        assert not any(checked for _, checked in offered)
        text = page.evaluate("document.body.innerText")
        assert DIGA_A in text                       # the DiGA is named
        assert "Blood glucose measurements" in text and "Continuous glucose" in text
        # The patient shares blood glucose only.
        page.evaluate(f"""(() => {{
            for (const b of document.querySelectorAll('input[name=scope]'))
                b.checked = [{_js(BG)}, 'patient/Device.rs'].includes(b.value);
            document.querySelector('button[value=allow]').click(); }})()""")
        # The browser is sent to the DiGA's redirect URI: the DiGA's callback endpoint,
        # here a small HTTPS server the browser reaches through a host-resolver rule.
        callback = callback_server.wait(30)
        assert callback["state"] == pending.state
        tokens = box.exchange(pending, callback["code"])
        assert tokens.status_code == 200, tokens.text
        granted = set(tokens.json()["scope"].split())
        assert granted == {BG, "patient/Device.rs"}
        access = tokens.json()["access_token"]
        fhir = box.diga(DIGA_A)
        assert fhir.get(f"{box.fhir_url}/Observation", headers=bearer(access)).status_code \
            == 200
        # The pairing is listed in the portal, and the patient stops it there.
        page.open(f"{box.base_url}/portal/pairings")
        page.wait_for("document.querySelector('form[action=\"/portal/pairings/revoke\"]')"
                      " !== null")
        page.screenshot(shots / "portal-pairings.png")
        assert "blood" in page.evaluate("document.body.innerText").lower()
        page.evaluate("document.querySelector('form[action=\"/portal/pairings/revoke\"]')"
                      ".querySelector('button').click()")
        page.wait_for("document.querySelector('form[action=\"/portal/pairings/revoke\"]')"
                      " === null")
        page.screenshot(shots / "portal-revoked.png")
        refused = fhir.get(f"{box.fhir_url}/Observation", headers=bearer(access))
        assert refused.status_code == 401
        assert "invalid_token" in refused.headers.get("www-authenticate", "")
    for name in ("portal-login", "portal-consent", "portal-pairings", "portal-revoked"):
        assert (shots / f"{name}.png").stat().st_size > 1000
