"""Reading the byte-exact fixture files under ``firmware-fixtures/``.

A fixture file is JSON::

    {
      "description": "what this file covers",
      "source": "which specification sections the bytes were built from (or which capture)",
      "cases": [
        {"name": "...", "message": "gls-measurement", "hex": "1b 01 00 ...",
         "expected": {...}},                       # decoded value, as `decode` prints it
        {"name": "...", "message": "gls-measurement", "hex": "...",
         "error": "CrcMismatch"}                   # the ProtocolError subclass expected
      ]
    }

Cases are in order, so a file can be a transcript of a whole session; a case may also carry
``"direction"`` (e.g. ``"agent->manager"``) and ``"note"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError


class FixtureError(BridgeError):
    """A fixture file that does not follow the format above."""


@dataclass(frozen=True, slots=True)
class FixtureCase:
    name: str
    message: str
    frame: bytes
    expected: Any
    error: str | None
    direction: str | None


@dataclass(frozen=True, slots=True)
class FixtureFile:
    path: Path
    description: str
    cases: tuple[FixtureCase, ...]


def load_fixture_file(path: Path) -> FixtureFile:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FixtureError(f"{path}: cannot read fixture: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise FixtureError(f"{path}: a fixture is an object with a 'cases' list")
    cases = []
    for i, raw in enumerate(doc["cases"]):
        where = f"{path}: case {i}"
        if not isinstance(raw, dict) or "message" not in raw or "hex" not in raw:
            raise FixtureError(f"{where}: needs 'message' and 'hex'")
        if ("expected" in raw) == ("error" in raw):
            raise FixtureError(f"{where}: give exactly one of 'expected' and 'error'")
        try:
            frame = bytes.fromhex("".join(str(raw["hex"]).split()))
        except ValueError as exc:
            raise FixtureError(f"{where}: bad hex: {exc}") from exc
        cases.append(FixtureCase(
            name=str(raw.get("name", f"case {i}")), message=str(raw["message"]), frame=frame,
            expected=raw.get("expected"), error=raw.get("error"),
            direction=raw.get("direction")))
    return FixtureFile(path, str(doc.get("description", "")), tuple(cases))


def fixture_root() -> Path:
    """``firmware-fixtures/`` of a source checkout."""
    return Path(__file__).resolve().parents[2] / "firmware-fixtures"


def all_fixture_files(root: Path | None = None) -> list[Path]:
    return sorted((root or fixture_root()).rglob("*.json"))
