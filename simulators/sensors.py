"""Sensor models: the CGM and the blood glucose meter, vectorized over the cohort.

CGM (:class:`CgmBank`)
    Samples the model's subcutaneous glucose every 1 or 5 minutes after a first-order lag
    (sensor and signal-processing delay on top of the plasma→interstitium delay the
    physiology already has), times a calibration gain that drifts slowly over each sensor
    session, plus autocorrelated non-Gaussian noise. The noise is the model of Breton &
    Kovatchev (J Diabetes Sci Technol 2008;2(5):853–862): a stationary Gaussian AR(1)
    process ``z`` pushed through a Johnson SU transform,
    ``e = ξ + λ·sinh((z − γ)/δ)``, with their published values ξ = −5.47 mg/dL,
    λ = 15.9574 mg/dL, γ = −0.5444, δ = 1.6898 and AR coefficient 0.7 per 5-minute step.
    Because the transform is non-linear, the error itself has a slightly lower lag-1
    autocorrelation than ``z``; :meth:`JohnsonSU.lag_correlation` gives it in closed form
    (0.690 at 5-minute sampling for the defaults). Sessions last ``session_days`` with a
    warm-up without values, sensors may fail early, readings drop out at random and
    compression lows (a sensor pressed on at night) pull values down for a while. Values are
    whole mg/dL within 40–400 mg/dL: a value beyond the range is reported as the limit (40 or
    400) with a below/above-range annunciation, as CGMS 1.0.1 does with its "result lower /
    higher than the device can process" warning bits.

Meter (:class:`MeterBank`)
    Capillary readings before meals, after some meals, at bedtime, now and then at random, and
    whenever the patient feels low. The error is multiplicative (CV) plus a small absolute part,
    with a small bias and Student-t tails, sized so that readings meet ISO 15197:2013 §6.3
    (≥ 95 % within ±15 mg/dL below 100 mg/dL and within ±15 % at or above). Readings outside
    20–600 mg/dL carry no number but a result-too-low/high annunciation ("LO"/"HI"); control
    solution tests, strip errors and a battery that runs low over its tests occur as configured.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    BloodGlucoseReading,
    CgmReading,
    MealContext,
    SampleLocation,
    SampleType,
)
from simulators.device_clock import DeviceLog, SimCalendar
from simulators.errors import SimulatorError

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
Int8Array = npt.NDArray[np.int8]


class SensorError(SimulatorError):
    """A sensor setting that cannot be realised."""


# --- CGM noise -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JohnsonSU:
    """Johnson SU transform of a standard normal variable into a sensor error (mg/dL)."""

    xi_mg_dl: float = -5.47
    lambda_mg_dl: float = 15.9574
    gamma: float = -0.5444
    delta: float = 1.6898

    def transform(self, z: FloatArray) -> FloatArray:
        out: FloatArray = self.xi_mg_dl + self.lambda_mg_dl * np.sinh((z - self.gamma)
                                                                      / self.delta)
        return out

    def _cov(self, rho: float) -> float:
        # For Z1, Z2 standard normal with correlation rho, a = 1/δ, b = −γ/δ:
        # Cov(sinh(aZ1+b), sinh(aZ2+b)) = e^{a²}/2 · [cosh(2b)(e^{a²ρ} − 1) + 1 − e^{−a²ρ}]
        # (from E[e^{aZ1 ± aZ2}] = e^{a²(1 ± ρ)}).
        a2 = 1.0 / self.delta ** 2
        b = -self.gamma / self.delta
        return (self.lambda_mg_dl ** 2 * math.exp(a2) / 2.0
                * (math.cosh(2 * b) * math.expm1(a2 * rho) - math.expm1(-a2 * rho)))

    def mean(self) -> float:
        a2 = 1.0 / self.delta ** 2
        return self.xi_mg_dl - self.lambda_mg_dl * math.exp(a2 / 2) * math.sinh(
            self.gamma / self.delta)

    def sd(self) -> float:
        return math.sqrt(self._cov(1.0))

    def lag_correlation(self, rho: float) -> float:
        """Autocorrelation of the error when the underlying Gaussian has correlation ``rho``."""
        return self._cov(rho) / self._cov(1.0)


@dataclass(frozen=True, slots=True)
class CgmSettings:
    """The CGM sensor (scenario section ``[cgm]``)."""

    enabled: bool = True
    interval_min: int = 5
    lag_min: float = 5.0
    noise_ar_per_5min: float = 0.7
    johnson: JohnsonSU = field(default_factory=JohnsonSU)
    noise_scale: float = 1.0
    calibration_sd_percent: float = 2.0
    drift_sd_percent_per_day: float = 0.5
    session_days: float = 10.0
    warmup_min: int = 120
    changeover_min: int = 30
    #: "random": at the start a session is already running since a random time;
    #: "start": the first session starts (and warms up) at the start of the simulation.
    first_session: str = "random"
    failure_per_session: float = 0.05
    dropouts_per_day: float = 1.0
    dropout_mean_min: float = 20.0
    compression_per_night: float = 0.2
    compression_depth_percent: float = 40.0
    compression_min_duration_min: int = 15
    compression_max_duration_min: int = 60
    night_start_minute: int = 23 * 60
    night_end_minute: int = 6 * 60
    range_low_mg_dl: float = 40.0
    range_high_mg_dl: float = 400.0

    def ar_coefficient(self) -> float:
        """AR(1) coefficient of the latent Gaussian per sample at ``interval_min``."""
        return float(self.noise_ar_per_5min ** (self.interval_min / 5.0))

    def expected_noise_autocorrelation(self) -> float:
        """Lag-1 (one sample) autocorrelation of the CGM error, as the model states it."""
        return self.johnson.lag_correlation(self.ar_coefficient())


class CgmNoise:
    """Breton–Kovatchev sensor error for ``n`` sensors, one stationary AR(1) state each."""

    def __init__(self, settings: CgmSettings, rngs: Sequence[np.random.Generator]) -> None:
        self.settings = settings
        self.rngs = rngs
        self.phi = settings.ar_coefficient()
        if not 0 <= self.phi < 1:
            raise SensorError("noise_ar_per_5min must be in [0, 1)")
        self.z = np.array([r.standard_normal() for r in rngs])

    def draw(self, samples: int) -> FloatArray:
        """The next ``samples`` errors per sensor (mg/dL), shape (n, samples)."""
        w = np.stack([r.standard_normal(samples) for r in self.rngs]) if self.rngs else \
            np.zeros((0, samples))
        z = np.empty_like(w)
        scale = math.sqrt(1.0 - self.phi ** 2)
        state = self.z
        for k in range(samples):
            state = self.phi * state + scale * w[:, k]
            z[:, k] = state
        self.z = state
        out: FloatArray = self.settings.noise_scale * self.settings.johnson.transform(z)
        return out


# --- CGM sessions and the sensor bank -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CgmSession:
    """One sensor session in simulation minutes (``start`` may precede the simulation)."""

    start: int
    warmup_end: int
    end: int
    failed: bool
    gain0: float
    drift_per_day: float


@dataclass(frozen=True, slots=True)
class _Compression:
    start: int
    duration: int
    depth: float


def _align_up(minute: float, interval: int) -> int:
    return math.ceil(minute / interval) * interval


class CgmBank:
    """The CGM sensors of a cohort: call :meth:`observe` once per minute.

    Results per sample ``k`` (at simulation minute ``k·interval``): ``values`` (mg/dL, NaN when
    there is no value), ``flags`` (−1 below range, +1 above, 0 otherwise) and ``quality`` (%).
    """

    def __init__(self, *, settings: CgmSettings, calendar: SimCalendar,
                 rngs: Sequence[np.random.Generator], chunk_min: int = 1440) -> None:
        if settings.interval_min not in (1, 5):
            raise SensorError(f"CGM interval must be 1 or 5 minutes, got "
                              f"{settings.interval_min}")
        self.settings = s = settings
        self.calendar = calendar
        self.n = n = len(rngs)
        self.interval = s.interval_min
        self.samples = -(-calendar.minutes // self.interval)
        self.values: Float32Array = np.full((n, self.samples), np.nan, dtype=np.float32)
        self.flags: Int8Array = np.zeros((n, self.samples), dtype=np.int8)
        self.quality: Int8Array = np.zeros((n, self.samples), dtype=np.int8)
        self._alpha = 1.0 if s.lag_min <= 0 else -math.expm1(-1.0 / s.lag_min)
        self._lagged: FloatArray | None = None
        self._chunk_samples = max(1, chunk_min // self.interval)
        self._chunk_start = -1
        # Independent streams: session/event plan and noise, so changing one setting does not
        # reshuffle the other.
        plan_rngs = [np.random.default_rng(r.integers(0, 2**63)) for r in rngs]
        self.noise = CgmNoise(s, rngs)
        self.sessions: list[list[CgmSession]] = []
        self.dropouts: list[list[tuple[int, int]]] = []
        self.compressions: list[list[_Compression]] = []
        for r in plan_rngs:
            self.sessions.append(self._plan_sessions(r))
            self.dropouts.append(self._plan_dropouts(r))
            self.compressions.append(self._plan_compressions(r))

    # -- plans -------------------------------------------------------------------------------

    def _plan_sessions(self, rng: np.random.Generator) -> list[CgmSession]:
        s = self.settings
        length = round(s.session_days * 1440)
        if length <= s.warmup_min:
            raise SensorError("session_days must be longer than the warm-up")
        if s.first_session == "start":
            start = 0
        else:
            start = -_align_up(rng.uniform(0, length), self.interval)
        out: list[CgmSession] = []
        while start < self.calendar.minutes:
            failed = bool(rng.random() < s.failure_per_session)
            end = start + length
            if failed:
                end = start + _align_up(rng.uniform(0.1, 0.9) * length, self.interval)
            out.append(CgmSession(
                start=start, warmup_end=start + s.warmup_min, end=end, failed=failed,
                gain0=float(rng.normal(0.0, s.calibration_sd_percent / 100.0)),
                drift_per_day=float(rng.normal(0.0, s.drift_sd_percent_per_day / 100.0))))
            start = _align_up(end + s.changeover_min, self.interval)
        return out

    def _plan_dropouts(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        s = self.settings
        count = int(rng.poisson(s.dropouts_per_day * self.calendar.minutes / 1440))
        out = []
        for _ in range(count):
            start = int(rng.integers(0, self.calendar.minutes))
            length = max(1, round(rng.exponential(s.dropout_mean_min)))
            out.append((start, start + length))
        return sorted(out)

    def _plan_compressions(self, rng: np.random.Generator) -> list[_Compression]:
        s = self.settings
        out = []
        for day in range(-1, self.calendar.days):
            night_start = self.calendar.minute_of(day, s.night_start_minute)
            end_day = day + 1 if s.night_end_minute <= s.night_start_minute else day
            night_end = self.calendar.minute_of(end_day, s.night_end_minute)
            happens = rng.random() < s.compression_per_night
            duration = int(rng.integers(s.compression_min_duration_min,
                                        s.compression_max_duration_min + 1))
            depth = rng.uniform(0.5, 1.0) * s.compression_depth_percent / 100.0
            if not happens or night_end - night_start <= duration:
                continue
            start = int(rng.integers(night_start, night_end - duration))
            if start + duration > 0 and start < self.calendar.minutes:
                out.append(_Compression(start, duration, float(depth)))
        return out

    def session_at(self, i: int, minute: int) -> CgmSession | None:
        """The session of sensor ``i`` running at ``minute`` (warm-up included), if any."""
        sessions = self.sessions[i]
        j = bisect.bisect_right([x.start for x in sessions], minute) - 1
        if j >= 0 and minute < sessions[j].end:
            return sessions[j]
        return None

    # -- per-chunk arrays ------------------------------------------------------------------

    def _prepare(self, k0: int) -> None:
        count = min(self._chunk_samples, self.samples - k0)
        t = (k0 + np.arange(count)) * self.interval
        n = self.n
        valid = np.zeros((n, count), dtype=bool)
        gain = np.ones((n, count))
        comp = np.ones((n, count))
        quality = np.full((n, count), 100, dtype=np.int8)
        lo, hi = int(t[0]), int(t[-1]) + 1
        for i in range(n):
            for sess in self.sessions[i]:
                if sess.end <= lo or sess.start >= hi:
                    continue
                a = int(np.searchsorted(t, sess.warmup_end))
                b = int(np.searchsorted(t, sess.end))
                if a < b:
                    valid[i, a:b] = True
                    days_in = (t[a:b] - sess.start) / 1440.0
                    gain[i, a:b] = 1.0 + sess.gain0 + sess.drift_per_day * days_in
                    first_day = int(np.searchsorted(t, sess.warmup_end + 1440))
                    quality[i, a:min(b, first_day)] = 90
            for d0, d1 in self.dropouts[i]:
                if d1 <= lo or d0 >= hi:
                    continue
                valid[i, np.searchsorted(t, d0):np.searchsorted(t, d1)] = False
            for c in self.compressions[i]:
                if c.start + c.duration <= lo or c.start >= hi:
                    continue
                a = int(np.searchsorted(t, c.start))
                b = int(np.searchsorted(t, c.start + c.duration))
                phase = (t[a:b] - c.start) / c.duration
                comp[i, a:b] = 1.0 - c.depth * np.sin(np.pi * phase) ** 2
                quality[i, a:b] = 60
        self._valid = valid
        self._gain = gain * comp
        self._quality = quality
        self._noise = self.noise.draw(count)
        self._chunk_start = k0

    # -- the minute step ---------------------------------------------------------------------

    def observe(self, minute: int, subcutaneous_mg_dl: FloatArray) -> FloatArray | None:
        """Feed the model's interstitial glucose at ``minute``; returns the new values when
        this minute is a sample time (NaN where a sensor has no value), else ``None``."""
        g = np.asarray(subcutaneous_mg_dl, dtype=np.float64)
        if self._lagged is None:
            self._lagged = g.copy()
        else:
            self._lagged += self._alpha * (g - self._lagged)
        if minute % self.interval:
            return None
        k = minute // self.interval
        if k >= self.samples:
            return None
        if self._chunk_start < 0 or k >= self._chunk_start + self._noise.shape[1]:
            self._prepare(k)
        j = k - self._chunk_start
        raw = self._lagged * self._gain[:, j] + self._noise[:, j]
        valid = self._valid[:, j]
        s = self.settings
        reported = np.clip(np.rint(raw), s.range_low_mg_dl, s.range_high_mg_dl)
        out: FloatArray = np.where(valid, reported, np.nan)
        self.values[:, k] = out
        self.flags[:, k] = np.where(valid & (raw < s.range_low_mg_dl), -1,
                                    np.where(valid & (raw > s.range_high_mg_dl), 1, 0))
        self.quality[:, k] = np.where(valid, self._quality[:, j], 0)
        return out

    # -- records -----------------------------------------------------------------------------

    def trend(self) -> Float32Array:
        return cgm_trend(self.values, self.interval)

    def materialize(self, i: int, log: DeviceLog, trend_row: Float32Array) -> None:
        """Add sensor ``i``'s readings and annunciations to ``log``."""
        cal = self.calendar
        horizon = cal.minutes
        for sess in self.sessions[i]:
            for minute, what in ((sess.start, Annunciation.SENSOR_WARMUP),
                                 (sess.end if sess.failed else -1,
                                  Annunciation.SENSOR_MALFUNCTION),
                                 (sess.end, Annunciation.SESSION_STOPPED)):
                if 0 <= minute < horizon:
                    log.add(AnnunciationEvent, cal.time_of(minute), annunciation=what)
        for d0, _ in self.dropouts[i]:
            running = self.session_at(i, d0)
            if running is not None and d0 >= running.warmup_end:
                log.add(AnnunciationEvent, cal.time_of(d0), annunciation=Annunciation.SIGNAL_LOSS)
        sessions = self.sessions[i]
        starts = [x.start for x in sessions]
        row = self.values[i]
        below = frozenset({Annunciation.BELOW_DEVICE_RANGE})
        above = frozenset({Annunciation.ABOVE_DEVICE_RANGE})
        none: frozenset[Annunciation] = frozenset()
        for k in np.flatnonzero(~np.isnan(row)).tolist():
            minute = k * self.interval
            sess = sessions[bisect.bisect_right(starts, minute) - 1]
            flag = int(self.flags[i, k])
            tr = float(trend_row[k])
            log.add(CgmReading, cal.time_of(minute), glucose_mg_dl=float(row[k]),
                    trend_mg_dl_per_min=None if math.isnan(tr) else round(tr, 2),
                    quality_percent=float(self.quality[i, k]),
                    annunciations=below if flag < 0 else above if flag > 0 else none,
                    session_start=cal.time_of(sess.start),
                    time_offset_min=minute - sess.start)


