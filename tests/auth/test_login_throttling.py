"""Portal login throttling over real TLS: a login name with too many failed logins, or a
client address, is refused with 429 and Retry-After, the same way whether or not the name
exists and even with the right password; a correct login clears the name's failures; the
failures live in the store, so another server process on the same database sees them."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.auth.portal import audit_row
from bridge.web import free_port
from tests.auth.harness import PASSWORD, Sandbox, form_value, running_sandbox

WRONG = "not the password"
REFUSAL = "Too many failed logins"
#: Per login name in the main sandbox; no per-address limit there, so that the tests of one
#: name do not lock the others (every request comes from 127.0.0.1).
LIMIT = 3
WINDOW_S = 900


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("throttle"),
                         patients=("alice", "bob", "carol", "dave", "erin", "frank", "gina"),
                         auth={"login_max_failures": LIMIT,
                               "login_failure_window_s": WINDOW_S,
                               "login_max_failures_per_address": 0}) as box:
        yield box


def attempt(ua: httpx.Client, username: str, password: str,
            headers: dict[str, str] | None = None) -> httpx.Response:
    """Open the login form and send it, as a browser does."""
    page = ua.get("/portal/login")
    assert page.status_code == 200, page.text
    return ua.post("/portal/login", headers=headers, data={
        "csrf": form_value(page.text, "csrf"), "next": "", "username": username,
        "password": password})


def login(box: Sandbox, username: str, password: str, *,
          base_url: str | None = None) -> httpx.Response:
    """One login in a fresh browser, closed afterwards (a server stops only once its
    connections are gone)."""
    with box.browser(base_url) as ua:
        return attempt(ua, username, password)


def fail(box: Sandbox, username: str, times: int, *, base_url: str | None = None) -> None:
    for _ in range(times):
        response = login(box, username, WRONG, base_url=base_url)
        assert response.status_code == 401, response.text


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert REFUSAL in response.text
    return int(response.headers["retry-after"])


def page_text(response: httpx.Response) -> str:
    """The page without its session's CSRF token (different in every browser)."""
    return re.sub(r'name="csrf" value="[^"]*"', 'name="csrf" value=""', response.text)


def test_a_locked_name_is_refused_even_with_the_right_password(box: Sandbox) -> None:
    fail(box, "alice", LIMIT)
    ua = box.browser()
    refused = attempt(ua, "alice", PASSWORD)
    assert 0 < retry_after(refused) <= WINDOW_S
    assert refused.headers["cache-control"] == "no-store"
    # Not logged in: the portal still sends this browser to the login form.
    assert ua.get("/portal/pairings").headers["location"].startswith("/portal/login")
    # Refused attempts do not count: the lock does not grow while it is tried.
    assert retry_after(login(box, "alice", WRONG)) <= retry_after(refused)
    # Another name is not affected.
    assert login(box, "bob", PASSWORD).status_code == 303


def test_an_unknown_name_gets_the_same_answers(box: Sandbox) -> None:
    known, unknown = [], []
    for _ in range(LIMIT):
        known.append(login(box, "carol", WRONG))
        unknown.append(login(box, "nobody-here", WRONG))
    known.append(login(box, "carol", PASSWORD))
    unknown.append(login(box, "nobody-here", PASSWORD))
    for mine, theirs in zip(known, unknown, strict=True):
        assert mine.status_code == theirs.status_code
        assert page_text(mine) == page_text(theirs)
        assert sorted(mine.headers) == sorted(theirs.headers)
    assert [r.status_code for r in known] == [401] * LIMIT + [429]
    assert abs(retry_after(known[-1]) - retry_after(unknown[-1])) <= 2


