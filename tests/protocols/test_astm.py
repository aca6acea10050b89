"""ASTM E1381 framing and E1394 records: checksums, splitting/reassembly, stream cutting,
Contour field interpretation and round trips."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import CrcMismatch, MalformedFrame, ValueOutOfRange
from bridge.protocols import astm

FIXTURES = Path(__file__).resolve().parents[2] / "firmware-fixtures" / "astm"


def _transfer() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = json.loads(
        (FIXTURES / "contour_transfer.json").read_text())["cases"]
    return cases


def _raw(case: dict[str, object]) -> bytes:
    return bytes.fromhex("".join(str(case["hex"]).split()))


def test_checksum_covers_frame_number_through_etx() -> None:
    frame = astm.AstmFrame(5, "L|1||N\r", final=True)
    assert bytes(frame) == b"\x025L|1||N\r\x0384\r\n"
    assert astm.astm_checksum(b"5L|1||N\r\x03") == 0x84
    with pytest.raises(CrcMismatch) as info:
        astm.AstmFrame.from_bytes(b"\x025L|1||N\r\x0385\r\n")
    assert (info.value.expected, info.value.received) == (0x84, 0x85)


def test_nak_is_0x15() -> None:
    assert int(astm.AstmControl.NAK) == 21
    assert astm.decode_control(b"\x15") is astm.AstmControl.NAK
    assert astm.encode_control(astm.AstmControl.NAK) == b"\x15"


def test_fixture_transfer_reassembles_into_records() -> None:
    frames = [astm.AstmFrame.from_bytes(_raw(c)) for c in _transfer()
              if c["message"] == "astm-frame" and "expected" in c][:8]
    assert [f.frame_number for f in frames] == [1, 2, 3, 4, 5, 6, 7, 0]
    texts = astm.records_from_frames(frames)
    records = astm.decode_records(texts)
    assert [type(r).__name__ for r in records] == [
        "AstmHeader", "AstmPatient", "AstmResult", "AstmResult", "AstmResult", "AstmResult",
        "AstmTerminator"]
    assert astm.encode_records(records) == texts
    # sending the same records again gives the same frames (Contour style)
    assert astm.frames_for_records(texts) == frames


def test_contour_header_accessors() -> None:
    header = astm.decode_records(astm.records_from_frames(
        [astm.AstmFrame.from_bytes(_raw(c)) for c in _transfer()
         if c["message"] == "astm-frame" and "expected" in c][:8]))[0]
    assert isinstance(header, astm.AstmHeader)
    assert header.product_code == "Bayer7390"
    assert header.software_versions == ["01.24", "01.04", "09.02.20"]
    assert header.serial_number == "7390-5512034"
    settings = header.meter_settings()
    assert settings["U"] == "0" and settings["V"] == "20600"
    assert header.reserved == "4"
    assert header.device_time == dt.datetime(2019, 9, 23, 10, 47)
    assert astm.AstmHeader().device_time is None
    assert astm.AstmHeader().sender_components() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [(r, (g, h, lo, c, m)) for r, g, h, lo, c, m in [
     ("R|1|^^^Glucose|102|mg/dL^P||B/M0/T1||201909230712", 102.0, False, False, False,
      astm.MealMarker.BEFORE_MEAL),
     ("R|2|^^^Glucose|600|mg/dL^P||>/A/M0/T1||201909221930", 600.0, True, False, False,
      astm.MealMarker.AFTER_MEAL),
     ("R|3|^^^Glucose|128|mg/dL^P||C/M0/T1||201909221015", 128.0, False, False, True, None),
     ("R|4|^^^Glucose|20|mg/dL^P||</M0/T1||201909210322", 20.0, False, True, False, None),
     ("R|5|^^^Glucose|5.5|mmol/L^B||F||201909210322", 5.5 * 18.0156, False, False, False,
      astm.MealMarker.FASTING),
     ("R|6|^^^Insulin|4|U||||201909210322", None, False, False, False, None)]],
)
def test_result_accessors(
        text: str,
        expected: tuple[float | None, bool, bool, bool, astm.MealMarker | None]) -> None:
    mg_dl, high, low, control, meal = expected
    result = astm.decode_record(text.encode())
    assert isinstance(result, astm.AstmResult)
    assert result.glucose_mg_dl == (pytest.approx(mg_dl) if mg_dl is not None else None)
    assert (result.is_high, result.is_low, result.is_control) == (high, low, control)
    assert result.meal == meal
    assert result.test_time is not None and result.test_time.year == 2019
    assert bytes(result) == text.encode()


def test_result_reference_method_and_e1394_completion_time() -> None:
    result = astm.AstmResult.from_bytes(
        b"R|1|^^^Glucose|5.7|mmol/L^B|3.9 to 7.8|N||F||||20240102030405")
    assert result.reference_method is astm.ReferenceMethod.WHOLE_BLOOD
    assert result.unit == "mmol/L"
    assert result.analyte == "Glucose"
    assert result.test_time == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert astm.AstmResult(1, "^^^Glucose", "x", "mg/dL").reference_method is None
    with pytest.raises(ValueOutOfRange):
        _ = astm.AstmResult(1, "^^^Glucose", "x", "mg/dL").glucose_mg_dl
    with pytest.raises(ValueOutOfRange):
        astm.parse_timestamp("201902301200")


def test_terminator_reads_both_layouts() -> None:
    assert astm.AstmTerminator.from_bytes(b"L|1||N").termination is \
        astm.AstmTerminationCode.NORMAL
    assert astm.AstmTerminator.from_bytes(b"L|1|T").termination is \
        astm.AstmTerminationCode.SENDER_ABORTED
    assert astm.AstmTerminator.from_bytes(b"L|1").termination is None
    assert astm.AstmTerminator.from_bytes(b"L|1|Z").termination == "Z"


def test_absent_fields_are_not_sent_and_gaps_are_refused() -> None:
    assert bytes(astm.AstmPatient(1)) == b"P|1"
    assert bytes(astm.AstmPatient(2, "", "")) == b"P|2||"
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmPatient(1, None, "lab-id"))
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmTerminator(1, None, ("N",)))
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmResult(1, "a|b"))


def test_records_follow_the_header_delimiters() -> None:
    texts = ["H!~$%!!!Meter$1.0", "P!1", "R!1!$$$Glucose!99!mg/dL$P", "L!1!N"]
    records = astm.decode_records(texts)
    header, result = records[0], records[2]
    assert isinstance(header, astm.AstmHeader) and header.product_code == "Meter"
    assert header.sender_components() == ["Meter", "1.0"]
    assert isinstance(result, astm.AstmResult) and result.value == "99"
    assert astm.encode_records(records) == texts


def test_unescape() -> None:
    d = astm.DEFAULT_DELIMITERS
    assert d.unescape("a&F&b&S&c&R&d&E&e&X0D&") == "a|b^c\\d&e&X0D&"


def test_frames_for_records_splits_long_records_and_wraps_numbers() -> None:
    records = ["R|1|" + "x" * 500, "L|1|N"]
    frames = astm.frames_for_records(records, first_frame_number=6)
    assert [len(f.text) for f in frames] == [240, 240, 25, 6]
    assert [f.frame_number for f in frames] == [6, 7, 0, 1]
    assert [f.final for f in frames] == [False, False, False, True]
    assert astm.records_from_frames(frames) == records
    per_record = astm.frames_for_records(records, etx_after_each_record=True)
    assert [f.final for f in per_record] == [False, False, True, True]
    assert astm.frames_for_records([]) == []
    with pytest.raises(ValueOutOfRange):
        astm.frames_for_records(["a\rb"])
    with pytest.raises(ValueOutOfRange):
        astm.frames_for_records(["a"], max_text=241)


def test_assembler_checks_numbers_and_ignores_a_repeated_frame() -> None:
    frames = astm.frames_for_records(["H|\\^&", "P|1", "L|1|N"])
    assembler = astm.AstmRecordAssembler()
    assert assembler.add(frames[0]) == ["H|\\^&"]
    assert assembler.add(frames[0]) == []  # retransmitted after a lost ACK
    with pytest.raises(MalformedFrame):
        assembler.add(frames[2])  # frame 3 where 2 is due
    assert assembler.add(frames[1]) == ["P|1"]
    assert not assembler.message_complete
    assert assembler.add(frames[2]) == ["L|1|N"]
    assert assembler.message_complete
    assembler.restart()
    assert assembler.expected_frame_number == 1
    with pytest.raises(MalformedFrame):  # ETX in the middle of a record
        astm.AstmRecordAssembler().add(astm.AstmFrame(1, "P|1", final=True))
    with pytest.raises(MalformedFrame):
        astm.records_from_frames([astm.AstmFrame(1, "P|1\r", final=False)])
    assert astm.records_from_frames([]) == []


def test_split_stream_cuts_controls_and_frames() -> None:
    f1 = bytes(astm.AstmFrame(1, "P|1\r", final=False))
    f2 = bytes(astm.AstmFrame(2, "L|1|N\r"))
    data = b"\x05noise" + f1 + b"\x02broken" + f2 + b"\x04" + f1[:5]
    split = astm.split_stream(data)
    assert split.items == [b"\x05", f1, f2, b"\x04"]
    assert split.skipped == b"noise\x02broken"
    assert split.rest == f1[:5]
    abandoned = astm.split_stream(b"\x021H|\\^&\x04\x05" + f1)
    assert abandoned.items == [b"\x04", b"\x05", f1]
    assert abandoned.skipped == b"\x021H|\\^&"
    long_garbage = b"\x02" + b"x" * 2000
    assert astm.split_stream(long_garbage).rest == b""


def test_frame_encode_validation() -> None:
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmFrame(8, "P|1\r"))
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmFrame(1, "P|1\n"))
    with pytest.raises(ValueOutOfRange):
        bytes(astm.AstmFrame(1, "€"))
    long_frame = astm.AstmFrame(1, "x" * 300)  # longer than E1381 allows, still round-trips
    assert astm.AstmFrame.from_bytes(bytes(long_frame)) == long_frame


# --- property tests --------------------------------------------------------------------------

_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "|\\^&")
_field = st.text(st.sampled_from(_SAFE + "^\\&"), max_size=12)
_frame_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=0xFF,
                  exclude_characters=[chr(c) for c in astm.RESTRICTED]), max_size=260)


@given(fn=st.integers(0, 7), text=_frame_text, final=st.booleans())
def test_frame_round_trip(fn: int, text: str, final: bool) -> None:
    frame = astm.AstmFrame(fn, text, final)
    assert astm.AstmFrame.from_bytes(bytes(frame)) == frame


@given(records=st.lists(st.text(st.sampled_from(_SAFE), min_size=1, max_size=600),
                        min_size=1, max_size=5),
       first=st.integers(0, 7))
def test_split_and_reassemble(records: list[str], first: int) -> None:
    frames = astm.frames_for_records(records, first_frame_number=first)
    assert all(len(f.text) <= astm.MAX_TEXT for f in frames)
    wire = b"".join(bytes(f) for f in frames)
    split = astm.split_stream(wire)
    assert split.rest == b"" and split.skipped == b""
    decoded = [astm.AstmFrame.from_bytes(item) for item in split.items]
    assert astm.records_from_frames(decoded) == records


def _optional_fields(n: int) -> st.SearchStrategy[list[str | None]]:
    return st.integers(0, n).flatmap(
        lambda k: st.lists(_field, min_size=k, max_size=k).map(
            lambda present: [*present, *([None] * (n - k))]))


@given(named=_optional_fields(12), extra=st.lists(_field, max_size=3))
def test_header_round_trip(named: list[str | None], extra: list[str]) -> None:
    header = astm.AstmHeader(astm.DEFAULT_DELIMITERS, *named,
                             extra=tuple(extra) if named[-1] is not None else ())
    assert astm.decode_record(bytes(header)) == header


@given(kind=st.sampled_from([astm.AstmPatient, astm.AstmResult, astm.AstmTerminator]),
       sequence=st.integers(0, 999_999_999), data=st.data())
def test_record_round_trip(kind: type[astm.AstmPatient | astm.AstmResult |
                                     astm.AstmTerminator],
                           sequence: int, data: st.DataObject) -> None:
    named = data.draw(_optional_fields(len(kind.NAMED)))
    extra = tuple(data.draw(st.lists(_field, max_size=3))) if named[-1] is not None else ()
    record = kind(sequence, *named, extra=extra)  # type: ignore[arg-type]
    raw = bytes(record)
    assert astm.decode_record(raw) == record
    assert astm.encode_record(record) == raw