def cgm_trend(values: Float32Array | FloatArray, interval_min: int) -> Float32Array:
    """Rate of change (mg/dL/min) by least squares over the last 15 minutes of values.

    NaN where the current value is missing or fewer than about half the window has values.
    """
    v = np.asarray(values, dtype=np.float64)
    window = 15 // interval_min
    need = window // 2 + 2
    s0 = np.zeros_like(v)
    sx = np.zeros_like(v)
    sy = np.zeros_like(v)
    sxx = np.zeros_like(v)
    sxy = np.zeros_like(v)
    for j in range(window + 1):
        shifted = np.full_like(v, np.nan)
        shifted[:, j:] = v[:, :v.shape[1] - j] if j else v
        m = ~np.isnan(shifted)
        y = np.where(m, shifted, 0.0)
        x = -float(j * interval_min)
        s0 += m
        sx += m * x
        sxx += m * x * x
        sy += y
        sxy += y * x
    den = s0 * sxx - sx * sx
    ok = (s0 >= need) & ~np.isnan(v) & (den > 0)
    slope = np.where(ok, (s0 * sxy - sx * sy) / np.where(ok, den, 1.0), np.nan)
    return slope.astype(np.float32)


# --- blood glucose meter ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterSettings:
    """The blood glucose meter and the patient's testing habits (scenario section ``[meter]``)."""

    enabled: bool = True
    cv_percent: float = 4.0
    bias_percent: float = 1.0
    sd_mg_dl: float = 2.0
    #: Degrees of freedom of the Student-t error (heavier tails than Gaussian); 0 = Gaussian.
    tail_df: float = 6.0
    premeal_probability: float = 0.9
    postmeal_probability: float = 0.2
    bedtime_probability: float = 0.7
    bedtime_minute: int = 22 * 60 + 30
    bedtime_sd_min: float = 30.0
    casual_per_day: float = 0.3
    symptom_threshold_mg_dl: float = 65.0
    symptom_delay_min: int = 10
    retest_interval_min: int = 15
    control_every_days: float = 14.0
    control_mg_dl: float = 120.0
    error_probability: float = 0.005
    range_low_mg_dl: float = 20.0
    range_high_mg_dl: float = 600.0
    battery_tests: int = 1000


