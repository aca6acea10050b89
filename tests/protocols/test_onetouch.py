"""OneTouch Ultra 2 (ASCII) and Ultra Easy/Mini (binary frames): checksums, link sequencing,
stream splitting, typed replies and round trips."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import CrcMismatch, MalformedFrame, TruncatedFrame, ValueOutOfRange
from bridge.protocols import onetouch_ultra2 as u2
from bridge.protocols import onetouch_ultra_easy as ue
from bridge.protocols.crc import crc16_ccitt_false

FIXTURES = Path(__file__).resolve().parents[2] / "firmware-fixtures" / "onetouch"

# --- Ultra 2 ---------------------------------------------------------------------------------


def test_ultra2_checksum_sums_the_text_before_the_space() -> None:
    # A published dump header line and its checksum; the separating space is not summed.
    assert u2.ultra2_checksum(b'P 150,"NNS210DPN","MG/DL "') == 0x05BD
    assert bytes(u2.Ultra2Reply("Z")) == b"Z 005A\r\n"


def test_ultra2_reply_checksum_mismatch_reports_both_values() -> None:
    with pytest.raises(CrcMismatch) as info:
        u2.Ultra2Reply.from_bytes(b"Z 005B\r\n")
    assert (info.value.expected, info.value.received) == (0x5A, 0x5B)
    assert info.value.offset == 2


@pytest.mark.parametrize(
    ("wire", "code", "writes"),
    [(b"\x11\rDM?\r", u2.Ultra2CommandCode.READ_SOFTWARE_VERSION, False),
     (b"\x11\rDM@\r", u2.Ultra2CommandCode.READ_SERIAL_NUMBER, False),
     (b"\x11\rDMF\r", u2.Ultra2CommandCode.READ_DATE_TIME, False),
     (b"\x11\rDMSU?\r", u2.Ultra2CommandCode.READ_GLUCOSE_UNITS, False),
     (b"\x11\rDMP\r", u2.Ultra2CommandCode.DUMP_RECORDS, False),
     (b"\x11\rDMZ\r", u2.Ultra2CommandCode.ERASE_MEMORY, True)],
)
def test_ultra2_commands(wire: bytes, code: u2.Ultra2CommandCode, writes: bool) -> None:
    command = u2.Ultra2Command.from_bytes(wire)
    assert command.code is code
    assert command.writes_to_meter is writes
    assert bytes(command) == wire


def test_ultra2_set_time_command_writes_and_formats_the_date() -> None:
    command = u2.Ultra2Command(u2.Ultra2CommandCode.SET_DATE_TIME, dt.datetime(2009, 1, 2, 3, 4, 5))
    assert bytes(command) == b"\x11\rDMT01/02/09 03:04:05\r"
    assert command.writes_to_meter
    with pytest.raises(ValueOutOfRange):
        bytes(u2.Ultra2Command(u2.Ultra2CommandCode.SET_DATE_TIME))
    with pytest.raises(ValueOutOfRange):
        bytes(u2.Ultra2Command(u2.Ultra2CommandCode.SET_DATE_TIME, dt.datetime(1999, 1, 1)))
    with pytest.raises(ValueOutOfRange):
        bytes(u2.Ultra2Command(u2.Ultra2CommandCode.DUMP_RECORDS, dt.datetime(2009, 1, 1)))


def test_ultra2_typed_replies_both_ways() -> None:
    when = dt.datetime(2008, 3, 11, 14, 5, 32)
    assert u2.Ultra2Reply.for_device_time(when).text == 'F "TUE","03/11/08","14:05:32   "'
    assert u2.Ultra2Reply.for_device_time(when, set_reply=True).text.startswith('T "TUE"')
    cases = [
        (u2.Ultra2Reply.for_software_version("P02.00.01 21/05/08"), "software_version",
         "P02.00.01 21/05/08"),
        (u2.Ultra2Reply.for_serial_number("QCK41ZN7Y"), "serial_number", "QCK41ZN7Y"),
        (u2.Ultra2Reply.for_device_time(when), "device_time", when),
        (u2.Ultra2Reply.for_glucose_unit(u2.Ultra2Unit.MMOL_L), "glucose_unit",
         u2.Ultra2Unit.MMOL_L),
    ]
    for reply, method, value in cases:
        decoded = u2.Ultra2Reply.from_bytes(bytes(reply))
        assert getattr(decoded, method)() == value
    assert u2.Ultra2Reply.erase_confirmation().is_erase_confirmation
    with pytest.raises(MalformedFrame):
        u2.Ultra2Reply("Z").serial_number()
    with pytest.raises(MalformedFrame):
        u2.Ultra2Reply('SU?,"MG/L  "').glucose_unit()
    with pytest.raises(MalformedFrame):
        u2.Ultra2Reply("@ x").device_time()


def _line(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" %04X\r\n" % (sum(raw) & 0xFFFF)


def test_ultra2_parse_dump_from_a_byte_blob_and_from_lines() -> None:
    header = _line('P 002,"QCK41ZN7Y","MG/DL "')
    rec1 = _line('P "TUE","03/11/08","07:12:40   ","  104 ","B","00", 00')
    rec2 = _line('P "SUN","03/09/08","23:48:13   ","  HIGH","N","07", 00')
    dump = u2.parse_dump(header + rec1 + rec2)
    assert dump.header.count == 2
    assert [r.glucose_mg_dl for r in dump.records] == [104, None]
    assert dump.records[1].kind is u2.Ultra2ResultKind.HIGH
    assert u2.parse_dump([header, rec1, rec2]) == dump
    with pytest.raises(MalformedFrame):
        u2.parse_dump(header + rec1)  # one record missing
    with pytest.raises(MalformedFrame):
        u2.parse_dump(header + rec1 + rec2[:-1])  # unterminated last line
    with pytest.raises(MalformedFrame):
        u2.parse_dump(b"")


def test_ultra2_split_lines_keeps_partial_tail() -> None:
    lines, rest = u2.split_lines(b"Z 005A\r\nZ 005A\r\nZ 0")
    assert lines == [b"Z 005A\r\n"] * 2
    assert rest == b"Z 0"


def test_ultra2_split_commands_resyncs() -> None:
    split = u2.split_commands(b"noise\x11\r\x11\rDM?\r\x11\rDMP\r\x11")
    assert split.commands == [b"\x11\rDM?\r", b"\x11\rDMP\r"]
    assert split.skipped == b"noise\x11\r"
    assert split.rest == b"\x11"
    assert u2.split_commands(b"\x11\rDM").rest == b"\x11\rDM"
    assert [u2.Ultra2Command.from_bytes(c).code for c in split.commands] == [
        u2.Ultra2CommandCode.READ_SOFTWARE_VERSION, u2.Ultra2CommandCode.DUMP_RECORDS]


def test_ultra2_record_refuses_inconsistent_values() -> None:
    base = u2.Ultra2Record("TUE", dt.datetime(2008, 3, 11, 7, 12, 40), False,
                           u2.Ultra2ResultKind.READING, 104, False, u2.Ultra2Meal.NONE,
                           u2.Ultra2Comment.NO_COMMENT)
    assert u2.Ultra2Record.from_bytes(bytes(base)) == base
    for bad in (
        {"glucose_mg_dl": None},
        {"glucose_mg_dl": 1000},
        {"kind": u2.Ultra2ResultKind.LOW},
        {"comment": 100},
        {"trailer": "0"},
        {"day_of_week": "TUES"},
    ):
        with pytest.raises(ValueOutOfRange):
            bytes(dataclasses.replace(base, **bad))  # type: ignore[arg-type]


_dates = st.datetimes(min_value=dt.datetime(2000, 1, 1),
                      max_value=dt.datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0))
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                     max_size=60)


@given(code=st.sampled_from(list(u2.Ultra2CommandCode)), when=_dates)
def test_ultra2_command_round_trip(code: u2.Ultra2CommandCode, when: dt.datetime) -> None:
    command = u2.Ultra2Command(code, when if code is u2.Ultra2CommandCode.SET_DATE_TIME
                               else None)
    assert u2.Ultra2Command.from_bytes(bytes(command)) == command


@given(_printable)
def test_ultra2_reply_round_trip(text: str) -> None:
    reply = u2.Ultra2Reply(text)
    assert u2.Ultra2Reply.from_bytes(bytes(reply)) == reply


@given(count=st.integers(0, 999),
       serial=st.text(st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=9,
                      max_size=9),
       unit=st.sampled_from(list(u2.Ultra2Unit)))
def test_ultra2_header_round_trip(count: int, serial: str, unit: u2.Ultra2Unit) -> None:
    header = u2.Ultra2DumpHeader(count, serial, unit)
    assert u2.Ultra2DumpHeader.from_bytes(bytes(header)) == header


@st.composite
def _records(draw: st.DrawFn) -> u2.Ultra2Record:
    kind = draw(st.sampled_from(list(u2.Ultra2ResultKind)))
    reading = kind is u2.Ultra2ResultKind.READING
    when = draw(_dates)
    comment = draw(st.integers(0, 99))
    return u2.Ultra2Record(
        day_of_week=u2.DAYS_OF_WEEK[when.weekday()],
        device_time=when,
        control_solution=draw(st.booleans()),
        kind=kind,
        glucose_mg_dl=draw(st.integers(0, 999)) if reading else None,
        questionable=draw(st.booleans()) if reading else False,
        meal=draw(st.sampled_from(list(u2.Ultra2Meal))),
        comment=(u2.Ultra2Comment(comment) if comment in u2.Ultra2Comment._value2member_map_
                 else comment),
        trailer=draw(st.sampled_from(["00", "01", "7F"])),
    )


@given(_records())
def test_ultra2_record_round_trip(record: u2.Ultra2Record) -> None:
    assert u2.Ultra2Record.from_bytes(bytes(record)) == record


# --- Ultra Easy / Mini -----------------------------------------------------------------------


def test_ultraeasy_crc_matches_lifescan_example_frames() -> None:
    serial_request = bytes.fromhex("02 12 00 05 0B 02 00 00 00 00 84 6A E8 73 00 03 9B EA")
    assert crc16_ccitt_false(serial_request[:-2]) == 0xEA9B
    frame = ue.UltraEasyRequestFrame.from_bytes(serial_request)
    assert frame.request == ue.ReadSerialNumberRequest()
    assert bytes(ue.UltraEasyFrame(ue.LinkControl.ACKNOWLEDGE | ue.LinkControl.EXPECT_RECEIVE)
                 ) == bytes.fromhex("02 06 06 03 CD 41")


def test_ultraeasy_crc_mismatch_reports_both_values() -> None:
    with pytest.raises(CrcMismatch) as info:
        ue.UltraEasyFrame.from_bytes(bytes.fromhex("02 06 06 03 CD 42"))
    assert (info.value.expected, info.value.received) == (0x41CD, 0x42CD)


def test_ultraeasy_message_errors_point_into_the_frame() -> None:
    frame = bytes(ue.UltraEasyFrame(ue.LinkControl(0), bytes.fromhex("05 33 02")))
    with pytest.raises(Exception) as info:
        ue.UltraEasyRequestFrame.from_bytes(frame)
    assert getattr(info.value, "data", None) == frame
    assert getattr(info.value, "offset", None) == 4


def test_ultraeasy_link_sequence_reproduces_the_fixture_exchange() -> None:
    """Host and meter bookkeeping give exactly the link bytes of the fixture transcript."""
    cases = json.loads((FIXTURES / "ultra_easy.json").read_text())["cases"]
    exchange = [bytes.fromhex("".join(c["hex"].split())) for c in cases[:31]]
    host, meter = ue.LinkSequence(), ue.LinkSequence()
    produced: list[bytes] = []
    produced.append(bytes(host.disconnect()))
    assert meter.receive(ue.UltraEasyFrame.from_bytes(produced[-1])) is False
    produced.append(bytes(meter.ack(disconnect=True)))
    answers = [
        (ue.ReadSoftwareVersionRequest(), ue.SoftwareVersionResponse("P03.00.02 19/02/10")),
        (ue.ReadSerialNumberRequest(), ue.SerialNumberResponse("A4F7K2QXZ")),
        (ue.ReadClockRequest(), ue.ClockResponse(dt.datetime(2011, 6, 14, 9, 31, 7))),
        (ue.ReadGlucoseUnitRequest(), ue.GlucoseUnitResponse(ue.UltraEasyUnit.MG_DL)),
        (ue.ReadRecordCountRequest(), ue.RecordCountResponse(2)),
        (ue.ReadRecordRequest(0), ue.RecordResponse(dt.datetime(2011, 6, 14, 7, 58, 40), 112)),
        (ue.ReadRecordRequest(1), ue.RecordResponse(dt.datetime(2011, 6, 13, 21, 15, 2), 187)),
    ]
    for request, response in answers:
        sent = host.data(bytes(request))
        produced.append(bytes(sent))
        assert meter.receive(sent) is True
        ack = meter.ack()
        produced.append(bytes(ack))
        assert host.receive(ack) is False
        reply = meter.data(bytes(response))
        produced.append(bytes(reply))
        assert host.receive(reply) is True
        assert ue.parse_response(reply.message, request) == response
        produced.append(bytes(host.ack()))
        assert meter.receive(ue.UltraEasyFrame.from_bytes(produced[-1])) is False
    produced.append(bytes(host.disconnect()))
    assert produced == exchange


def test_ultraeasy_link_sequence_ignores_a_retransmission() -> None:
    host, meter = ue.LinkSequence(), ue.LinkSequence()
    frame = host.data(bytes(ue.ReadSoftwareVersionRequest()))
    assert meter.receive(frame) is True
    assert meter.receive(frame) is False  # our ACK was lost: ACK again, do not re-run
    assert meter.receive(host.data(b"\x05\x1a")) is True


def test_ultraeasy_split_frames_resyncs_and_keeps_partial_tail() -> None:
    ack = bytes.fromhex("02 06 06 03 CD 41")
    corrupt = bytes.fromhex("02 06 06 03 CD 40")
    data = b"\x00\xff" + ack + corrupt + ack + ack[:4]
    split = ue.split_frames(data)
    assert len(split.frames) == 2
    assert split.rest == ack[:4]
    assert split.skipped.startswith(b"\x00\xff\x02")
    assert len(split.skipped) == 2 + len(corrupt)
    assert ue.split_frames(b"\x02").rest == b"\x02"
    assert ue.split_frames(b"\x02\x01\x02\x06").rest == b"\x02\x06"


def test_ultraeasy_write_flags_and_reserved_record_id() -> None:
    assert ue.WriteClockRequest.WRITES_TO_METER
    assert ue.EraseMemoryRequest.WRITES_TO_METER
    assert not ue.ReadRecordRequest.WRITES_TO_METER
    frame = ue.UltraEasyRequestFrame(ue.LinkControl(0), ue.EraseMemoryRequest())
    assert ue.UltraEasyRequestFrame.from_bytes(bytes(frame)).writes_to_meter
    with pytest.raises(ValueOutOfRange):
        bytes(ue.ReadRecordRequest(ue.RECORD_COUNT_ID))
    assert ue.decode_request(bytes.fromhex("05 1F F5 01")) == ue.ReadRecordCountRequest()
    with pytest.raises(MalformedFrame):
        ue.ReadRecordRequest.from_bytes(bytes.fromhex("05 1F F5 01"))
    with pytest.raises(MalformedFrame):
        ue.ReadRecordCountRequest.from_bytes(bytes.fromhex("05 1F 00 00"))


def test_ultraeasy_response_validation() -> None:
    with pytest.raises(MalformedFrame):  # error status where success was expected
        ue.RecordResponse.from_bytes(bytes.fromhex("05 09 00 00 00 00 00 00 00 00"))
    with pytest.raises(TruncatedFrame):
        ue.ClockResponse.from_bytes(bytes.fromhex("05 06 00 00"))
    generic = ue.UltraEasyResponse.from_bytes(bytes.fromhex("05 09"))
    assert not generic.success
    unknown_unit = ue.GlucoseUnitResponse.from_bytes(bytes.fromhex("05 06 07 00 00 00"))
    assert unknown_unit.unit == 7 and not isinstance(unknown_unit.unit, ue.UltraEasyUnit)
    with pytest.raises(ValueOutOfRange):
        bytes(ue.ClockResponse(dt.datetime(1969, 12, 31)))
    with pytest.raises(ValueOutOfRange):
        bytes(ue.ClockResponse(dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    with pytest.raises(ValueOutOfRange):
        bytes(ue.UltraEasyFrame(ue.LinkControl(0), bytes(250)))


_u32_times = st.integers(0, 0xFFFFFFFF).map(lambda s: ue.EPOCH + dt.timedelta(seconds=s))
_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(link=st.integers(0, 255), message=st.binary(max_size=ue.MAX_MESSAGE))
def test_ultraeasy_frame_round_trip(link: int, message: bytes) -> None:
    frame = ue.UltraEasyFrame(ue.LinkControl(link), message)
    raw = bytes(frame)
    assert raw[1] == len(raw) == len(message) + 6
    assert ue.UltraEasyFrame.from_bytes(raw) == frame


_requests = st.one_of(
    st.just(ue.ReadSoftwareVersionRequest()),
    st.binary(min_size=9, max_size=9).map(ue.ReadSerialNumberRequest),
    st.integers(0, 0xFFFFFFFF).map(ue.ReadClockRequest),
    _u32_times.map(ue.WriteClockRequest),
    st.binary(min_size=5, max_size=5).map(ue.ReadGlucoseUnitRequest),
    st.just(ue.ReadRecordCountRequest()),
    st.integers(0, 0xFFFF).filter(lambda i: i != ue.RECORD_COUNT_ID).map(ue.ReadRecordRequest),
    st.just(ue.EraseMemoryRequest()),
)


@given(link=st.integers(0, 255), request=_requests)
def test_ultraeasy_request_round_trip(link: int, request: ue.UltraEasyRequest) -> None:
    frame = ue.UltraEasyRequestFrame(ue.LinkControl(link), request)
    assert ue.UltraEasyRequestFrame.from_bytes(bytes(frame)) == frame
    assert ue.decode_request(bytes(request)) == request


_responses = st.one_of(
    st.builds(ue.UltraEasyResponse, st.integers(0, 255), st.binary(max_size=20)),
    st.just(ue.SuccessResponse()),
    _ascii.map(ue.SoftwareVersionResponse),
    _ascii.map(ue.SerialNumberResponse),
    _u32_times.map(ue.ClockResponse),
    st.builds(ue.GlucoseUnitResponse,
              st.integers(0, 255).map(lambda u: ue.UltraEasyUnit(u) if u < 2 else u),
              st.binary(min_size=3, max_size=3)),
    st.builds(ue.RecordResponse, _u32_times, st.integers(0, 0xFFFFFFFF)),
    st.integers(0, 0xFFFF).map(ue.RecordCountResponse),
)


@given(link=st.integers(0, 255), response=_responses)
def test_ultraeasy_response_round_trip(link: int,
                                       response: ue.UltraEasyResponseMessage) -> None:
    frame = ue.UltraEasyResponseFrame(ue.LinkControl(link), response)
    assert ue.UltraEasyResponseFrame.from_bytes(bytes(frame), type(response)) == frame
