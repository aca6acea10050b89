"""Record Access Control Point: decoding by op code, request builders, server-side checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    ProtocolError,
    TrailingBytes,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.date_time import DateTime
from bridge.protocols.racp import (
    CgmFilterType,
    GlsFilterType,
    RacpFilter,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpOperator,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    RacpService,
    abort,
    check_request,
    count_all,
    count_from_sequence,
    parse_cgm_racp,
    parse_gls_racp,
    parse_racp,
    report_all,
    report_from_sequence,
    report_from_time_offset,
    report_last,
)

T1 = DateTime(2024, 5, 17, 8, 30, 0)
T2 = DateTime(2024, 5, 18, 20, 0, 0)
T1_HEX = "e807 05 11 08 1e 00"
T2_HEX = "e807 05 12 14 00 00"

Code = RacpResponseCode


# --- builders -----------------------------------------------------------------------------


@pytest.mark.parametrize(("request_value", "hex_"), [
    (report_all(), "0101"),
    (report_from_sequence(10), "0103 01 0a00"),
    (report_from_time_offset(300), "0103 01 2c01"),
    (report_last(), "0106"),
    (count_all(), "0401"),
    (count_from_sequence(0x1234), "0403 01 3412"),
    (abort(), "0300"),
])
def test_builders(request_value: RacpRequest, hex_: str) -> None:
    assert bytes(request_value) == bytes.fromhex(hex_)
    assert check_request(bytes(request_value)) is None


def test_time_offset_builder_is_valid_for_cgm() -> None:
    assert check_request(bytes(report_from_time_offset(300)), RacpService.CGM) is None


# --- decoding -----------------------------------------------------------------------------


def test_parse_picks_class_by_op_code() -> None:
    assert isinstance(parse_gls_racp(bytes.fromhex("0101")), RacpRequest)
    assert parse_gls_racp(bytes.fromhex("05002a00")) == RacpNumberOfRecords(42)
    assert parse_gls_racp(bytes.fromhex("06000106")) == RacpResponse(
        RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND)


def test_filter_type_meaning_depends_on_service() -> None:
    frame = bytes.fromhex("0103 01 3c00")
    gls = parse_gls_racp(frame)
    cgm = parse_cgm_racp(frame)
    assert isinstance(gls, RacpRequest) and isinstance(cgm, RacpRequest)
    assert gls.filter is not None and gls.filter.filter_type is GlsFilterType.SEQUENCE_NUMBER
    assert cgm.filter is not None and cgm.filter.filter_type is CgmFilterType.TIME_OFFSET
    assert gls.filter.minimum == cgm.filter.minimum == 60


def test_user_facing_time_range() -> None:
    frame = bytes.fromhex(f"0104 02 {T1_HEX} {T2_HEX}")
    value = parse_gls_racp(frame)
    assert value == RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.WITHIN_RANGE_OF,
                                RacpFilter(GlsFilterType.USER_FACING_TIME, T1, T2))
    assert bytes(value) == frame


def test_user_facing_time_is_reserved_for_cgm() -> None:
    value = parse_cgm_racp(bytes.fromhex(f"0103 02 {T1_HEX}"))
    assert isinstance(value, RacpRequest) and value.filter is not None
    assert value.filter.filter_type == 2 and type(value.filter.filter_type) is int
    assert value.filter.raw == bytes.fromhex(T1_HEX)


@pytest.mark.parametrize("op", [0, 7, 0x80, 0xFF])
def test_reserved_op_codes_raise_unknown_op_code(op: int) -> None:
    with pytest.raises(UnknownOpCode) as info:
        parse_racp(bytes([op, 0]))
    assert info.value.offset == 0


def test_request_from_bytes_refuses_responses() -> None:
    with pytest.raises(UnknownOpCode):
        RacpRequest.from_bytes(bytes.fromhex("06000101"))


def test_response_and_count_from_bytes_refuse_other_op_codes() -> None:
    with pytest.raises(UnknownOpCode):
        RacpResponse.from_bytes(bytes.fromhex("05000100"))
    with pytest.raises(UnknownOpCode):
        RacpNumberOfRecords.from_bytes(bytes.fromhex("06000101"))


def test_decode_errors() -> None:
    with pytest.raises(TruncatedFrame):
        parse_gls_racp(b"")
    with pytest.raises(TruncatedFrame):
        parse_gls_racp(bytes.fromhex("0103 01 0a"))
    with pytest.raises(TrailingBytes):
        parse_gls_racp(bytes.fromhex("0101 00"))
    with pytest.raises(ValueOutOfRange):
        parse_gls_racp(bytes.fromhex("0103 02 e807 0d 11 08 1e 00"))


def test_response_for_request_echoes_op_code() -> None:
    assert bytes(RacpResponse.for_request(bytes.fromhex("0101"), Code.SUCCESS)) == bytes.fromhex(
        "06000101")
    assert bytes(RacpResponse.for_request(bytes.fromhex("09"), Code.OP_CODE_NOT_SUPPORTED)) == (
        bytes.fromhex("06000902"))
    assert bytes(RacpResponse.for_request(b"", Code.OP_CODE_NOT_SUPPORTED)) == bytes.fromhex(
        "06000002")
    assert RacpResponse.for_request(abort(), Code.ABORT_UNSUCCESSFUL).request_op_code is (
        RacpOpCode.ABORT_OPERATION)
    assert RacpResponse(1, 1).is_success and not RacpResponse(1, 6).is_success


# --- value validation ---------------------------------------------------------------------


@pytest.mark.parametrize(("operator", "flt"), [
    (RacpOperator.GREATER_THAN_OR_EQUAL_TO, None),
    (RacpOperator.GREATER_THAN_OR_EQUAL_TO, RacpFilter(GlsFilterType.SEQUENCE_NUMBER, maximum=1)),
    (RacpOperator.LESS_THAN_OR_EQUAL_TO, RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=1)),
    (RacpOperator.WITHIN_RANGE_OF, RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=1)),
    (RacpOperator.ALL_RECORDS, RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=1)),
])
def test_request_refuses_filter_not_matching_operator(operator: RacpOperator,
                                                      flt: RacpFilter | None) -> None:
    with pytest.raises(ValueOutOfRange):
        RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, operator, flt)


def test_filter_value_types_must_match_filter_type() -> None:
    with pytest.raises(ValueOutOfRange):
        RacpFilter(GlsFilterType.USER_FACING_TIME, minimum=5)
    with pytest.raises(ValueOutOfRange):
        RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=T1)
    with pytest.raises(ValueOutOfRange):
        RacpFilter(CgmFilterType.TIME_OFFSET, minimum=T1)
    with pytest.raises(ValueOutOfRange):
        RacpFilter(3, minimum=5)  # reserved type: only raw bytes
    with pytest.raises(ValueOutOfRange):
        RacpFilter(GlsFilterType.SEQUENCE_NUMBER, raw=b"\x01")


def test_request_refuses_response_op_codes_and_stray_operand() -> None:
    with pytest.raises(ValueOutOfRange):
        RacpRequest(RacpOpCode.RESPONSE_CODE, RacpOperator.NULL)
    with pytest.raises(ValueOutOfRange):
        RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS, operand=b"\x00")


# --- check_request: what a compliant server answers ----------------------------------------

GLS_CASES = [
    # valid requests: the server carries them out
    ("0101", None), ("0105", None), ("0106", None), ("0201", None), ("0300", None),
    ("0401", None), ("0102 01 0a00", None), ("0103 01 0a00", None),
    ("0104 01 0a00 1400", None), ("0104 01 0a00 0a00", None),
    (f"0103 02 {T1_HEX}", None), (f"0104 02 {T1_HEX} {T2_HEX}", None),
    ("0403 01 0500", None), ("0204 01 0100 0500", None),
    # op codes
    ("", Code.OP_CODE_NOT_SUPPORTED), ("00 01", Code.OP_CODE_NOT_SUPPORTED),
    ("07 01", Code.OP_CODE_NOT_SUPPORTED), ("ff", Code.OP_CODE_NOT_SUPPORTED),
    ("05 00 0100", Code.OP_CODE_NOT_SUPPORTED), ("06 00 0101", Code.OP_CODE_NOT_SUPPORTED),
    # operators
    ("01", Code.INVALID_OPERATOR), ("03", Code.INVALID_OPERATOR),
    ("0100", Code.INVALID_OPERATOR), ("0400", Code.INVALID_OPERATOR),
    ("0200", Code.INVALID_OPERATOR), ("0301", Code.INVALID_OPERATOR),
    ("0306", Code.INVALID_OPERATOR), ("0107", Code.OPERATOR_NOT_SUPPORTED),
    ("01ff", Code.OPERATOR_NOT_SUPPORTED),
    # operands
    ("0101 00", Code.INVALID_OPERAND), ("0105 01 0100", Code.INVALID_OPERAND),
    ("0300 00", Code.INVALID_OPERAND), ("0103", Code.INVALID_OPERAND),
    ("0103 01", Code.INVALID_OPERAND), ("0103 01 0a", Code.INVALID_OPERAND),
    ("0103 01 0a00 00", Code.INVALID_OPERAND), ("0104 01 0a00", Code.INVALID_OPERAND),
    ("0104 01 1400 0a00", Code.INVALID_OPERAND),
    (f"0104 02 {T2_HEX} {T1_HEX}", Code.INVALID_OPERAND),
    ("0103 02 e807 0d 11 08 1e 00", Code.INVALID_OPERAND),
    ("0103 02 e807 05", Code.INVALID_OPERAND),
    ("0103 00 0a00", Code.OPERAND_NOT_SUPPORTED), ("0103 03 0a00", Code.OPERAND_NOT_SUPPORTED),
    ("0103 ff", Code.OPERAND_NOT_SUPPORTED),
]


@pytest.mark.parametrize(("hex_", "expected"), GLS_CASES)
def test_check_request_gls(hex_: str, expected: RacpResponseCode | None) -> None:
    assert check_request(bytes.fromhex(hex_), RacpService.GLS) == expected


@pytest.mark.parametrize(("hex_", "expected"), [
    ("0103 01 3c00", None),
    ("0104 01 0000 b400", None),
    ("0104 01 b400 0000", Code.INVALID_OPERAND),
    (f"0103 02 {T1_HEX}", Code.OPERAND_NOT_SUPPORTED),  # user facing time is GLS-only
    ("0101", None),
])
def test_check_request_cgm(hex_: str, expected: RacpResponseCode | None) -> None:
    assert check_request(bytes.fromhex(hex_), RacpService.CGM) == expected


def test_check_request_server_capabilities() -> None:
    seq_only = {GlsFilterType.SEQUENCE_NUMBER}
    assert check_request(bytes.fromhex(f"0103 02 {T1_HEX}"),
                         supported_filter_types=seq_only) == Code.OPERAND_NOT_SUPPORTED
    assert check_request(bytes.fromhex("0103 01 0100"), supported_filter_types=seq_only) is None
    no_delete = {RacpOpCode.REPORT_STORED_RECORDS, RacpOpCode.ABORT_OPERATION,
                 RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS}
    assert check_request(bytes.fromhex("0201"), supported_op_codes=no_delete) == (
        Code.OP_CODE_NOT_SUPPORTED)
    basic = {RacpOperator.ALL_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO}
    assert check_request(bytes.fromhex("0106"), supported_operators=basic) == (
        Code.OPERATOR_NOT_SUPPORTED)
    assert check_request(bytes.fromhex("0104 01 0100 0200"), supported_operators=basic) == (
        Code.OPERATOR_NOT_SUPPORTED)
    # An unsupported operator outranks a bad operand, Null stays INVALID_OPERATOR.
    assert check_request(bytes.fromhex("0106 00"), supported_operators=basic) == (
        Code.OPERATOR_NOT_SUPPORTED)
    assert check_request(bytes.fromhex("0100"), supported_operators=basic) == (
        Code.INVALID_OPERATOR)
    # Abort needs no operator support (it only takes Null).
    assert check_request(bytes.fromhex("0300"), supported_operators=basic) is None


@given(st.binary(max_size=20), st.sampled_from(RacpService))
def test_check_request_never_raises_and_agrees_with_decoder(data: bytes,
                                                            service: RacpService) -> None:
    code = check_request(data, service)
    if code is None:
        value = RacpRequest.from_bytes(data, service)  # a request the server accepts decodes
        assert bytes(value) == data


# --- round trips --------------------------------------------------------------------------

date_times = st.builds(
    DateTime, st.one_of(st.just(0), st.integers(1582, 9999)), st.integers(0, 12),
    st.integers(0, 31), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
u16 = st.integers(0, 0xFFFF)


@st.composite
def gls_requests(draw: st.DrawFn) -> RacpRequest:
    op = draw(st.sampled_from([RacpOpCode.REPORT_STORED_RECORDS,
                               RacpOpCode.DELETE_STORED_RECORDS, RacpOpCode.ABORT_OPERATION,
                               RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS]))
    operator = draw(st.integers(0, 0xFF))
    if operator in (2, 3, 4):
        kind = draw(st.sampled_from(["seq", "time", "raw"]))
        if kind == "raw":
            flt = RacpFilter(draw(st.integers(3, 0xFF) | st.just(0)),
                             raw=draw(st.binary(max_size=6)))
        else:
            values = date_times if kind == "time" else u16
            ft = GlsFilterType.USER_FACING_TIME if kind == "time" else GlsFilterType.SEQUENCE_NUMBER
            lo = draw(values) if operator != 2 else None
            hi = draw(values) if operator != 3 else None
            flt = RacpFilter(ft, lo, hi)
        return RacpRequest(op, operator, flt)
    operand = draw(st.binary(max_size=6)) if operator > 6 else b""
    return RacpRequest(op, operator, None, operand)


@given(gls_requests())
def test_gls_request_round_trip(value: RacpRequest) -> None:
    assert parse_gls_racp(bytes(value)) == value


@given(u16, st.integers(0, 0xFF))
def test_count_response_round_trip(count: int, operator: int) -> None:
    value = RacpNumberOfRecords(count, operator)
    assert parse_cgm_racp(bytes(value)) == value


@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFF))
def test_response_round_trip(op: int, code: int, operator: int) -> None:
    value = RacpResponse(op, code, operator)
    assert parse_gls_racp(bytes(value)) == value


@given(st.binary(max_size=20), st.sampled_from(RacpService))
def test_any_decodable_frame_reencodes_exactly(data: bytes, service: RacpService) -> None:
    try:
        value = parse_racp(data, service)
    except ProtocolError:
        return
    assert bytes(value) == data