def meter_measure(true_mg_dl: FloatArray | float, settings: MeterSettings,
                  rng: np.random.Generator) -> FloatArray:
    """What the meter shows for blood of ``true_mg_dl`` (whole mg/dL, before range limits)."""
    g = np.asarray(true_mg_dl, dtype=np.float64)
    if settings.tail_df > 0:
        if settings.tail_df <= 2:
            raise SensorError("tail_df must exceed 2 (finite variance) or be 0")
        e = rng.standard_t(settings.tail_df, size=g.shape) / math.sqrt(
            settings.tail_df / (settings.tail_df - 2))
    else:
        e = rng.standard_normal(size=g.shape)
    sd = np.hypot(settings.cv_percent / 100.0 * g, settings.sd_mg_dl)
    out: FloatArray = np.maximum(0.0, np.rint(g * (1 + settings.bias_percent / 100.0) + sd * e))
    return out


def iso15197_fraction(measured: FloatArray, reference: FloatArray) -> float:
    """Share of readings within ISO 15197:2013 §6.3 limits: ±15 mg/dL below 100 mg/dL,
    ±15 % at or above 100 mg/dL."""
    m = np.asarray(measured, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    ok = np.where(r < 100, np.abs(m - r) <= 15, np.abs(m - r) <= 0.15 * r)
    return float(np.mean(ok))


_CONTEXT_CODES: tuple[MealContext | None, ...] = (None, *MealContext)


@dataclass(slots=True)
class _Reading:
    patient: int
    minute: int
    value: float
    control: bool
    context: int


class MeterBank:
    """One meter per patient: plans the day's tests and measures the true blood glucose."""

    def __init__(self, *, settings: MeterSettings, calendar: SimCalendar,
                 rngs: Sequence[np.random.Generator],
                 logs: Sequence[DeviceLog] | None = None) -> None:
        self.settings = settings
        self.calendar = calendar
        self.rngs = rngs
        self.n = len(rngs)
        self.logs = logs
        self.tests = [int(r.integers(0, max(1, int(0.8 * settings.battery_tests))))
                      for r in rngs]
        self._due: dict[int, list[tuple[int, MealContext | None, bool]]] = {}
        self._readings: list[_Reading] = []

    def _at(self, minute: int, i: int, context: MealContext | None, control: bool) -> None:
        if 0 <= minute < self.calendar.minutes:
            self._due.setdefault(minute, []).append((i, context, control))

    def plan_day(self, i: int, day: int, meals: Sequence[tuple[int, bool]]) -> None:
        """Schedule patient ``i``'s tests of local ``day``; ``meals`` are (minute, is_snack)."""
        s = self.settings
        rng = self.rngs[i]
        cal = self.calendar
        first = True
        for minute, snack in sorted(meals):
            if snack:
                continue
            if rng.random() < s.premeal_probability:
                wall = int(cal.wall_minute[minute]) if 0 <= minute < cal.minutes else 720
                ctx = MealContext.FASTING if first and wall < 10 * 60 else MealContext.PREPRANDIAL
                self._at(minute - int(rng.integers(2, 11)), i, ctx, False)
            if rng.random() < s.postmeal_probability:
                self._at(minute + 120 + int(rng.integers(-10, 11)), i,
                         MealContext.POSTPRANDIAL, False)
            first = False
        if rng.random() < s.bedtime_probability:
            wall = round(s.bedtime_minute + rng.normal(0.0, s.bedtime_sd_min))
            self._at(cal.minute_of(day, 0) + wall, i, MealContext.BEDTIME, False)
        for _ in range(int(rng.poisson(s.casual_per_day))):
            self._at(cal.minute_of(day, int(rng.integers(8 * 60, 22 * 60))), i,
                     MealContext.CASUAL, False)
        if s.control_every_days > 0 and rng.random() < 1.0 / s.control_every_days:
            self._at(cal.minute_of(day, int(rng.integers(8 * 60, 20 * 60))), i, None, True)

    def due(self, minute: int) -> list[tuple[int, MealContext | None, bool]]:
        return self._due.pop(minute, [])

    def measure(self, i: int, minute: int, true_mg_dl: float, context: MealContext | None,
                *, control: bool = False) -> float | None:
        """Patient ``i`` tests now; returns what the patient reads as a number (``None`` for a
        strip error; the range limit for LO/HI), or ``None`` for a control solution test."""
        s = self.settings
        rng = self.rngs[i]
        self.tests[i] += 1
        marks: set[Annunciation] = set()
        if self.tests[i] >= int(0.9 * s.battery_tests):
            marks.add(Annunciation.BATTERY_LOW)
        if self.tests[i] >= s.battery_tests:
            self.tests[i] = 0
        shown: float | None
        reported: float | None
        if rng.random() < s.error_probability:
            marks.add(Annunciation.SAMPLE_SIZE_INSUFFICIENT)
            reported = shown = None
            self._at(minute + 1, i, context, control)
        else:
            truth = s.control_mg_dl if control else true_mg_dl
            value = float(meter_measure(np.asarray(truth), s, rng))
            if value < s.range_low_mg_dl:
                marks.add(Annunciation.RESULT_TOO_LOW)
                reported, shown = None, s.range_low_mg_dl - 1
            elif value > s.range_high_mg_dl:
                marks.add(Annunciation.RESULT_TOO_HIGH)
                reported, shown = None, s.range_high_mg_dl + 1
            else:
                reported = shown = value
        self._readings.append(_Reading(i, minute, math.nan if reported is None else reported,
                                       control, _CONTEXT_CODES.index(context)))
        if self.logs is not None:
            self.logs[i].add(
                BloodGlucoseReading, self.calendar.time_of(minute), glucose_mg_dl=reported,
                sample_type=SampleType.CONTROL_SOLUTION if control
                else SampleType.CAPILLARY_WHOLE_BLOOD,
                sample_location=SampleLocation.CONTROL_SOLUTION if control
                else SampleLocation.FINGER,
                meal=None if control else context, annunciations=frozenset(marks))
        return None if control else shown

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """All readings as arrays: patient, minute, value (NaN: no number), control, context
        (index into ``(None, *MealContext)``)."""
        r = self._readings
        return {
            "patient": np.array([x.patient for x in r], dtype=np.int32),
            "minute": np.array([x.minute for x in r], dtype=np.int32),
            "value": np.array([x.value for x in r], dtype=np.float32),
            "control": np.array([x.control for x in r], dtype=bool),
            "context": np.array([x.context for x in r], dtype=np.int8),
        }


CONTEXTS = _CONTEXT_CODES