def test_the_lock_of_an_account_goes_into_its_audit_trail_once(box: Sandbox) -> None:
    def locks(patient: str) -> list[Any]:
        return [e for e in box.store.audit_entries(patient_id=patient)
                if e.action == "portal-login-locked"]

    fail(box, "gina", LIMIT - 1)
    assert locks("gina") == []  # wrong passwords alone are no lock
    fail(box, "gina", 1)
    retry_after(login(box, "gina", PASSWORD))  # refused: these add no entry
    retry_after(login(box, "gina", WRONG))
    [entry] = locks("gina")
    assert entry.detail == {"failures": LIMIT, "window_s": WINDOW_S}
    assert audit_row(entry, {})["what"] == "Login locked after too many wrong passwords"
    assert "gina" not in str(entry.detail)  # the login name itself is not logged
    # An unknown name has no trail to write to.
    before = len(box.store.audit_entries(limit=10_000))
    fail(box, "nobody-at-all", LIMIT)
    assert len(box.store.audit_entries(limit=10_000)) == before


def test_a_correct_login_clears_the_failures(box: Sandbox) -> None:
    fail(box, "dave", LIMIT - 1)
    assert login(box, "dave", PASSWORD).status_code == 303
    # A full allowance again: without the reset the second of these would be refused.
    fail(box, "dave", LIMIT)
    retry_after(login(box, "dave", PASSWORD))


def _serve(box: Sandbox, port: int) -> subprocess.Popen[bytes]:
    """``hddt-bridge serve`` in a process of its own on the sandbox's database."""
    config = box.tmp / "serve.toml"
    config.write_text(f"""
[store]
path = "{box.tmp / 'backend.sqlite'}"
[broker]
url = "mqtt://127.0.0.1:1"
[api]
port = {port}
cert = "{box.pki.server.cert}"
key = "{box.pki.server.key}"
client_ca = ["{box.pki.ca.cert}"]
dashboard = false
[auth]
state_dir = "{box.tmp / 'auth'}"
login_max_failures = {LIMIT}
login_failure_window_s = {WINDOW_S}
login_max_failures_per_address = 0
""")
    return subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config", str(config),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_until_up(box: Sandbox, process: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + 60
    with box.browser(base_url) as ua:
        while True:
            try:
                ua.get("/portal/login")
                return
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1].decode()
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)


def test_another_server_process_sees_the_same_failures(box: Sandbox) -> None:
    fail(box, "erin", LIMIT)
    fail(box, "frank", LIMIT - 1)
    port = free_port()
    other = f"https://127.0.0.1:{port}"
    process = _serve(box, port)
    try:
        _wait_until_up(box, process, other)
        # Locked here before that process started: it holds across a restart.
        retry_after(login(box, "erin", PASSWORD, base_url=other))
        # A failure there counts here.
        fail(box, "frank", 1, base_url=other)
        retry_after(login(box, "frank", PASSWORD))
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()


def test_the_lock_ends_when_the_window_has_passed(tmp_path: Path) -> None:
    window_s = 5  # below what the configuration file allows, to keep the test short
    with running_sandbox(tmp_path, auth={"login_max_failures": 2,
                                         "login_failure_window_s": window_s}) as box:
        fail(box, "alice", 2)
        wait = retry_after(login(box, "alice", PASSWORD))
        assert 1 <= wait <= window_s
        time.sleep(wait + 0.2)
        assert login(box, "alice", PASSWORD).status_code == 303


def test_one_client_address_is_limited_across_names(tmp_path: Path) -> None:
    # Behind a trusted reverse proxy (here: the loopback) the client is the address that
    # proxy appended last to X-Forwarded-For.
    with running_sandbox(tmp_path, auth={"login_max_failures": 100,
                                         "login_max_failures_per_address": 3,
                                         "trusted_proxies": ("127.0.0.0/8",)}) as box:
        attacker = {"x-forwarded-for": "192.0.2.7"}
        for name in ("ann", "ben", "cid"):
            assert attempt(box.browser(), name, WRONG, attacker).status_code == 401
        retry_after(attempt(box.browser(), "alice", PASSWORD, attacker))
        # What the client wrote before the proxy's own entry is not believed.
        forged = {"x-forwarded-for": "192.0.2.7, 192.0.2.9"}
        assert attempt(box.browser(), "alice", PASSWORD, forged).status_code == 303
        assert attempt(box.browser(), "alice", PASSWORD,
                       {"x-forwarded-for": "192.0.2.8"}).status_code == 303
