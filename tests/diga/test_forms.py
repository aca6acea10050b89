"""Reading login and consent forms the way a browser without JavaScript submits them."""

from __future__ import annotations

import pytest

from bridge.diga.errors import FormError
from bridge.diga.forms import page_error, parse_forms

BG = "patient/Observation.rs?code:in=https://gematik.de/fhir/hddt/ValueSet/hddt-miv-blood-glucose-measurement"
CGM = "patient/Observation.rs?code:in=https://gematik.de/fhir/hddt/ValueSet/hddt-miv-continuous-glucose-measurement"

LOGIN = """<!doctype html><html><head><title>Sign in</title></head><body>
<form method="post" action="/portal/login">
  <input type="hidden" name="csrf_token" value="tok&amp;123">
  <input type="hidden" name="next" value="/authorize?client_id=urn%3Adiga%3Abfarm%3A12345">
  <label for="u">User</label><input id="u" type="text" name="username" autocomplete="username">
  <label>Password <input type="password" name="password"></label>
  <button type="submit">Sign in</button>
</form></body></html>"""

CONSENT = f"""<html><body><h1>Share data with Glucose Coach?</h1>
<form method="post" action="consent">
  <input type="hidden" name="csrf_token" value="c-9">
  <input type="hidden" name="request_uri" value="urn:ietf:params:oauth:request_uri:abc">
  <label><input type="checkbox" name="scope" value="{BG}" checked> Blood glucose</label>
  <label><input type="checkbox" name="scope" value="{CGM}" checked> CGM</label>
  <input type="checkbox" name="scope" value="patient/Device.rs" checked>
  <textarea name="note">  kept </textarea>
  <button type="submit" name="decision" value="deny">Decline</button>
  <button type="submit" name="decision" value="approve">Allow</button>
</form>
<form method="get" action="/portal/logout"><button>Log out</button></form>
</body></html>"""


def test_login_form() -> None:
    form = parse_forms(LOGIN)[0]
    assert form.has_password and form.method == "post"
    assert form.target("https://ddr.example:8443/authorize?x=1") == (
        "https://ddr.example:8443/portal/login")
    form.fill_login("anna", "s3cret")
    assert form.fields(submit=form.approve_button()) == [
        ("csrf_token", "tok&123"),
        ("next", "/authorize?client_id=urn%3Adiga%3Abfarm%3A12345"),
        ("username", "anna"), ("password", "s3cret")]
    labels = {i.name: i.label for i in form.inputs}
    assert labels["username"] == "User" and labels["password"] == "Password"


def test_consent_form_grants_a_subset() -> None:
    forms = parse_forms(CONSENT)
    assert len(forms) == 2
    consent = forms[0]
    assert not consent.has_password
    assert [b.label for b in consent.checkboxes[:2]] == ["Blood glucose", "CGM"]
    assert consent.choose([CGM]) == [CGM]
    approve = consent.approve_button()
    assert approve is not None and approve.value == "approve"
    assert consent.fields(submit=approve) == [
        ("csrf_token", "c-9"), ("request_uri", "urn:ietf:params:oauth:request_uri:abc"),
        ("scope", CGM), ("note", "  kept "), ("decision", "approve")]
    deny = consent.deny_button()
    assert deny is not None and ("decision", "deny") in consent.fields(submit=deny)
    assert consent.target("https://ddr.example/portal/authorize") == (
        "https://ddr.example/portal/consent")


def test_choosing_a_scope_not_offered_is_refused() -> None:
    consent = parse_forms(CONSENT)[0]
    with pytest.raises(FormError, match="does not offer"):
        consent.choose(["patient/Observation.rs?code:in=https://evil.example/vs"])


def test_login_without_fields_refused() -> None:
    form = parse_forms("<form><input type='password' name='pw'></form>")[0]
    with pytest.raises(FormError, match="user name and password"):
        form.fill_login("a", "b")


def test_page_error_text() -> None:
    assert page_error("<title>400 Bad request</title><h1>Unknown <b>request_uri</b></h1>") == (
        "400 Bad request - Unknown request_uri")
    assert page_error('<title>Log in</title><h1>Log in</h1><p class="error">Wrong user name '
                      'or password</p>') == "Log in - Wrong user name or password"
    assert parse_forms("<p>no forms</p>") == []
