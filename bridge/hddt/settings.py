"""Operating settings of the HDDT resource server (docs/hddt-api.md explains each choice)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bridge.hddt.errors import HddtError


class SettingsError(HddtError):
    """A setting outside what the HDDT specification allows."""


#: Minimum Historic-Data-Period of both glucose MIVs (mivs.md): 30 days.
MIN_HISTORIC_PERIOD = dt.timedelta(days=30)
#: Maximum Grace-Period of both glucose MIVs (mivs.md): 15 minutes.
MAX_GRACE_PERIOD = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class HddtSettings:
    """What the Device Data Recorder decides itself within the spec's bounds."""

    #: The fixed chunk time span of CGM chunks (retrieving-data.md "Continuous Measurements").
    cgm_chunk_span: dt.timedelta = dt.timedelta(hours=1)
    #: Sample period used when a chunk holds too few readings to tell the device's own.
    cgm_default_sample_period: dt.timedelta = dt.timedelta(minutes=5)
    #: Empty chunks after a sensor's newest reading are announced ``temp-unknown`` up to now,
    #: for at most this long after that reading (measurement-cgm.md "Quality of Data and
    #: Missing Values").
    cgm_pending_window: dt.timedelta = dt.timedelta(hours=24)
    #: Measurable range of the CGM sensors, sent as SampledData lower/upper limits.
    cgm_lower_limit_mg_dl: float = 40.0
    cgm_upper_limit_mg_dl: float = 400.0
    #: Measurable range of meters: value of a "LO"/"HI" reading with its comparator.
    bg_lower_limit_mg_dl: float = 20.0
    bg_upper_limit_mg_dl: float = 600.0
    #: Historic-Data-Period: how far back data is served (at least 30 days).
    historic_period: dt.timedelta = MIN_HISTORIC_PERIOD
    #: Status of a read of a resource older than the historic period: 404 (fhir-api-observation
    #: and retrieving-data) or 410 (error-codes "Resource was deleted").
    expired_read_status: int = 404
    #: Delay-From-Real-Time: without contact for longer, a Device's status is ``unknown``.
    delay_from_real_time: dt.timedelta = dt.timedelta(minutes=30)
    #: Page size when ``_count`` is absent, and the largest page served.
    page_size_default: int = 50
    page_size_max: int = 500
    #: Rate limit per pairing: a token bucket of ``rate_limit_burst`` requests refilled at
    #: ``rate_limit_per_minute``; None switches it off (operational-requirements.md).
    rate_limit_per_minute: float | None = 600.0
    rate_limit_burst: int = 120
    #: Grace-Period: minimum time between two data requests of one pairing (0: not enforced).
    grace_period: dt.timedelta = dt.timedelta(0)
    #: Vendor Holdup targets (mivs.md): ingest to visible on the interface.
    holdup_blood_glucose: dt.timedelta = dt.timedelta(seconds=60)
    holdup_cgm: dt.timedelta = dt.timedelta(minutes=15)
    #: How long the patient's devices and their newest reading times are reused between
    #: requests (seconds; 0: read per request). Far below the Vendor Holdup.
    context_cache_s: float = 1.0
    #: Keep built CGM chunks per cell fingerprint (off: every search builds its chunks).
    cell_cache: bool = True
    #: Observation search answers kept, as encoded bodies, per patient, granted scopes,
    #: query and format: at most this many bytes in all (least recently used go first;
    #: 0 switches the response cache off). Each use is checked by one fingerprint query.
    response_cache_bytes: int = 32 * 1024 * 1024
    #: Longest time (seconds, by the server's clock) a kept answer is served: bounds what
    #: changes with time alone (a device turning ``unknown``, data leaving the historic
    #: period, a new pending chunk), as data changes are caught by the fingerprint.
    response_cache_max_age_s: float = 1.0
    #: Check a kept answer (its one fingerprint query) on the event loop rather than in a
    #: worker thread: the handover to a thread cost more than the query (about 10 % fewer
    #: requests/s, docs/hddt-api.md); building an answer always runs in the worker threads.
    response_cache_check_on_loop: bool = True
    #: PostgreSQL: asyncio connections the checks on the event loop use in turn, so the loop
    #: serves other requests during the query (measured by bench/hddt_api.py); 0 runs the
    #: check on a pooled blocking connection, the loop waiting for it.
    response_cache_check_connections: int = 4
    #: Threads that run the interactions (database and resource building) concurrently;
    #: 0 runs them on the event loop itself.
    worker_threads: int = 4
    #: Audit entries are written in batches of at most this many, at least this often.
    audit_batch: int = 200
    audit_flush_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if self.historic_period < MIN_HISTORIC_PERIOD:
            raise SettingsError("the Historic-Data-Period must be at least 30 days, got "
                                f"{self.historic_period}")
        if not dt.timedelta(0) <= self.grace_period <= MAX_GRACE_PERIOD:
            raise SettingsError(f"the Grace-Period must be 0 to 15 minutes, got "
                                f"{self.grace_period}")
        if self.cgm_chunk_span < dt.timedelta(minutes=5) or (
                dt.timedelta(days=1) % self.cgm_chunk_span):
            raise SettingsError("the CGM chunk span must divide a day and be at least 5 "
                                f"minutes, got {self.cgm_chunk_span}")
        if self.expired_read_status not in (404, 410):
            raise SettingsError(f"expired reads answer 404 or 410, not "
                                f"{self.expired_read_status}")
        if not 1 <= self.page_size_default <= self.page_size_max:
            raise SettingsError("page sizes need 1 <= default <= max")
        if self.response_cache_bytes < 0 or self.response_cache_max_age_s < 0:
            raise SettingsError("the response cache needs response_cache_bytes >= 0 and "
                                "response_cache_max_age_s >= 0")
        if self.response_cache_check_connections < 0:
            raise SettingsError("response_cache_check_connections must be >= 0, got "
                                f"{self.response_cache_check_connections}")
        if self.worker_threads < 0:
            raise SettingsError(f"worker_threads must be >= 0, got {self.worker_threads}")
        if self.rate_limit_per_minute is not None and (
                self.rate_limit_per_minute <= 0 or self.rate_limit_burst < 1):
            raise SettingsError("the rate limit needs a positive rate and a burst >= 1")
