"""The two CRC-16 variants the supported devices use.

* CRC-16/MCRF4XX — Bluetooth E2E-CRC of the CGM Service (CGMS 1.0.1 §3.1) and the Insulin
  Delivery Service: reflected polynomial 0x1021 (0x8408), init 0xFFFF, no final XOR.
  Check value for ``b"123456789"``: 0x6F91.
* CRC-16/CCITT-FALSE — the OneTouch Ultra Easy/Mini serial frames: polynomial 0x1021,
  not reflected, init 0xFFFF, no final XOR. Check value: 0x29B1.

Table-driven; a CRC is small enough to write by hand.
"""

from __future__ import annotations


def _table_reflected(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def _table_msb_first(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
        table.append(crc)
    return tuple(table)


_MCRF4XX = _table_reflected(0x8408)
_CCITT = _table_msb_first(0x1021)


def crc16_mcrf4xx(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/MCRF4XX, the Bluetooth E2E-CRC."""
    for b in data:
        crc = (crc >> 8) ^ _MCRF4XX[(crc ^ b) & 0xFF]
    return crc


def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (a.k.a. CRC-16/IBM-3740), the OneTouch Ultra Easy frame CRC."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CCITT[((crc >> 8) ^ b) & 0xFF]
    return crc
