"""Reading the portal's plain HTML forms, as a browser would submit them.

The maker's login and consent pages work without JavaScript (DESIGN.md), so a sandbox DiGA
can walk through them with an HTTP client: find the form, keep its hidden inputs (the CSRF
token among them), fill the login, tick the MIVs to grant, and post it to its ``action``.
Only the standard library's :mod:`html.parser` is used.

This is a sandbox convenience: a real DiGA never sees the patient's credentials; it sends the
patient's browser to the authorization URL (pairing.md, step 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

from bridge.diga.errors import FormError

#: Submit buttons meaning "yes" on a consent page, tried in this order.
_APPROVE = re.compile(r"approve|allow|grant|accept|consent|confirm|erlauben|zustimm|bestät|"
                      r"freigeben|einwillig", re.IGNORECASE)
_DENY = re.compile(r"deny|decline|reject|cancel|ablehn|abbrech", re.IGNORECASE)


@dataclass(slots=True)
class FormInput:
    """One control of a form."""

    name: str
    type: str
    value: str
    checked: bool = False
    #: Text of the <label> bound to the control (for="id" or wrapping), if any.
    label: str = ""
    id: str = ""


@dataclass(slots=True)
class Form:
    """A parsed <form>: where it posts and what it holds."""

    action: str
    method: str
    inputs: list[FormInput] = field(default_factory=list)
    text: str = ""

    @property
    def has_password(self) -> bool:
        """Whether this is a login form."""
        return any(i.type == "password" for i in self.inputs)

    @property
    def checkboxes(self) -> list[FormInput]:
        """The checkbox controls (one per MIV scope on a consent page)."""
        return [i for i in self.inputs if i.type == "checkbox"]

    @property
    def submits(self) -> list[FormInput]:
        """The submit buttons that carry a name (their name=value is part of the post)."""
        return [i for i in self.inputs if i.type == "submit"]

    def target(self, page_url: str) -> str:
        """The absolute URL the form posts to (the page itself when action is empty)."""
        return urljoin(page_url, self.action or page_url)

    def fields(self, *, submit: FormInput | None = None) -> list[tuple[str, str]]:
        """The name/value pairs a browser sends: text-like and hidden inputs, checked
        checkboxes and radios, and the one submit button pressed (HTML §4.10.21.4)."""
        pairs: list[tuple[str, str]] = []
        for control in self.inputs:
            if not control.name:
                continue
            if control.type in {"checkbox", "radio"}:
                if control.checked:
                    pairs.append((control.name, control.value or "on"))
            elif control.type == "submit":
                if submit is not None and control is submit:
                    pairs.append((control.name, control.value))
            elif control.type not in {"button", "reset", "image", "file"}:
                pairs.append((control.name, control.value))
        return pairs

    def fill_login(self, username: str, password: str) -> None:
        """Put the login into the form's user and password fields."""
        password_inputs = [i for i in self.inputs if i.type == "password"]
        users = [i for i in self.inputs if i.type in {"text", "email"} and i.name]
        if not password_inputs or not users:
            raise FormError("the login form has no user name and password fields")
        users[0].value = username
        password_inputs[0].value = password

    def choose(self, wanted: Iterable[str]) -> list[str]:
        """Tick the checkboxes whose value is in ``wanted``, untick the others; returns the
        values ticked. Refuses a ``wanted`` value the form does not offer."""
        wanted_set = set(wanted)
        offered = {box.value for box in self.checkboxes}
        missing = wanted_set - offered
        if missing:
            raise FormError(f"the consent form does not offer {sorted(missing)} "
                            f"(it offers {sorted(offered)})")
        for box in self.checkboxes:
            box.checked = box.value in wanted_set
        return sorted(box.value for box in self.checkboxes if box.checked)

    def approve_button(self) -> FormInput | None:
        """The submit button that approves (None when the form has a single unnamed one)."""
        buttons = self.submits
        for button in buttons:
            words = f"{button.name} {button.value} {button.label}"
            if _APPROVE.search(words) and not _DENY.search(words):
                return button
        named = [b for b in buttons if b.name and not _DENY.search(f"{b.name} {b.value}")]
        return named[0] if named else None

    def deny_button(self) -> FormInput | None:
        """The submit button that declines, if the form has one."""
        for button in self.submits:
            if _DENY.search(f"{button.name} {button.value} {button.label}"):
                return button
        return None


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._labels: dict[str, str] = {}
        self._label_for: str | None = None
        self._label_text: list[str] = []
        self._label_wraps: list[FormInput] = []
        self._in_label = False
        self._button: FormInput | None = None
        self._button_text: list[str] = []
        self._text: list[str] = []
        self._textarea: FormInput | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = Form(action=values.get("action", ""),
                              method=values.get("method", "get").lower())
            self.forms.append(self._form)
            self._text = []
        elif tag == "label":
            self._in_label = True
            self._label_for = values.get("for") or None
            self._label_text = []
            self._label_wraps = []
        elif self._form is not None and tag in {"input", "button", "textarea", "select"}:
            self._control(tag, values, attrs)

    def _control(self, tag: str, values: dict[str, str],
                 attrs: list[tuple[str, str | None]]) -> None:
        assert self._form is not None
        default_type = "submit" if tag == "button" else "text"
        kind = values.get("type", default_type).lower() if tag != "select" else "select"
        control = FormInput(name=values.get("name", ""), type=kind,
                            value=values.get("value", "on" if kind == "checkbox" else ""),
                            checked=any(k == "checked" for k, _ in attrs),
                            id=values.get("id", ""))
        if kind == "select":
            control.type = "text"
        self._form.inputs.append(control)
        if self._in_label:
            self._label_wraps.append(control)
        if tag == "button":
            self._button = control
            self._button_text = []
        if tag == "textarea":
            self._textarea = control

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            if self._form is not None:
                self._form.text = " ".join(" ".join(self._text).split())
            self._form = None
        elif tag == "label" and self._in_label:
            text = " ".join(" ".join(self._label_text).split())
            if self._label_for:
                self._labels[self._label_for] = text
            for control in self._label_wraps:
                control.label = text
            self._in_label = False
        elif tag == "button" and self._button is not None:
            self._button.label = " ".join(" ".join(self._button_text).split())
            self._button = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._in_label:
            self._label_text.append(data)
        if self._button is not None:
            self._button_text.append(data)
        if self._textarea is not None:
            self._textarea.value += data
        if self._form is not None:
            self._text.append(data)

    def finish(self) -> list[Form]:
        self.close()
        for form in self.forms:
            for control in form.inputs:
                if not control.label and control.id in self._labels:
                    control.label = self._labels[control.id]
        return self.forms


def parse_forms(html: str) -> list[Form]:
    """Every <form> of an HTML page, in document order."""
    parser = _FormParser()
    parser.feed(html)
    return parser.finish()


def page_error(html: str) -> str:
    """A short text of an error page (its <title>, first heading and error line)."""
    title = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
    heading = re.search(r"<h1[^>]*>(.*?)</h1>", html, re.IGNORECASE | re.DOTALL)
    error = re.search(r"<(?:p|div|span)[^>]*class=\"[^\"]*\berror\b[^\"]*\"[^>]*>(.*?)</",
                      html, re.IGNORECASE | re.DOTALL)
    parts = [" ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split())
             for m in (title, heading, error) if m]
    return " - ".join(dict.fromkeys(p for p in parts if p))[:200]
