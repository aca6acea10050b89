"""PKCE per RFC 7636."""

from __future__ import annotations

import pytest

from bridge.diga.errors import DigaError
from bridge.diga.pkce import make_state, make_verifier, s256_challenge


def test_rfc7636_appendix_b_vector() -> None:
    # RFC 7636 Appendix B: the verifier and the S256 challenge it must give.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_fresh_and_well_formed() -> None:
    verifiers = {make_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert len(verifier) == 43
        s256_challenge(verifier)  # accepted by the RFC's alphabet check
    assert len(make_verifier(96)) == 128


@pytest.mark.parametrize("verifier", ["short", "x" * 129, "a" * 42 + "!", "ä" * 43])
def test_invalid_verifier_refused(verifier: str) -> None:
    with pytest.raises(DigaError, match="43-128"):
        s256_challenge(verifier)


def test_entropy_bounds() -> None:
    with pytest.raises(DigaError, match="32 to 96"):
        make_verifier(16)


def test_states_differ() -> None:
    assert make_state() != make_state()
    assert len(make_state()) >= 32
