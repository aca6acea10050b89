"""Fault injection for the virtual devices: one config, one seeded injector per device.

Real meters, sensors and pumps misbehave in a handful of typical ways: the link drops in the
middle of a record transfer, a frame arrives damaged, a response comes late or never, the
device clock is off, drifts or is reset by a battery change, the record memory is cleared
(sequence numbers start again), a record is sent twice, the battery runs low, the sensor
raises annunciations. :class:`FaultConfig` switches each of these on; :class:`FaultInjector`
decides, deterministically for a given ``seed``, when a fault strikes. Every virtual device
(BLE peripherals and serial meter emulators) takes a ``FaultConfig`` and builds its own
``FaultInjector``, so a scenario that fails once fails the same way every time.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from bridge.records import Annunciation

#: What a meter's clock shows after a reset that lost the time (a typical firmware default).
DEFAULT_CLOCK_RESET_TO = dt.datetime(2000, 1, 1, 0, 0, 0)

#: Battery percentage a device reports while ``battery_low`` is set.
LOW_BATTERY_PERCENT = 5


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in 0…1, got {value}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Which faults a virtual device injects. All off by default.

    * ``disconnect_after_records``: during a record transfer (RACP report, serial dump) the
      device drops the link after sending this many records.
    * ``corrupt_frame_rate``: share of record frames sent damaged (a flipped byte; frames with
      a CRC then fail their check).
    * ``drop_response_rate``: share of control-point / command responses never sent.
    * ``response_delay_s``: delay before every control-point / command response.
    * ``clock_offset_s``, ``clock_drift_ppm``: added to the device clock on top of what the
      device model already has (a drift counts from ``clock_epoch`` or the first record).
    * ``clock_reset_at_record``: the clock is reset to ``clock_reset_to`` when the record with
      this index (0-based, in the order the device receives them) is taken.
    * ``sequence_reset_at_record``: the record memory is cleared when the record with this
      index arrives; numbering starts again from the device's first sequence number.
    * ``duplicate_record_rate``: share of records sent twice in a row.
    * ``battery_low``: the device reports a low battery (level and annunciations).
    * ``annunciations``: device conditions added to every record (e.g. sensor malfunction,
      calibration required); each device maps those it can express.
    """

    seed: int = 0
    disconnect_after_records: int | None = None
    corrupt_frame_rate: float = 0.0
    drop_response_rate: float = 0.0
    response_delay_s: float = 0.0
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0
    clock_reset_at_record: int | None = None
    clock_reset_to: dt.datetime = DEFAULT_CLOCK_RESET_TO
    clock_epoch: dt.datetime | None = None
    sequence_reset_at_record: int | None = None
    duplicate_record_rate: float = 0.0
    battery_low: bool = False
    annunciations: frozenset[Annunciation] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        _check_rate("corrupt_frame_rate", self.corrupt_frame_rate)
        _check_rate("drop_response_rate", self.drop_response_rate)
        _check_rate("duplicate_record_rate", self.duplicate_record_rate)
        if self.response_delay_s < 0:
            raise ValueError(f"response_delay_s must not be negative, got {self.response_delay_s}")
        for name in ("disconnect_after_records", "clock_reset_at_record",
                     "sequence_reset_at_record"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.clock_reset_to.tzinfo is not None:
            raise ValueError("clock_reset_to is the naive time the device shows after a reset")
        if self.clock_epoch is not None and self.clock_epoch.tzinfo is None:
            raise ValueError("clock_epoch is a true (aware, UTC) instant")
        object.__setattr__(self, "annunciations", frozenset(self.annunciations))

    @property
    def any_clock_fault(self) -> bool:
        return (self.clock_offset_s != 0.0 or self.clock_drift_ppm != 0.0
                or self.clock_reset_at_record is not None)


class FaultInjector:
    """Draws the faults of one device from a :class:`FaultConfig`, deterministically per seed.

    Each ``should_*`` method draws from the same seeded generator, so the order in which a
    device asks decides the outcome; devices ask in protocol order, which keeps runs repeatable.
    """

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self.rng = random.Random(self.config.seed)
        self._drift_epoch: dt.datetime | None = self.config.clock_epoch
        self._reset_true_time: dt.datetime | None = None

    # --- link and frames ---------------------------------------------------------------

    def _draw(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def should_corrupt(self) -> bool:
        return self._draw(self.config.corrupt_frame_rate)

    def corrupt(self, frame: bytes, start: int = 0, end: int | None = None,
                mask: int | None = None) -> bytes:
        """``frame`` with one byte in ``frame[start:end]`` changed (XOR with ``mask``, or a
        random non-zero mask).

        Callers choose the span and mask: a byte before a trailing CRC so the check fails, or
        a field whose damage a decoder can notice when the protocol has no CRC.
        """
        stop = len(frame) if end is None else end
        if not frame or not 0 <= start < stop <= len(frame):
            return frame
        position = self.rng.randrange(start, stop)
        if mask is None or not 0 < mask < 256:
            mask = self.rng.randrange(1, 256)
        damaged = bytearray(frame)
        damaged[position] ^= mask
        return bytes(damaged)

    def should_drop(self) -> bool:
        return self._draw(self.config.drop_response_rate)

    def should_duplicate(self) -> bool:
        return self._draw(self.config.duplicate_record_rate)

    @property
    def response_delay_s(self) -> float:
        return self.config.response_delay_s

    def disconnect_now(self, records_sent: int) -> bool:
        """Whether the link should drop once ``records_sent`` records of a transfer are out."""
        limit = self.config.disconnect_after_records
        return limit is not None and records_sent >= limit

    # --- memory --------------------------------------------------------------------------

    def sequence_reset_due(self, record_index: int) -> bool:
        """Whether the memory is cleared when the record numbered ``record_index`` arrives."""
        return self.config.sequence_reset_at_record == record_index

    # --- clock ---------------------------------------------------------------------------

    def device_time(self, nominal: dt.datetime, true_time: dt.datetime,
                    record_index: int | None = None) -> dt.datetime:
        """The device time with the configured clock faults applied.

        ``nominal`` is what the device model's own clock shows at ``true_time`` (aware UTC).
        ``record_index`` is the index of the record being stamped (``None`` for a clock read):
        from ``clock_reset_at_record`` on the clock counts from ``clock_reset_to``.
        """
        cfg = self.config
        true_utc = true_time.astimezone(dt.UTC)
        if cfg.clock_reset_at_record is not None:
            if (self._reset_true_time is None and record_index is not None
                    and record_index >= cfg.clock_reset_at_record):
                self._reset_true_time = true_utc
            if self._reset_true_time is not None and true_utc >= self._reset_true_time:
                return cfg.clock_reset_to + (true_utc - self._reset_true_time)
        if self._drift_epoch is None:
            self._drift_epoch = true_utc
        elapsed_s = (true_utc - self._drift_epoch).total_seconds()
        skew_s = cfg.clock_offset_s + elapsed_s * cfg.clock_drift_ppm * 1e-6
        return nominal + dt.timedelta(seconds=skew_s)

    # --- battery and annunciations -------------------------------------------------------

    def battery_percent(self, nominal: int) -> int:
        return min(nominal, LOW_BATTERY_PERCENT) if self.config.battery_low else nominal

    def annunciations(self, nominal: frozenset[Annunciation]) -> frozenset[Annunciation]:
        extra = set(self.config.annunciations)
        if self.config.battery_low:
            extra.add(Annunciation.BATTERY_LOW)
        return nominal | extra
