"""The patient's side of pairing in a real browser (headless Chromium over the DevTools
protocol, real TLS): the portal login, the consent screen naming the DiGA and each MIV, a
subset granted, the pairings list, and revocation from the portal. Screenshots are saved.

Chromium is required: in CI a missing browser fails the test (see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.auth.harness import BG, CGM, DIGA_A, PASSWORD, bearer, running_sandbox
from tests.dashboard.cdp import Browser, chromium_path

SHOTS = os.environ.get("HDDT_SCREENSHOTS")


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
            Browser(tmp_path / "profile", height=1000,
                    extra_args=("--ignore-certificate-errors",)) as browser:
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
        # The browser is sent to the DiGA's redirect URI (nothing answers there in a test):
        # the navigation history holds the address with the code.
        deadline = time.monotonic() + 30
        sent_to: list[str] = []
        while not sent_to and time.monotonic() < deadline:
            sent_to = [u for u in page.history() if u.startswith(pending.redirect_uri + "?")]
            time.sleep(0.1)
        assert sent_to, page.history()
        callback = {k: v[0] for k, v in parse_qs(urlsplit(sent_to[-1]).query).items()}
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
