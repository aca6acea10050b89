"""Insulin Delivery Service codecs: E2E trailer, IDD Features CRC, control points, the
read-only classification of Command CP op codes, the IDD RACP server check, history events,
and hypothesis round trips of every value class (plain and E2E-protected)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    CrcMismatch,
    TrailingBytes,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols import ids
from bridge.protocols import ids_history as hist
from bridge.protocols.crc import crc16_mcrf4xx
from bridge.protocols.date_time import DateTime
from bridge.protocols.ids import (
    AnnunciationFlags,
    BolusFlags,
    CommandOpCode,
    IddRacpFilterType,
    IddRacpOpCode,
    IddRacpOperator,
    IddRacpResponseCode,
    StatusReaderOpCode,
)
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.registry import all_codecs

# --------------------------------------------------------------------------------------------
# E2E trailer
# --------------------------------------------------------------------------------------------


def test_e2e_trailer_is_counter_then_crc_over_payload_and_counter() -> None:
    value = ids.IddStatus(ids.TherapyControlState.RUN, ids.OperationalState.READY,
                          SFloat(522, -1), ids.IddStatusFlags.RESERVOIR_ATTACHED, e2e_counter=0)
    frame = bytes(value)
    assert frame.hex(" ") == "55 96 0a f2 01 00 e1 a5"
    assert crc16_mcrf4xx(frame[:-2]) == int.from_bytes(frame[-2:], "little")
    assert ids.IddStatus.from_bytes(frame, e2e=True) == value


def test_bad_e2e_crc_names_offset_and_both_values() -> None:
    frame = bytes.fromhex("55960af20100e1a6")
    with pytest.raises(CrcMismatch) as info:
        ids.IddStatus.from_bytes(frame, e2e=True)
    assert info.value.offset == 6
    assert info.value.expected == 0xA5E1
    assert info.value.received == 0xA6E1


def test_e2e_reader_stops_before_the_trailer() -> None:
    # A field running into the counter is a truncation, not a misread counter.
    payload = bytes.fromhex("5596")
    frame = ids.seal_e2e(payload, 3)
    with pytest.raises(TruncatedFrame) as info:
        ids.IddStatus.from_bytes(frame, e2e=True)
    assert info.value.offset == 2


def test_e2e_counter_must_fit_a_byte() -> None:
    with pytest.raises(ValueOutOfRange):
        bytes(ids.IddStatusChanged(ids.IddStatusChangedFlags(1), e2e_counter=256))


def test_every_e2e_capable_message_type_is_registered_twice() -> None:
    names = {n for n in all_codecs() if n.startswith("ids-")}
    plain = {n for n in names if not n.endswith("-e2e")}
    assert plain - {"ids-features"} == {n.removesuffix("-e2e") for n in names
                                        if n.endswith("-e2e")}
    assert {"ids-status-changed", "ids-status", "ids-annunciation-status", "ids-features",
            "ids-status-reader-cp", "ids-command-cp", "ids-command-data", "ids-racp",
            "ids-history"} == plain


# --------------------------------------------------------------------------------------------
# IDD Features
# --------------------------------------------------------------------------------------------


def test_features_crc_covers_everything_after_it() -> None:
    body = bytes.fromhex("01 6400 ef8000")
    crc = crc16_mcrf4xx(body)
    frame = crc.to_bytes(2, "little") + body
    value = ids.IddFeatures.from_bytes(frame)
    assert value.e2e_supported and value.e2e_crc == crc and value.e2e_counter == 1
    assert value.insulin_concentration_iu_per_ml == 100.0
    assert bytes(value) == frame


def test_features_without_e2e_keep_whatever_crc_was_sent() -> None:
    frame = bytes.fromhex("3412 00 6400 020000")
    value = ids.IddFeatures.from_bytes(frame)
    assert not value.e2e_supported and value.e2e_crc == 0x1234
    assert bytes(value) == frame


def test_features_create_computes_the_crc() -> None:
    flags = ids.IddFeatureFlags.E2E_PROTECTION_SUPPORTED | ids.IddFeatureFlags.BASAL_RATE_SUPPORTED
    value = ids.IddFeatures.create(SFloat(100, 0), flags, e2e_counter=7)
    assert ids.IddFeatures.from_bytes(bytes(value)) == value
    plain = ids.IddFeatures.create(SFloat(100, 0), ids.IddFeatureFlags(0))
    assert bytes(plain)[:2] == b"\xff\xff"


def test_features_extension_needs_its_flag() -> None:
    with pytest.raises(ValueOutOfRange):
        ids.IddFeatures(SFloat(100, 0), ids.IddFeatureFlags(0), extension=b"\x01")


# --------------------------------------------------------------------------------------------
# Annunciation status and flag consistency
# --------------------------------------------------------------------------------------------


def test_annunciation_aux_info_in_order_of_presence() -> None:
    value = ids.IddAnnunciationStatus.from_bytes(bytes.fromhex("29 2d00 6600 0f e803 0700"))
    assert value.aux_info_3 == 1000 and value.aux_info_5 == 7
    assert value.aux_info == (1000, 7)


@pytest.mark.parametrize("kwargs", [
    {"flags": AnnunciationFlags.ANNUNCIATION_PRESENT},  # fields missing
    {"flags": AnnunciationFlags(0), "annunciation_instance_id": 1, "annunciation_type": 0x0F,
     "annunciation_status": 0x33},  # fields without the flag
    {"flags": AnnunciationFlags(0), "aux_info_2": 5},  # aux without its bit
    {"flags": AnnunciationFlags.AUX_INFO_1_PRESENT},  # bit without aux
])
def test_annunciation_refuses_inconsistent_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueOutOfRange):
        ids.IddAnnunciationStatus(**kwargs)


def test_set_bolus_refuses_flag_field_mismatch() -> None:
    with pytest.raises(ValueOutOfRange):
        ids.SetBolus(BolusFlags.BOLUS_DELAY_TIME_PRESENT, ids.BolusType.FAST, SFloat(5, 0),
                     SFloat(0, 0), 0)
    with pytest.raises(ValueOutOfRange):
        ids.SetBolus(BolusFlags(0), ids.BolusType.FAST, SFloat(5, 0), SFloat(0, 0), 0,
                     template_number=1)


def test_unknown_enum_values_stay_ints_and_known_ones_become_members() -> None:
    value = ids.IddStatus(0x55, 0x01, SFloat(0, 0), ids.IddStatusFlags(0))
    assert value.therapy_control_state is ids.TherapyControlState.RUN
    assert type(value.operational_state) is int and value.operational_state == 1


# --------------------------------------------------------------------------------------------
# Control points
# --------------------------------------------------------------------------------------------


def test_every_status_reader_op_code_has_a_class() -> None:
    for op in StatusReaderOpCode:
        # An operand missing is fine here: the op code itself was recognised.
        with contextlib.suppress(TruncatedFrame, TrailingBytes):
            ids.parse_status_reader_cp(op.to_bytes(2, "little"))


def test_every_command_op_code_has_a_class_and_reserved_ones_are_refused() -> None:
    for op in CommandOpCode:
        with contextlib.suppress(TruncatedFrame):
            ids.parse_command_cp(op.to_bytes(2, "little"))
    for reserved in (0x11A4, 0x11C3, 0x0000, 0xFFFF):
        with pytest.raises(UnknownOpCode) as info:
            ids.parse_command_cp(reserved.to_bytes(2, "little"))
        assert info.value.offset == 0


def test_cancel_bolus_and_get_available_boluses_codes() -> None:
    # The two public IDS implementations agree on these; see CommandOpCode's docstring.
    assert CommandOpCode(0x1178) is CommandOpCode.CANCEL_BOLUS
    assert CommandOpCode(0x1187) is CommandOpCode.CANCEL_BOLUS_RESPONSE
    assert CommandOpCode(0x1188) is CommandOpCode.GET_AVAILABLE_BOLUSES
    assert CommandOpCode(0x11B4) is CommandOpCode.GET_AVAILABLE_BOLUSES_RESPONSE


#: The "never write" list of the project's protocol reference (IDS part).
NEVER_WRITE = {0x0F5A, 0x0F66, 0x0F69, 0x0F99, 0x0FCC, 0x12DE, 0x141B, 0x144E, 0x0FFF, 0x1111,
               0x112D, 0x114B, 0x1178, 0x11DD, 0x121D, 0x122E, 0x127B, 0x1284, 0x128B, 0x12B7,
               0x148D}


def test_acting_command_op_codes_cover_the_never_write_list() -> None:
    assert {int(op) for op in ids.COMMAND_CP_ACTING_OP_CODES} == NEVER_WRITE


def test_command_roles_partition_every_op_code() -> None:
    acting = ids.COMMAND_CP_ACTING_OP_CODES
    reading = ids.COMMAND_CP_READING_OP_CODES
    responding = ids.COMMAND_CP_RESPONSE_OP_CODES
    assert not acting & reading and not acting & responding and not reading & responding
    assert acting | reading | responding == set(CommandOpCode)
    assert set(ids.COMMAND_ROLES) == set(CommandOpCode)
    assert ids.COMMAND_ROLES[CommandOpCode.SET_BOLUS] is ids.CommandRole.ACTS
    assert ids.COMMAND_ROLES[CommandOpCode.GET_MAX_BOLUS_AMOUNT] is ids.CommandRole.READS
    assert ids.COMMAND_ROLES[CommandOpCode.SET_BOLUS_RESPONSE] is ids.CommandRole.RESPONDS


def test_other_acting_op_codes() -> None:
    assert set(ids.STATUS_READER_ACTING_OP_CODES) == {StatusReaderOpCode.RESET_STATUS}
    assert set(ids.IDD_RACP_ACTING_OP_CODES) == {IddRacpOpCode.DELETE_STORED_RECORDS}


def test_describe_command_op_code() -> None:
    assert ids.describe_command_op_code(0x114B).startswith("SET_BOLUS (0x114B): sets")
    assert ids.describe_command_op_code(0x11A4) == "reserved Command CP op code 0x11A4"


def test_generic_classes_refuse_op_codes_of_other_groups() -> None:
    with pytest.raises(ValueOutOfRange):
        ids.AmountCommand(CommandOpCode.SET_BOLUS, SFloat(1, 0))
    with pytest.raises(ValueOutOfRange):
        ids.CommandRaw(CommandOpCode.SET_BOLUS, b"")
    with pytest.raises(ValueOutOfRange):
        ids.StatusReaderRequest(StatusReaderOpCode.RESET_STATUS)


def test_command_data_only_carries_response_op_codes() -> None:
    assert CommandOpCode.SET_BOLUS not in ids.CommandData.OP_CODES
    assert CommandOpCode.READ_BASAL_RATE_PROFILE_TEMPLATE_RESPONSE in ids.CommandData.OP_CODES


def test_canonical_unit_properties() -> None:
    bolus = ids.parse_command_cp(bytes.fromhex("4b11 1f 55 0200 23f0 5a00 0f00 04 3c"))
    assert isinstance(bolus, ids.SetBolus)
    assert (bolus.fast_amount_iu, bolus.extended_amount_iu) == (2.0, 3.5)
    delivered = ids.parse_status_reader_cp(bytes.fromhex("cf03 393000ff 495601fe"))
    assert isinstance(delivered, ids.DeliveredInsulinResponse)
    assert (delivered.bolus_iu, delivered.basal_iu) == (1234.5, 876.25)


# --------------------------------------------------------------------------------------------
# IDD RACP: builders and the server-side check
# --------------------------------------------------------------------------------------------


def test_racp_builders() -> None:
    assert bytes(ids.racp_report_all()).hex(" ") == "33 33"
    assert bytes(ids.racp_report_from_sequence(100)).hex(" ") == "33 55 0f 64 00 00 00"
    assert bytes(ids.racp_count_all()).hex(" ") == "5a 33"
    assert bytes(ids.racp_count_from_sequence(1)).hex(" ") == "5a 55 0f 01 00 00 00"
    assert bytes(ids.racp_abort()).hex(" ") == "55 0f"
    framed = bytes(ids.racp_count_all(e2e_counter=3))
    assert framed.hex(" ") == "5a 33 03 fb 67"
    assert ids.parse_idd_racp(framed, e2e=True) == ids.racp_count_all(e2e_counter=3)


def test_racp_response_for_request() -> None:
    response = ids.IddRacpResponse.for_request(ids.racp_report_all(),
                                               IddRacpResponseCode.NO_RECORDS_FOUND)
    assert bytes(response).hex(" ") == "0f 0f 33 5a"
    assert not response.is_success
    assert ids.IddRacpResponse.for_request(b"\x42", IddRacpResponseCode.OP_CODE_NOT_SUPPORTED
                                           ).request_op_code == 0x42


@pytest.mark.parametrize(("hex_frame", "expected"), [
    ("3333", None),
    ("33550f64000000", None),
    ("333c33e8030000", None),
    ("335a3c0a00000014000000", None),
    ("3366", None),
    ("3369", None),
    ("3c33", None),
    ("550f", None),
    ("5a33", None),
    ("", IddRacpResponseCode.OP_CODE_NOT_SUPPORTED),
    ("0133", IddRacpResponseCode.OP_CODE_NOT_SUPPORTED),
    ("0f0f33f0", IddRacpResponseCode.OP_CODE_NOT_SUPPORTED),  # a response is not a request
    ("660f01000000", IddRacpResponseCode.OP_CODE_NOT_SUPPORTED),
    ("33", IddRacpResponseCode.INVALID_OPERATOR),
    ("330f", IddRacpResponseCode.INVALID_OPERATOR),  # report needs an operator
    ("5533", IddRacpResponseCode.INVALID_OPERATOR),  # abort takes Null only
    ("3377", IddRacpResponseCode.OPERATOR_NOT_SUPPORTED),
    ("333300", IddRacpResponseCode.INVALID_OPERAND),
    ("550f00", IddRacpResponseCode.INVALID_OPERAND),
    ("3355", IddRacpResponseCode.INVALID_OPERAND),
    ("3355990a000000", IddRacpResponseCode.OPERAND_NOT_SUPPORTED),
    ("33550f0a00", IddRacpResponseCode.INVALID_OPERAND),
    ("33550f0a00000000", IddRacpResponseCode.INVALID_OPERAND),
    ("335a0f140000000a000000", IddRacpResponseCode.INVALID_OPERAND),  # min > max
])
def test_racp_server_check(hex_frame: str, expected: IddRacpResponseCode | None) -> None:
    assert ids.check_idd_racp_request(bytes.fromhex(hex_frame)) == expected


def test_racp_server_check_respects_capabilities() -> None:
    delete = bytes.fromhex("3c33")
    assert (ids.check_idd_racp_request(delete, supported_op_codes={0x33, 0x55, 0x5A})
            == IddRacpResponseCode.OP_CODE_NOT_SUPPORTED)
    last = bytes.fromhex("3369")
    assert (ids.check_idd_racp_request(last, supported_operators={0x33, 0x55})
            == IddRacpResponseCode.OPERATOR_NOT_SUPPORTED)
    by_reference = bytes.fromhex("3355330a000000")
    assert (ids.check_idd_racp_request(by_reference,
                                       supported_filter_types={IddRacpFilterType.SEQUENCE_NUMBER})
            == IddRacpResponseCode.OPERAND_NOT_SUPPORTED)


def test_racp_server_check_with_e2e() -> None:
    good = bytes(ids.racp_report_from_sequence(5, e2e_counter=1))
    assert ids.check_idd_racp_request(good, e2e=True) is None
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(CrcMismatch):
        ids.check_idd_racp_request(bad, e2e=True)


def test_racp_request_value_checks() -> None:
    with pytest.raises(ValueOutOfRange):
        ids.IddRacpRequest(IddRacpOpCode.RESPONSE_CODE, IddRacpOperator.NULL)
    with pytest.raises(ValueOutOfRange):
        ids.IddRacpRequest(IddRacpOpCode.REPORT_STORED_RECORDS,
                           IddRacpOperator.GREATER_THAN_OR_EQUAL_TO)
    with pytest.raises(ValueOutOfRange):
        ids.IddRacpRequest(IddRacpOpCode.REPORT_STORED_RECORDS,
                           IddRacpOperator.WITHIN_RANGE_OF,
                           ids.IddRacpFilter(IddRacpFilterType.SEQUENCE_NUMBER, minimum=1))


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


#: Event types whose payload the project reference lists (all must be decoded).
REFERENCE_EVENT_TYPES = {0x000F, 0x003C, 0x0055, 0x005A, 0x0066, 0x0069, 0x0096, 0x0099, 0x00A5,
                         0x00AA, 0x00C3, 0x00FF, 0x0303, 0x030C, 0x0330, 0x0395, 0x039A, 0x03A6}


def test_every_reference_event_type_is_decoded() -> None:
    assert set(hist.EVENT_DATA_CLASSES) >= REFERENCE_EVENT_TYPES
    assert not hist.RAW_EVENT_TYPES & set(hist.EVENT_DATA_CLASSES)


def test_history_record_refuses_payload_of_another_event_type() -> None:
    with pytest.raises(ValueOutOfRange):
        hist.HistoryData(hist.HistoryEventType.PRIMING_STARTED, 1, 0,
                         hist.PrimingDone(hist.PrimingDoneFlags(0), SFloat(1, 0), 0x3C))
    with pytest.raises(ValueOutOfRange):
        hist.HistoryData(hist.HistoryEventType.PRIMING_STARTED, 1, 0, b"\x01\x00")
    with pytest.raises(ValueOutOfRange):
        hist.HistoryData(0x0555, 1, 0, hist.DataCorruption())


def test_history_units_and_times() -> None:
    record = hist.HistoryData.from_bytes(bytes.fromhex("9900 08000000 0a00 01 7de0 08f0 33"))
    data = record.event_data
    assert isinstance(data, hist.DeliveredBasalRateChanged)
    assert (data.old_rate_iu_per_h, data.new_rate_iu_per_h) == (1.25, 0.8)
    assert record.relative_offset_time.total_seconds() == 10
    ref = hist.ReferenceTime(hist.RecordingReason.SET_DATE_TIME,
                             DateTime(2024, 5, 17, 8, 30, 0), 4, 4)
    offset = ref.utc_offset
    assert offset is not None and offset.total_seconds() == 7200
    assert hist.ReferenceTime(0x0F, DateTime(0, 0, 0, 0, 0, 0), -128, 0).utc_offset is None
    tbr = hist.HistoryData.from_bytes(bytes.fromhex("a500 0a000000 2000 00 33 08f0 3c00"))
    assert isinstance(tbr.event_data, hist.TbrAdjustmentStarted)
    assert tbr.event_data.absolute_rate_iu_per_h == 0.8
    relative = hist.TbrAdjustmentStarted(hist.TbrEventFlags(0), ids.TbrType.RELATIVE,
                                         SFloat(150, 0), 60)
    assert relative.absolute_rate_iu_per_h is None and relative.adjustment == 150.0
    calc = hist.BolusCalculatedPart1(SFloat(25, -1), SFloat(0, 0), SFloat(10, -1), SFloat(0, 0))
    assert (calc.meal_iu, calc.correction_iu, calc.total_iu) == (2.5, 1.0, 3.5)
    tdi = hist.TotalDailyInsulinDelivery(hist.TotalDailyInsulinFlags(0), SFloat(105, -1),
                                         SFloat(184, -1), 2024, 5, 16)
    assert tdi.total_iu == pytest.approx(28.9)
    assert tdi.date.isoformat() == "2024-05-16"
    with pytest.raises(ValueOutOfRange):
        _ = hist.TotalDailyInsulinDelivery(hist.TotalDailyInsulinFlags(0), SFloat(0, 0),
                                           SFloat(0, 0), 2024, 2, 30).date


# --------------------------------------------------------------------------------------------
# Hypothesis round trips
# --------------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
sfloats = st.builds(SFloat.from_int, u16)
mder_floats = st.builds(MderFloat.from_int, u32)
counters = st.none() | u8
small_bytes = st.binary(max_size=12)
date_times = st.builds(DateTime, st.just(0) | st.integers(1582, 9999), st.integers(0, 12),
                       st.integers(0, 31), st.integers(0, 23), st.integers(0, 59),
                       st.integers(0, 59))


def _opt(draw: st.DrawFn, flags: int, bit: int, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(strategy) if flags & bit else None


@st.composite
def annunciation_statuses(draw: st.DrawFn) -> ids.IddAnnunciationStatus:
    flags = draw(u8)
    present = flags & 1
    a1, a2, a3, a4, a5 = (_opt(draw, flags, 1 << i, u16) for i in range(1, 6))
    return ids.IddAnnunciationStatus(
        ids.AnnunciationFlags(flags), draw(u16) if present else None,
        draw(u16) if present else None, draw(u8) if present else None, a1, a2, a3, a4, a5,
        draw(counters))


@st.composite
def features(draw: st.DrawFn) -> ids.IddFeatures:
    flags = draw(st.integers(0, 0xFFFFFF))
    extension = draw(small_bytes) if flags & ids.IddFeatureFlags.FEATURE_EXTENSION else b""
    crc = draw(u16)
    return ids.IddFeatures(draw(sfloats), ids.IddFeatureFlags(flags), draw(u8), crc, extension)


@st.composite
def bolus_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    flags = draw(u8)
    return {
        "flags": BolusFlags(flags), "bolus_type": draw(u8), "fast_amount": draw(sfloats),
        "extended_amount": draw(sfloats), "duration": draw(u16),
        "delay_time": _opt(draw, flags, 1, u16), "template_number": _opt(draw, flags, 2, u8),
        "activation_type": _opt(draw, flags, 4, u8), "e2e_counter": draw(counters),
    }


@st.composite
def active_basal(draw: st.DrawFn) -> ids.ActiveBasalRateDeliveryResponse:
    flags = draw(u8)
    tbr = flags & 1
    return ids.ActiveBasalRateDeliveryResponse(
        ids.ActiveBasalRateFlags(flags), draw(u8), draw(sfloats),
        draw(u8) if tbr else None, draw(sfloats) if tbr else None, draw(u16) if tbr else None,
        draw(u16) if tbr else None, _opt(draw, flags, 2, u8), _opt(draw, flags, 4, u8),
        draw(counters))


@st.composite
def set_tbr(draw: st.DrawFn) -> ids.SetTbrAdjustment:
    flags = draw(u8)
    return ids.SetTbrAdjustment(ids.TbrFlags(flags), draw(u8), draw(sfloats), draw(u16),
                                _opt(draw, flags, 1, u8), _opt(draw, flags, 2, u8),
                                draw(counters))


def _ops(group: frozenset[int]) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(group))


status_reader_values: st.SearchStrategy[Any] = st.one_of(
    st.builds(ids.StatusReaderRequest, _ops(ids.StatusReaderRequest.OP_CODES), counters),
    st.builds(ids.ResetStatus, st.builds(ids.IddStatusChangedFlags, u16), counters),
    st.builds(ids.GetActiveBolusDelivery, u16, u8, counters),
    st.builds(ids.GetCounter, u8, u8, counters),
    st.builds(ids.StatusReaderResponse, u16, u8, counters),
    st.builds(ids.ActiveBolusIdsResponse, st.lists(u16, max_size=10).map(tuple), counters),
    bolus_kwargs().map(lambda kw: ids.ActiveBolusDeliveryResponse(bolus_id=0x1234, **kw)),
    active_basal(),
    st.builds(ids.TotalDailyInsulinStatusResponse, sfloats, sfloats, sfloats, counters),
    st.builds(ids.CounterResponse, u8, u8, st.integers(-(1 << 31), (1 << 31) - 1), counters),
    st.builds(ids.DeliveredInsulinResponse, mder_floats, mder_floats, counters),
    st.integers(0, 1).flatmap(lambda f: st.builds(
        ids.InsulinOnBoardResponse, st.just(ids.InsulinOnBoardFlags(f)), sfloats,
        u16 if f else st.none(), counters)),
)

command_values: st.SearchStrategy[Any] = st.one_of(
    st.builds(ids.CommandRequest, _ops(ids.CommandRequest.OP_CODES), counters),
    st.builds(ids.SetTherapyControlState, u8, counters),
    st.builds(ids.AnnunciationCommand, _ops(ids.AnnunciationCommand.OP_CODES), u16, counters),
    set_tbr(),
    bolus_kwargs().map(lambda kw: ids.SetBolus(**kw)),
    st.builds(ids.BolusIdCommand, _ops(ids.BolusIdCommand.OP_CODES), u16, counters),
    st.builds(ids.AvailableBolusesResponse, st.builds(ids.AvailableBolusesFlags, u8), counters),
    st.builds(ids.AmountCommand, _ops(ids.AmountCommand.OP_CODES), sfloats, counters),
    st.builds(ids.CommandResponse, u16, u8, counters),
    st.builds(ids.CommandRaw, _ops(ids.CommandRaw.OP_CODES), small_bytes, counters),
)


@st.composite
def racp_requests(draw: st.DrawFn) -> ids.IddRacpRequest:
    op = draw(_ops(frozenset(int(o) for o in ids.IDD_RACP_REQUEST_OP_CODES)))
    operator = draw(u8)
    flt = None
    operand = b""
    if operator in ids.IDD_RACP_FILTERED_OPERATORS:
        filter_type = draw(u8)
        if filter_type in IddRacpFilterType._value2member_map_:
            minimum = None if operator == IddRacpOperator.LESS_THAN_OR_EQUAL_TO else draw(u32)
            maximum = (None if operator == IddRacpOperator.GREATER_THAN_OR_EQUAL_TO
                       else draw(u32))
            flt = ids.IddRacpFilter(filter_type, minimum, maximum)
        else:
            # An unknown filter type keeps its operand raw; an empty one would be ambiguous
            # with a known type's missing minimum/maximum, which the request refuses.
            flt = ids.IddRacpFilter(filter_type, raw=draw(st.binary(min_size=1, max_size=8)))
    elif operator not in IddRacpOperator._value2member_map_:
        operand = draw(small_bytes)
    return ids.IddRacpRequest(IddRacpOpCode(op), operator, flt, operand, draw(counters))


racp_values: st.SearchStrategy[Any] = st.one_of(
    racp_requests(),
    st.builds(ids.IddRacpNumberOfRecords, u32, u8, counters),
    st.builds(ids.IddRacpResponse, u8, u8, u8, counters),
)

s8 = st.integers(-128, 127)


@st.composite
def flagged(draw: st.DrawFn, cls: Callable[..., Any], flag_cls: type[Any],
            leading: list[st.SearchStrategy[Any]],
            optional: list[tuple[int, st.SearchStrategy[Any]]]) -> Any:
    flags = draw(u8)
    head = [draw(s) for s in leading]
    tail = [_opt(draw, flags, bit, s) for bit, s in optional]
    return cls(flag_cls(flags), *head, *tail)


event_values: dict[type[Any], st.SearchStrategy[Any]] = {
    hist.ReferenceTime: st.builds(hist.ReferenceTime, u8, date_times, s8, u8),
    hist.ReferenceTimeBaseOffset: st.builds(hist.ReferenceTimeBaseOffset, u8, date_times,
                                            st.integers(-32768, 32767)),
    hist.BolusCalculatedPart1: st.builds(hist.BolusCalculatedPart1, sfloats, sfloats, sfloats,
                                         sfloats),
    hist.BolusCalculatedPart2: st.builds(hist.BolusCalculatedPart2, sfloats, sfloats, sfloats,
                                         sfloats),
    hist.BolusProgrammedPart1: st.builds(hist.BolusProgrammedPart1, u16, u8, sfloats, sfloats,
                                         u16),
    hist.BolusDeliveredPart1: st.builds(hist.BolusDeliveredPart1, u16, u8, sfloats, sfloats,
                                        u16),
    hist.BolusProgrammedPart2: flagged(hist.BolusProgrammedPart2, BolusFlags, [],
                                       [(1, u16), (2, u8), (4, u8)]),
    hist.BolusDeliveredPart2: flagged(hist.BolusDeliveredPart2, hist.BolusDeliveredFlags, [u32],
                                      [(1, u8), (2, u8), (4, u16)]),
    hist.DeliveredBasalRateChanged: flagged(hist.DeliveredBasalRateChanged,
                                            hist.BasalRateChangedFlags, [sfloats, sfloats],
                                            [(1, u8)]),
    hist.TbrAdjustmentStarted: flagged(hist.TbrAdjustmentStarted, hist.TbrEventFlags,
                                       [u8, sfloats, u16], [(1, u8), (2, u8)]),
    hist.TbrAdjustmentChanged: flagged(hist.TbrAdjustmentChanged, hist.TbrEventFlags,
                                       [u8, sfloats, u16, u16], [(1, u8), (2, u8)]),
    hist.TbrAdjustmentEnded: flagged(hist.TbrAdjustmentEnded, hist.TbrEndedFlags,
                                     [u8, u16, u8], [(1, u8), (2, u16)]),
    hist.TotalDailyInsulinDelivery: flagged(hist.TotalDailyInsulinDelivery,
                                            hist.TotalDailyInsulinFlags,
                                            [sfloats, sfloats, u16, u8, u8], []),
    hist.TherapyControlStateChanged: st.builds(hist.TherapyControlStateChanged, u8, u8),
    hist.OperationalStateChanged: st.builds(hist.OperationalStateChanged, u8, u8),
    hist.ReservoirRemainingAmountChanged: st.builds(hist.ReservoirRemainingAmountChanged,
                                                    sfloats),
    hist.AnnunciationStatusChangedPart1: flagged(hist.AnnunciationStatusChangedPart1,
                                                 hist.AnnunciationChangedPart1Flags,
                                                 [u16, u16, u8], [(1, u16), (2, u16)]),
    hist.AnnunciationStatusChangedPart2: flagged(hist.AnnunciationStatusChangedPart2,
                                                 hist.AnnunciationChangedPart2Flags, [],
                                                 [(1, u16), (2, u16), (4, u16)]),
    hist.PrimingStarted: st.builds(hist.PrimingStarted, sfloats),
    hist.PrimingDone: flagged(hist.PrimingDone, hist.PrimingDoneFlags, [sfloats, u8],
                              [(1, u16)]),
    hist.DataCorruption: st.just(hist.DataCorruption()),
    hist.PointerEvent: st.just(hist.PointerEvent()),
    hist.MaxBolusAmountChanged: st.builds(hist.MaxBolusAmountChanged, sfloats, sfloats),
}


def test_every_event_class_has_a_strategy() -> None:
    assert set(event_values) == set(hist.EVENT_DATA_CLASSES.values())


@st.composite
def history_records(draw: st.DrawFn) -> hist.HistoryData:
    if draw(st.booleans()):
        event_type = draw(st.sampled_from(sorted(hist.EVENT_DATA_CLASSES)))
        data: Any = draw(event_values[hist.EVENT_DATA_CLASSES[event_type]])
    else:
        event_type = draw(u16.filter(lambda t: t not in hist.EVENT_DATA_CLASSES))
        data = draw(small_bytes)
    return hist.HistoryData(event_type, draw(u32), draw(u16), data, draw(counters))


def _round_trip(value: Any, decode: Callable[[bytes, bool], Any]) -> None:
    frame = bytes(value)
    decoded = decode(frame, value.e2e_counter is not None)
    assert decoded == value
    assert bytes(decoded) == frame


@given(st.builds(ids.IddStatusChanged, st.builds(ids.IddStatusChangedFlags, u16), counters))
def test_round_trip_status_changed(value: ids.IddStatusChanged) -> None:
    _round_trip(value, ids.IddStatusChanged.from_bytes)


@given(st.builds(ids.IddStatus, u8, u8, sfloats, st.builds(ids.IddStatusFlags, u8), counters))
def test_round_trip_status(value: ids.IddStatus) -> None:
    _round_trip(value, ids.IddStatus.from_bytes)


@given(annunciation_statuses())
def test_round_trip_annunciation_status(value: ids.IddAnnunciationStatus) -> None:
    _round_trip(value, ids.IddAnnunciationStatus.from_bytes)


@given(features())
def test_round_trip_features(value: ids.IddFeatures) -> None:
    frame = bytes(value)
    assert ids.IddFeatures.from_bytes(frame) == value
    if value.e2e_supported:
        assert int.from_bytes(frame[:2], "little") == crc16_mcrf4xx(frame[2:])


@given(status_reader_values)
def test_round_trip_status_reader(value: Any) -> None:
    _round_trip(value, ids.parse_status_reader_cp)


@given(command_values)
def test_round_trip_command_cp(value: Any) -> None:
    _round_trip(value, ids.parse_command_cp)


@given(st.builds(ids.CommandData, _ops(ids.CommandData.OP_CODES), small_bytes, counters))
def test_round_trip_command_data(value: ids.CommandData) -> None:
    _round_trip(value, ids.CommandData.from_bytes)


@given(racp_values)
def test_round_trip_racp(value: Any) -> None:
    _round_trip(value, ids.parse_idd_racp)


@st.composite
def well_formed_racp_requests(draw: st.DrawFn) -> ids.IddRacpRequest:
    op = draw(st.sampled_from(sorted(ids.IDD_RACP_REQUEST_OP_CODES)))
    if op == IddRacpOpCode.ABORT_OPERATION:
        return ids.IddRacpRequest(op, IddRacpOperator.NULL)
    operator = draw(st.sampled_from(sorted(ids.IDD_RACP_FILTERED_OPERATORS
                                           | ids.IDD_RACP_UNFILTERED_OPERATORS)))
    if operator not in ids.IDD_RACP_FILTERED_OPERATORS:
        return ids.IddRacpRequest(op, operator)
    low, high = sorted((draw(u32), draw(u32)))
    flt = ids.IddRacpFilter(
        draw(st.sampled_from(list(IddRacpFilterType))),
        None if operator == IddRacpOperator.LESS_THAN_OR_EQUAL_TO else low,
        None if operator == IddRacpOperator.GREATER_THAN_OR_EQUAL_TO else high)
    return ids.IddRacpRequest(op, operator, flt)


@given(well_formed_racp_requests())
def test_well_formed_requests_pass_the_server_check(value: ids.IddRacpRequest) -> None:
    assert ids.check_idd_racp_request(bytes(value)) is None


@given(history_records())
def test_round_trip_history(value: hist.HistoryData) -> None:
    _round_trip(value, hist.HistoryData.from_bytes)


@given(st.binary(max_size=40), st.booleans())
def test_random_bytes_raise_only_protocol_errors(data: bytes, e2e: bool) -> None:
    from bridge.errors import ProtocolError

    for decode in (ids.parse_command_cp, ids.parse_status_reader_cp, ids.parse_idd_racp,
                   hist.HistoryData.from_bytes, ids.IddAnnunciationStatus.from_bytes):
        with contextlib.suppress(ProtocolError):
            decode(data, e2e)
