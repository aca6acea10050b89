"""The one interface every device driver implements, and what a sync hands to the agent.

A driver talks to one device over its transport (a GATT central, a serial port) and turns its
traffic into canonical records. It does no clock correction and no storage: it reports what
the device said, with the device's own timestamps in ``Record.device_time``, one observation
of the device clock against the gateway clock, and the sync state to store in the same
transaction as the records. The agent's clock correction then sets each record's UTC ``time``.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.errors import BridgeError
from bridge.records import AnyRecord, DeviceInfo

#: Driver-defined sync state; JSON-serialisable (stored by the outbox, e.g. last sequence).
SyncState = Mapping[str, Any]


class DeviceError(BridgeError):
    """A device could not be read: not found, disconnected, timed out, refused a procedure.

    ``device`` names the device (address or port URL) the error is about.
    """

    def __init__(self, message: str, device: str | None = None) -> None:
        self.device = device
        super().__init__(f"{device}: {message}" if device else message)


class DeviceTimeout(DeviceError):
    """The device did not answer within its configured timeout."""


class DeviceDisconnected(DeviceError):
    """The link dropped during a procedure; what was read before it is kept."""


class ClockSource(StrEnum):
    """Where a clock observation came from (the time-bearing message of each protocol)."""

    CURRENT_TIME = "current-time"            # BLE Current Time Service
    CGM_SESSION = "cgm-session"              # CGMS Session Start Time + Session Run Time
    IDS_REFERENCE_TIME = "ids-reference-time"
    PHD_ABSOLUTE_TIME = "phd-absolute-time"  # IEEE 11073-20601 MDS Date-and-Time
    SERIAL_TIME_COMMAND = "serial-time-command"
    LATEST_RECORD = "latest-record"          # no clock to read: newest record vs now


@dataclass(frozen=True, slots=True)
class ClockObservation:
    """The device clock read at ``gateway_time`` (aware UTC) showed ``device_time`` (naive).

    ``utc_offset`` is the device's own statement of its zone where it makes one (CTS Local
    Time Information, CGM session time zone + DST); ``None`` when the device keeps bare local
    time and the agent must use the configured zone.
    """

    device_time: dt.datetime
    gateway_time: dt.datetime
    source: ClockSource
    utc_offset: dt.timedelta | None = None

    def __post_init__(self) -> None:
        if self.device_time.tzinfo is not None:
            raise ValueError("device_time is the device's naive clock reading")
        if self.gateway_time.tzinfo is None:
            raise ValueError("gateway_time must be an aware UTC instant")


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync read. ``records`` have ``device_time`` set; their ``time`` is provisional
    until the agent corrects it with ``clock``. ``state`` replaces the stored sync state."""

    info: DeviceInfo
    records: tuple[AnyRecord, ...]
    state: SyncState
    clock: ClockObservation | None = None
    #: Things the operator should know (sequence reset detected, memory cleared, CRC retries).
    notices: tuple[str, ...] = field(default=())


class DeviceDriver(abc.ABC):
    """One device. ``sync`` is incremental: given the stored state it reads only what is new."""

    @abc.abstractmethod
    async def read_info(self) -> DeviceInfo:
        """Identity from DIS, the 11073 MDS or the serial meter's commands."""

    @abc.abstractmethod
    async def sync(self, state: SyncState) -> SyncResult:
        """Read the records newer than ``state`` (all of them for an empty state)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the transport; safe to call twice."""
