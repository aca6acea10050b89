"""Every firmware fixture decodes to its expected values and re-encodes to the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

import bridge.errors
from bridge.protocols.codec import to_json
from bridge.protocols.fixtures import FixtureCase, all_fixture_files, load_fixture_file
from bridge.protocols.registry import get_codec

CASES: list[tuple[str, FixtureCase]] = [
    (f"{path.parent.name}/{path.stem}:{case.name}", case)
    for path in all_fixture_files()
    for case in load_fixture_file(path).cases
]


def test_fixtures_exist() -> None:
    assert len(CASES) > 0, "no fixture cases found under firmware-fixtures/"


@pytest.mark.parametrize(("case_id", "case"), CASES, ids=[c[0] for c in CASES])
def test_fixture_case(case_id: str, case: FixtureCase) -> None:
    codec = get_codec(case.message)
    if case.error is not None:
        expected_error = getattr(bridge.errors, case.error)
        with pytest.raises(expected_error):
            codec.decode(case.frame)
        return
    value = codec.decode(case.frame)
    assert to_json(value) == case.expected
    assert codec.encode(value) == case.frame, "re-encoding must give the same bytes"


def test_every_message_type_has_a_fixture() -> None:
    from bridge.protocols.registry import all_codecs

    covered = {case.message for _, case in CASES if case.error is None}
    missing = sorted(set(all_codecs()) - covered)
    assert not missing, f"message types without a decoding fixture: {missing}"


def test_fixture_readme_exists() -> None:
    root = Path(__file__).resolve().parents[1] / "firmware-fixtures"
    assert (root / "README.md").is_file()
