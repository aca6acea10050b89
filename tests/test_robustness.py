"""Random and mutated input never raises anything but the project's protocol errors.

For every registered message type the seeds are its valid fixture frames; mutations are
truncations, extensions, bit flips, byte overwrites and "length lies" (a byte that commonly
holds a length or count set to an extreme). Together with pure random frames, each decoder
sees ``ROBUSTNESS_ITERATIONS`` inputs (100,000 by default; CI uses the default).
"""

from __future__ import annotations

import os
import random

import pytest

from bridge.errors import ProtocolError
from bridge.protocols.fixtures import all_fixture_files, load_fixture_file
from bridge.protocols.registry import all_codecs

ITERATIONS = int(os.environ.get("ROBUSTNESS_ITERATIONS", "100000"))


def _seeds() -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {}
    for path in all_fixture_files():
        for case in load_fixture_file(path).cases:
            seeds.setdefault(case.message, []).append(case.frame)
    return seeds


SEEDS = _seeds()


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    kind = rng.randrange(7)
    if kind == 0 and data:  # truncation
        return bytes(data[: rng.randrange(len(data))])
    if kind == 1:  # extension with junk
        return bytes(data + rng.randbytes(rng.randrange(1, 8)))
    if kind == 2 and data:  # bit flips
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 3 and data:  # overwrite bytes
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 4 and data:  # length lie: a byte set to 0, 1 or 0xFF
        data[rng.randrange(min(len(data), 8))] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
        return bytes(data)
    if kind == 5 and len(data) > 1:  # drop a byte from the middle
        i = rng.randrange(len(data))
        return bytes(data[:i] + data[i + 1:])
    return rng.randbytes(rng.randrange(0, 40))  # pure random


@pytest.mark.slow
@pytest.mark.parametrize("message", sorted(all_codecs()))
def test_decoder_raises_only_protocol_errors(message: str) -> None:
    codec = all_codecs()[message]
    seeds = SEEDS.get(message) or [b""]
    rng = random.Random(f"robustness:{message}")
    accepted = rejected = 0
    for i in range(ITERATIONS):
        frame = mutate(rng, seeds[i % len(seeds)])
        try:
            codec.decode(frame)
        except ProtocolError:
            rejected += 1
        except Exception as exc:  # pragma: no cover - this is the failure being tested for
            pytest.fail(f"{message}: {type(exc).__name__}: {exc} on input {frame.hex()}")
        else:
            accepted += 1
    assert accepted + rejected == ITERATIONS
    assert rejected > 0, "mutations should produce at least some rejected frames"
