"""HTML of the patient portal: plain forms, no JavaScript, autoescaped (Jinja2)."""

from __future__ import annotations

from jinja2 import DictLoader, Environment, select_autoescape

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Patient portal{% endblock %} · hddt-bridge</title>
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#1b1b1b}
h1{font-size:1.4rem} fieldset{border:1px solid #bbb;border-radius:.4rem;margin:1rem 0}
label{display:block;margin:.4rem 0} .error{color:#a40000;font-weight:600}
button{padding:.4rem 1rem;margin-right:.5rem} table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}
.muted{color:#666;font-size:.9rem}
</style></head>
<body>
<header><p class="muted">Patient portal of the device maker
{% if logged_in %} · <a href="/portal/pairings">Your pairings</a>
· <a href="/portal/audit">Who accessed what</a>
<form method="post" action="/portal/logout" style="display:inline">
<input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Log out</button></form>{% endif %}</p></header>
<main>{% block main %}{% endblock %}</main>
</body></html>
"""

_LOGIN = """{% extends "base.html" %}
{% block title %}Log in{% endblock %}
{% block main %}
<h1>Log in</h1>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% if reason %}<p>{{ reason }}</p>{% endif %}
<form method="post" action="/portal/login">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="next" value="{{ next }}">
<label>User name <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
required></label>
<button type="submit">Log in</button>
</form>
{% endblock %}
"""

_CONSENT = """{% extends "base.html" %}
{% block title %}Share data with {{ diga_name }}{% endblock %}
{% block main %}
<h1>Share your device data with {{ diga_name }}?</h1>
<p>The digital health application <strong>{{ diga_name }}</strong>
(<code>{{ client_id }}</code>) asks to read the following data from your devices.
Tick each kind of data you agree to share; anything you leave unticked stays private.</p>
<form method="post" action="/authorize">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="client_id" value="{{ client_id }}">
<input type="hidden" name="request_uri" value="{{ request_uri }}">
<fieldset><legend>Data requested</legend>
{% for scope, label in scopes %}
<label><input type="checkbox" name="scope" value="{{ scope }}"> {{ label }}</label>
{% endfor %}
</fieldset>
<p>Your consent is valid until {{ valid_until }} and you can withdraw it at any time here
in the portal or in {{ diga_name }}. {{ diga_name }} receives a pseudonymous pairing
identifier, never your name or account.</p>
<button type="submit" name="decision" value="allow">Share the ticked data</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
{% endblock %}
"""

_PAIRINGS = """{% extends "base.html" %}
{% block title %}Your pairings{% endblock %}
{% block main %}
<h1>Applications you share data with</h1>
{% if message %}<p>{{ message }}</p>{% endif %}
{% if active %}
<table><tr><th>Application</th><th>Data</th><th>Since</th><th>Until</th><th></th></tr>
{% for p in active %}
<tr><td>{{ p.client_name }}</td>
<td><ul>{% for label in p.labels %}<li>{{ label }}</li>{% endfor %}</ul></td>
<td>{{ p.granted }}</td><td>{{ p.until }}</td>
<td><form method="post" action="/portal/pairings/revoke">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="pairing_id" value="{{ p.id }}">
<button type="submit">Stop sharing</button></form></td></tr>
{% endfor %}</table>
{% else %}<p>You share no data with any application.</p>{% endif %}
{% if ended %}
<h2>Ended</h2><ul>{% for p in ended %}<li>{{ p.client_name }}: {{ p.why }}</li>{% endfor %}</ul>
{% endif %}
{% endblock %}
"""

_AUDIT = """{% extends "base.html" %}
{% block title %}Audit trail{% endblock %}
{% block main %}
<h1>Who accessed what</h1>
<p>Pairings, withdrawals and every data request applications made with your consent, newest
first (the last {{ limit }} entries).</p>
{% if entries %}
<table><tr><th>When (UTC)</th><th>What</th><th>Application</th><th>Result</th></tr>
{% for e in entries %}
<tr><td>{{ e.at }}</td><td>{{ e.what }}</td><td>{{ e.who }}</td><td>{{ e.result }}</td></tr>
{% endfor %}</table>
{% else %}<p>Nothing recorded yet.</p>{% endif %}
{% endblock %}
"""

_ERROR = """{% extends "base.html" %}
{% block title %}Request refused{% endblock %}
{% block main %}
<h1>This request cannot be completed</h1>
<p class="error">{{ error }}: {{ description }}</p>
<p>Please return to the application and start again.</p>
{% endblock %}
"""

_REGISTRATION = """{% extends "base.html" %}
{% block title %}Client registration{% endblock %}
{% block main %}
<h1>Registering a DiGA as a client</h1>
<p>This Device Data Recorder accepts DiGAs listed in the BfArM DiGA directory. Its operator
registers each DiGA with its <code>client_id</code> (<code>urn:diga:bfarm:</code> and the
five-digit DiGA-ID), its exact redirect URIs, the SMART scopes of its MIVs and its TLS
client certificate. Clients authenticate with mutual TLS (<code>tls_client_auth</code>) at
<code>/par</code>, <code>/token</code> and <code>/revoke</code>, and must use pushed
authorization requests with PKCE (S256).</p>
<p>Scopes offered:</p><ul>{% for scope in scopes %}<li><code>{{ scope }}</code></li>
{% endfor %}</ul>
{% endblock %}
"""

TEMPLATES = Environment(
    loader=DictLoader({"base.html": _BASE, "login.html": _LOGIN, "consent.html": _CONSENT,
                       "pairings.html": _PAIRINGS, "error.html": _ERROR, "audit.html": _AUDIT,
                       "registration.html": _REGISTRATION}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
