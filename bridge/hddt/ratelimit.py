"""Rate limiting per pairing (operational-requirements.md "Throughput and Load Requirements").

A token bucket per pairing (burst, refill rate) and, when configured, the MIV Grace-Period:
the minimum time between two data requests of one pairing. Refusals are 429 with
Retry-After (error-codes.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.hddt import outcome
from bridge.hddt.settings import HddtSettings


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    last_data: float | None = None


class RateLimiter:
    """Decides per pairing; thread-safe; state lives in this process."""

    def __init__(self, settings: HddtSettings,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, pairing_id: str, *, data_request: bool) -> None:
        """Take one request of ``pairing_id`` or raise the 429 FhirError."""
        st = self.settings
        now = self.monotonic()
        with self._lock:
            bucket = self._buckets.get(pairing_id)
            if bucket is None:
                bucket = self._buckets[pairing_id] = _Bucket(float(st.rate_limit_burst), now)
                if len(self._buckets) > 100_000:  # forget idle pairings, keep memory bounded
                    self._buckets = {pairing_id: bucket}
            grace = st.grace_period.total_seconds()
            if data_request and grace > 0 and bucket.last_data is not None:
                wait = bucket.last_data + grace - now
                if wait > 0:
                    raise outcome.throttled(math.ceil(wait))
            if st.rate_limit_per_minute is not None:
                rate = st.rate_limit_per_minute / 60.0
                bucket.tokens = min(float(st.rate_limit_burst),
                                    bucket.tokens + (now - bucket.at) * rate)
                bucket.at = now
                if bucket.tokens < 1.0:
                    raise outcome.throttled(math.ceil((1.0 - bucket.tokens) / rate))
                bucket.tokens -= 1.0
            if data_request:
                bucket.last_data = now
