"""Device Information Service (0x180A, DIS 1.1): the identity strings, System ID and PnP ID.

The bridge reads these once per device to fill the device resource of an export (manufacturer,
model, serial, versions). Strings are UTF-8 without a terminator (DIS 1.1 §3.1–§3.6); bytes
that are not valid UTF-8 are refused, since guessing another encoding would put a wrong
serial number into a medical record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from bridge.errors import MalformedFrame, ValueOutOfRange
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.wire import Reader, Writer

DEVICE_INFORMATION_SERVICE_UUID = 0x180A


class DisCharacteristic(IntEnum):
    """16-bit UUIDs of the DIS characteristics (DIS 1.1 §3)."""

    SYSTEM_ID = 0x2A23
    MODEL_NUMBER_STRING = 0x2A24
    SERIAL_NUMBER_STRING = 0x2A25
    FIRMWARE_REVISION_STRING = 0x2A26
    HARDWARE_REVISION_STRING = 0x2A27
    SOFTWARE_REVISION_STRING = 0x2A28
    MANUFACTURER_NAME_STRING = 0x2A29
    IEEE_11073_20601_REGULATORY_CERTIFICATION_DATA_LIST = 0x2A2A
    PNP_ID = 0x2A50


#: The characteristics whose value is a plain UTF-8 string (decoded by ``dis-string``).
STRING_CHARACTERISTICS = frozenset({
    DisCharacteristic.MANUFACTURER_NAME_STRING,
    DisCharacteristic.MODEL_NUMBER_STRING,
    DisCharacteristic.SERIAL_NUMBER_STRING,
    DisCharacteristic.HARDWARE_REVISION_STRING,
    DisCharacteristic.FIRMWARE_REVISION_STRING,
    DisCharacteristic.SOFTWARE_REVISION_STRING,
})





@dataclass(frozen=True, slots=True)
class DisString:
    """One of the six DIS string characteristics (which one is known from its UUID)."""

    value: str

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedFrame(f"DIS string is not valid UTF-8 ({exc.reason})", data,
                                 exc.start) from None
        return cls(text)

    def __bytes__(self) -> bytes:
        try:
            return self.value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueOutOfRange(f"DIS string cannot be encoded as UTF-8 ({exc.reason})"
                                  ) from None

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class SystemId:
    """System ID (0x2A23, DIS 1.1 §3.7): 64 bits, little-endian.

    The low 40 bits are a manufacturer-defined identifier, the high 24 bits the IEEE OUI;
    on the wire that is 5 octets of identifier then 3 octets of OUI, least significant first.
    """

    manufacturer_identifier: int
    organizationally_unique_identifier: int

    SIZE = 8

    def __post_init__(self) -> None:
        if not 0 <= self.manufacturer_identifier < 1 << 40:
            raise ValueOutOfRange(
                f"manufacturer identifier {self.manufacturer_identifier} is not 40-bit")
        if not 0 <= self.organizationally_unique_identifier < 1 << 24:
            raise ValueOutOfRange(f"OUI {self.organizationally_unique_identifier} is not 24-bit")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls(r.uint(5, "manufacturer identifier"),
                    r.u24("organizationally unique identifier"))
        r.expect_end("System ID")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().uint(self.manufacturer_identifier, 5, "manufacturer identifier")
                     .u24(self.organizationally_unique_identifier, "OUI"))

    @classmethod
    def from_bluetooth_address(cls, address: int) -> Self:
        """The System ID derived from a 48-bit public device address, as the System ID
        characteristic definition prescribes (an EUI-48 to EUI-64 mapping): the address's
        upper 24 bits (the OUI) stay the OUI, and 0xFFFE followed by its lower 24 bits
        (company assigned) make the 40-bit identifier."""
        if not 0 <= address < 1 << 48:
            raise ValueOutOfRange(f"Bluetooth address {address} is not 48-bit")
        return cls(0xFFFE << 24 | (address & 0xFFFFFF), address >> 24)

    @property
    def value(self) -> int:
        """The whole 64-bit System ID (OUI in the top 24 bits), e.g. as an EUI-64."""
        return self.organizationally_unique_identifier << 40 | self.manufacturer_identifier


class VendorIdSource(IntEnum):
    """Vendor ID Source of the PnP ID (DIS 1.1 §3.9); 0 and 3–255 are reserved."""

    BLUETOOTH_SIG = 1
    USB_IMPLEMENTERS_FORUM = 2


@dataclass(frozen=True, slots=True)
class PnpId:
    """PnP ID (0x2A50, DIS 1.1 §3.9): vendor ID source, vendor ID, product ID, version."""

    vendor_id_source: VendorIdSource | int
    vendor_id: int
    product_id: int
    product_version: int

    SIZE = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "vendor_id_source",
                           known(VendorIdSource, self.vendor_id_source))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls(r.u8("vendor ID source"), r.u16("vendor ID"), r.u16("product ID"),
                    r.u16("product version"))
        r.expect_end("PnP ID")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(int(self.vendor_id_source), "vendor ID source")
                     .u16(self.vendor_id, "vendor ID").u16(self.product_id, "product ID")
                     .u16(self.product_version, "product version"))


CODECS = (
    MessageCodec("dis-string", "DIS UTF-8 string (0x2A24–0x2A29: model, serial, firmware, "
                 "hardware, software revision, manufacturer name)", DisString.from_bytes),
    MessageCodec("dis-system-id", "DIS System ID (0x2A23), 40-bit identifier + 24-bit OUI",
                 SystemId.from_bytes),
    MessageCodec("dis-pnp-id", "DIS PnP ID (0x2A50), vendor source, vendor, product, version",
                 PnpId.from_bytes),
)
