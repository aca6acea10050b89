"""The ``hddt-bridge`` command line: help, decode from argument, stdin and fixture files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main


def test_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "decode" in out


def test_decode_hex_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "date-time", "e8 07 05 11 08 1e 00"]) == 0
    assert json.loads(capsys.readouterr().out) == "2024-05-17T08:30:00"


def test_decode_from_stdin(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("5b:b0\n"))
    assert main(["decode", "sfloat"]) == 0
    assert json.loads(capsys.readouterr().out) == 0.00091


def test_malformed_frame_prints_specific_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "date-time", "e8070d11081e00"]) == 1
    err = capsys.readouterr().err
    assert "ValueOutOfRange" in err and "month 13" in err and "offset 0" in err


def test_unknown_message_type_and_bad_hex(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "no-such-thing", "00"]) == 2
    assert "unknown message type" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a hex string"):
        main(["decode", "sfloat", "zz"])


def test_list_names_every_codec(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.protocols.registry import all_codecs

    assert main(["decode", "--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == set(all_codecs())


def test_decode_fixture_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = tmp_path / "f.json"
    fixture.write_text(json.dumps({"cases": [
        {"message": "sfloat", "hex": "5b00", "expected": 91},
        {"message": "sfloat", "hex": "5b", "error": "TruncatedFrame"},
    ]}))
    assert main(["decode", "--fixture", str(fixture)]) == 1
    first, second = capsys.readouterr().out.splitlines()
    assert json.loads(first) == 91
    assert json.loads(second)["error"] == "TruncatedFrame"


def test_bad_fixture_file_is_a_clear_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fixture = tmp_path / "bad.json"
    fixture.write_text('{"cases": [{"message": "sfloat"}]}')
    assert main(["decode", "--fixture", str(fixture)]) == 1
    assert "needs 'message' and 'hex'" in capsys.readouterr().err
