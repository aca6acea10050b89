"""Search parameter parsing (pure): dates with every prefix, tokens, quantities, cursors, and
the 400s of error-codes.md."""

from __future__ import annotations

import datetime as dt

import pytest

from bridge.hddt import search
from bridge.hddt.outcome import FhirError

UTC = dt.UTC


def d(year: int, month: int, day: int, hour: int = 0, minute: int = 0,  # noqa: PLR0917
      second: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("2025", d(2025, 1, 1), d(2026, 1, 1)),
    ("2025-12", d(2025, 12, 1), d(2026, 1, 1)),
    ("2025-02", d(2025, 2, 1), d(2025, 3, 1)),
    ("2025-07-23", d(2025, 7, 23), d(2025, 7, 24)),
    ("20250912", d(2025, 9, 12), d(2025, 9, 13)),
    ("2025-07-23T10:15Z", d(2025, 7, 23, 10, 15), d(2025, 7, 23, 10, 16)),
    ("2025-07-23T10:15:30+02:00", d(2025, 7, 23, 8, 15, 30), d(2025, 7, 23, 8, 15, 31)),
    ("2025-07-23T10:15:30.25Z", d(2025, 7, 23, 10, 15, 30, 250000),
     d(2025, 7, 23, 10, 15, 30, 260000)),
])
def test_partial_dates_cover_their_precision(text: str, lo: dt.datetime, hi: dt.datetime) -> None:
    p = search.parse_date(text)
    assert (p.prefix, p.lo, p.hi) == ("eq", lo, hi)


@pytest.mark.parametrize("bad", ["2025-13", "2025-02-30", "xx2025", "2025-07-23T25:00Z",
                                 "yesterday", "2025-7-1", ""])
def test_malformed_dates_are_400_with_the_spec_text(bad: str) -> None:
    with pytest.raises(FhirError) as err:
        search.parse_date(bad)
    assert err.value.status == 400 and err.value.code == "processing"
    assert err.value.diagnostics.startswith(f"Invalid date/time format or date range: {bad}")


def test_end_before_start_is_400() -> None:
    with pytest.raises(FhirError) as err:
        search.parse_dates(["ge2025-07-10", "le2025-07-01"])
    assert err.value.status == 400 and "end lies before the start" in err.value.diagnostics


# Target ranges: a point inside the day, the whole day, a period across the day's start.
DAY = search.parse_date("2025-07-23")
POINT_IN = (d(2025, 7, 23, 12), d(2025, 7, 23, 12) + dt.timedelta(microseconds=1))
BEFORE = (d(2025, 7, 22, 12), d(2025, 7, 22, 13))
AFTER = (d(2025, 7, 24, 1), d(2025, 7, 24, 2))
ACROSS = (d(2025, 7, 22, 23), d(2025, 7, 23, 1))


@pytest.mark.parametrize(("prefix", "expected"), [
    # (point inside, period before, period after, period across the start)
    ("eq", (True, False, False, False)),
    ("ne", (False, True, True, True)),
    ("gt", (False, False, True, False)),
    ("lt", (False, True, False, True)),
    ("ge", (True, False, True, False)),
    ("le", (True, True, False, True)),
    ("sa", (False, False, True, False)),
    ("eb", (False, True, False, False)),
    ("ap", (True, True, True, True)),
])
def test_every_prefix_on_points_and_periods(prefix: str, expected: tuple[bool, ...]) -> None:
    p = search.parse_date(prefix + "2025-07-23")
    now = d(2025, 7, 30)
    got = tuple(p.matches(lo, hi, now) for lo, hi in (POINT_IN, BEFORE, AFTER, ACROSS))
    assert got == expected


def test_unknown_prefix_is_400() -> None:
    with pytest.raises(FhirError) as err:
        search.parse_date("zz2025-01-01")
    assert err.value.status == 400


def test_tokens_in_all_forms_and_comma_or() -> None:
    s = search.parse_observation_search(
        [("code", "http://loinc.org|41653-7,|2339-0,99504-3")], default_count=10, max_count=20)
    (group,) = s.codes
    assert group == [search.Token("http://loinc.org", "41653-7"), search.Token("", "2339-0"),
                     search.Token(None, "99504-3")]
    assert group[0].matches("http://loinc.org", "41653-7")
    assert not group[1].matches("http://loinc.org", "2339-0")  # |code: no system at all
    assert group[2].matches("http://loinc.org", "99504-3")


def test_quantities_carry_their_implicit_precision() -> None:
    q = search.parse_quantity("value-quantity", "100")
    assert (q.lo, q.hi) == (99.5, 100.5) and q.matches(100.4) and not q.matches(100.5)
    q = search.parse_quantity("value-quantity", "5.40|http://unitsofmeasure.org|mmol/L")
    assert (q.lo, q.hi) == pytest.approx((5.395, 5.405))
    assert q.code == "mmol/L" and q.system == "http://unitsofmeasure.org"
    assert search.parse_quantity("v", "gt120").matches(121)
    with pytest.raises(FhirError):
        search.parse_quantity("value-quantity", "abc")


def test_unknown_parameter_is_400_with_exact_diagnostics() -> None:
    with pytest.raises(FhirError) as err:
        search.parse_observation_search([("foo", "1")], default_count=10, max_count=20)
    assert err.value.status == 400
    assert err.value.outcome()["issue"][0] == {"severity": "error", "code": "processing",
                                               "diagnostics": "Unknown search parameter foo"}


@pytest.mark.parametrize("name", ["subject", "patient", "subject:Patient", "patient.name"])
def test_patient_selection_is_refused(name: str) -> None:
    with pytest.raises(FhirError) as err:
        search.parse_observation_search([(name, "Patient/1")], default_count=10, max_count=20)
    assert err.value.status == 400


@pytest.mark.parametrize("value", ["Observation:subject", "Device:*", "*", "Patient:x"])
def test_invalid_includes_are_400(value: str) -> None:
    with pytest.raises(FhirError) as err:
        search.parse_observation_search([("_include", value)], default_count=10, max_count=20)
    assert err.value.diagnostics == f"Invalid _include parameter value: {value}"


def test_sort_count_and_cursor() -> None:
    cursor = search.Cursor(("2025-01-01T00:00:00.000000Z", 1, "cgm-x-1"), False)
    s = search.parse_observation_search(
        [("_sort", "-date"), ("_count", "900"), ("_cursor", cursor.encode())],
        default_count=10, max_count=20)
    assert s.descending and s.paging.count == 20 and s.paging.cursor == cursor
    for bad in ([("_sort", "code")], [("_count", "-1")], [("_cursor", "garbage!")]):
        with pytest.raises(FhirError):
            search.parse_observation_search(bad, default_count=10, max_count=20)


def test_string_search_modes() -> None:
    assert search.string_matches([[("starts", "virt")]], "Virtual CGM")
    assert not search.string_matches([[("exact", "virtual cgm")]], "Virtual CGM")
    assert search.string_matches([[("contains", "cgm")]], "Virtual CGM")
    assert not search.string_matches([[("starts", "cgm")]], None)
