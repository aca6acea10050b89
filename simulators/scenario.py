"""Scenarios: what the simulated patients eat, when they exercise, how they dose and test.

A scenario is a TOML file (see ``configs/scenarios/README.md`` for every key). It holds either
a fixed daily plan (``[[meal]]``, ``[[exercise]]``, ``[[temp_basal]]`` entries, repeated every
day or on the listed days) or a ``[generator]`` that draws each day's meals, snacks, skipped
and late boluses and exercise from distributions, deterministically per seed. The sections
``[therapy]``, ``[pump]``, ``[cgm]``, ``[meter]`` and ``[clock]`` configure the therapy and
the devices; every key has a default.

:func:`load_scenario` takes a path or a name. A name resolves, in this order, to
``configs/scenarios/NAME.toml`` under the current directory and the same folder in the source
tree this package was loaded from (the project is installed from its checkout, editable).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from bridge.tomlconfig import Bounds, TomlTable, Wording
from simulators.device_clock import (
    DEFAULT_TIMEZONE,
    ClockEventSpec,
    ClockSettings,
    DeviceClockError,
    resolve_timezone,
)
from simulators.errors import SimulatorError
from simulators.sensors import CgmSettings, JohnsonSU, MeterSettings
from simulators.therapy import BasalBlock, PumpSettings, TherapyMode, TherapySettings

MINUTES_PER_DAY = 1440
SOURCE_SCENARIOS = Path(__file__).resolve().parents[1] / "configs" / "scenarios"


class ScenarioError(SimulatorError):
    """A scenario file that cannot be used; names the file and the key."""

    def __init__(self, message: str, *, source: str = "", key: str = "") -> None:
        self.source = source
        self.key = key
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class BolusBehaviour(StrEnum):
    NORMAL = "normal"
    LATE = "late"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Meal:
    """A meal starting at local ``minute_of_day``; ``carbs_g`` eaten evenly over
    ``duration_min``. The bolus comes at the meal start, ``bolus_delay_min`` later (late), or
    not at all (skipped)."""

    minute_of_day: int
    carbs_g: float
    duration_min: int = 15
    bolus: BolusBehaviour = BolusBehaviour.NORMAL
    bolus_delay_min: int = 0
    snack: bool = False
    name: str = ""
    days: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Exercise:
    minute_of_day: int
    duration_min: int
    intensity: float
    days: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class TempBasal:
    minute_of_day: int
    percent: float
    duration_min: int
    days: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One patient's concrete plan for one local day."""

    meals: tuple[Meal, ...] = ()
    exercise: tuple[Exercise, ...] = ()
    temp_basals: tuple[TempBasal, ...] = ()


# --- generator settings ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MealDistribution:
    name: str
    time_mean_minute: int
    time_sd_min: float = 30.0
    carbs_mean_g: float = 50.0
    carbs_sd_g: float = 15.0
    carbs_min_g: float = 5.0
    carbs_max_g: float = 150.0
    probability: float = 1.0
    duration_min: int = 15


@dataclass(frozen=True, slots=True)
class SnackSettings:
    per_day_mean: float = 1.0
    earliest_minute: int = 9 * 60
    latest_minute: int = 21 * 60 + 30
    carbs_min_g: float = 10.0
    carbs_max_g: float = 30.0
    bolus_probability: float = 0.3
    duration_min: int = 5


@dataclass(frozen=True, slots=True)
class BolusHabits:
    skip_probability: float = 0.05
    late_probability: float = 0.1
    late_min_delay_min: int = 15
    late_max_delay_min: int = 60


@dataclass(frozen=True, slots=True)
class ExerciseSettings:
    probability: float = 0.3
    earliest_minute: int = 16 * 60
    latest_minute: int = 20 * 60
    duration_min_min: int = 30
    duration_max_min: int = 60
    intensity_min: float = 0.3
    intensity_max: float = 0.7


@dataclass(frozen=True, slots=True)
class RandomDay:
    meals: tuple[MealDistribution, ...]
    snacks: SnackSettings = field(default_factory=SnackSettings)
    bolus: BolusHabits = field(default_factory=BolusHabits)
    exercise: ExerciseSettings = field(default_factory=ExerciseSettings)

    def draw(self, rng: np.random.Generator) -> DayPlan:
        meals: list[Meal] = []
        for dist in self.meals:
            if rng.random() >= dist.probability:
                continue
            time = int(np.clip(round(rng.normal(dist.time_mean_minute, dist.time_sd_min)),
                               0, MINUTES_PER_DAY - 1))
            carbs = float(np.clip(round(rng.normal(dist.carbs_mean_g, dist.carbs_sd_g)),
                                  dist.carbs_min_g, dist.carbs_max_g))
            behaviour, delay = self._bolus(rng)
            meals.append(Meal(time, carbs, dist.duration_min, behaviour, delay, False,
                              dist.name))
        snacks = self.snacks
        for _ in range(int(rng.poisson(snacks.per_day_mean))):
            time = int(rng.integers(snacks.earliest_minute, snacks.latest_minute + 1))
            carbs = float(round(rng.uniform(snacks.carbs_min_g, snacks.carbs_max_g)))
            bolused = rng.random() < snacks.bolus_probability
            meals.append(Meal(time, carbs, snacks.duration_min,
                              BolusBehaviour.NORMAL if bolused else BolusBehaviour.SKIPPED,
                              0, True, "snack"))
        exercise: list[Exercise] = []
        ex = self.exercise
        if rng.random() < ex.probability:
            duration = int(rng.integers(ex.duration_min_min, ex.duration_max_min + 1))
            start = int(rng.integers(ex.earliest_minute, max(ex.earliest_minute,
                                                             ex.latest_minute) + 1))
            intensity = float(rng.uniform(ex.intensity_min, ex.intensity_max))
            exercise.append(Exercise(start, duration, round(intensity, 3)))
        meals.sort(key=lambda m: m.minute_of_day)
        return DayPlan(tuple(meals), tuple(exercise))

    def _bolus(self, rng: np.random.Generator) -> tuple[BolusBehaviour, int]:
        u = rng.random()
        b = self.bolus
        if u < b.skip_probability:
            return BolusBehaviour.SKIPPED, 0
        if u < b.skip_probability + b.late_probability:
            return BolusBehaviour.LATE, int(rng.integers(b.late_min_delay_min,
                                                         b.late_max_delay_min + 1))
        return BolusBehaviour.NORMAL, 0


# --- the scenario -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str = ""
    source: str = "<built-in>"
    start_date: dt.date = dt.date(2027, 7, 1)
    timezone: str = DEFAULT_TIMEZONE
    meals: tuple[Meal, ...] = ()
    exercise: tuple[Exercise, ...] = ()
    temp_basals: tuple[TempBasal, ...] = ()
    generator: RandomDay | None = None
    therapy: TherapySettings = field(default_factory=TherapySettings)
    pump: PumpSettings = field(default_factory=PumpSettings)
    cgm: CgmSettings = field(default_factory=CgmSettings)
    meter: MeterSettings = field(default_factory=MeterSettings)
    clock: ClockSettings = field(default_factory=ClockSettings)

    def day_plan(self, day: int, rng: np.random.Generator) -> DayPlan:
        """The plan of local ``day`` (0-based); ``rng`` is the patient's scenario stream."""
        if self.generator is not None:
            return self.generator.draw(rng)

        def today(days: tuple[int, ...] | None) -> bool:
            return days is None or day in days

        return DayPlan(tuple(m for m in self.meals if today(m.days)),
                       tuple(e for e in self.exercise if today(e.days)),
                       tuple(t for t in self.temp_basals if today(t.days)))


# --- loading ------------------------------------------------------------------------------

def scenario_search_paths(name: str) -> list[Path]:
    file = f"{name}.toml"
    return [Path.cwd() / "configs" / "scenarios" / file, SOURCE_SCENARIOS / file]


def builtin_scenario_names() -> list[str]:
    names = {p.stem for p in SOURCE_SCENARIOS.glob("*.toml")}
    return sorted(names)


def resolve_scenario(name_or_path: str | Path) -> Path:
    """The file a scenario argument names (a path, or a name of a shipped scenario)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or "/" in text or "\\" in text:
        if path.is_file():
            return path
        raise ScenarioError(f"scenario file {text} does not exist")
    if not text.replace("-", "").replace("_", "").isalnum():
        raise ScenarioError(f"{text!r} is neither a scenario file nor a scenario name")
    for candidate in scenario_search_paths(text):
        if candidate.is_file():
            return candidate
    known = ", ".join(builtin_scenario_names()) or "none"
    raise ScenarioError(f"no scenario named {text!r} (known: {known}; or give a path to a "
                        f".toml file)")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and check a scenario file; a :class:`ScenarioError` names file and key."""
    path = resolve_scenario(name_or_path)
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read: {exc}", source=source) from None
    return parse_scenario(data, source=source, default_name=path.stem)


class _Wording(Wording):
    """The scenario files' established wording (``must be ≥ 0, got -1``)."""

    names: ClassVar[Mapping[str, str]] = {**Wording.names, "integer": "a whole number",
                                "date": "a date YYYY-MM-DD"}

    def describe(self, value: Any) -> str:
        return _describe(value)

    def choice_type(self, choices: Sequence[str]) -> str:
        return self.names["string"]

    def not_a_choice(self, choices: Sequence[str], value: str) -> str:
        return f"expected one of {', '.join(map(repr, choices))}, got {value!r}"

    def out_of_range(self, kind: Literal["integer", "number"], value: float,
                     bounds: Bounds) -> str:
        shown = f"{value:g}" if kind == "number" else f"{value}"
        if bounds.too_low(value):
            lo = f"{bounds.lo:g}" if kind == "number" else f"{bounds.lo}"
            return f"must be {'>' if bounds.lo_open else '≥'} {lo}, got {shown}"
        hi = f"{bounds.hi:g}" if kind == "number" else f"{bounds.hi}"
        return f"must be ≤ {hi}, got {shown}"

    def unknown_keys(self, table_key: str, unknown: Sequence[str],
                     known: Iterable[str]) -> tuple[str, str]:
        key = f"{table_key}.{unknown[0]}" if table_key else unknown[0]
        return key, "unknown key"


class _Table(TomlTable):
    """A scenario table: the shared reader plus the scenario's own kinds of value."""

    def time_of_day(self, key: str, default: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise self.fail(key, "missing (a local time of day such as \"07:30\")")
            return default
        if isinstance(value, dt.time):
            return value.hour * 60 + value.minute
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                h, m = int(parts[0]), int(parts[1])
                if 0 <= h < 24 and 0 <= m < 60:
                    return h * 60 + m
        raise self.fail(key, f"expected a local time of day \"HH:MM\" (00:00…23:59), got "
                             f"{_describe(value)}")

    def local_datetime(self, key: str) -> dt.datetime | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is None:
                return parsed
        raise self.fail(key, f"expected a local date-time YYYY-MM-DDTHH:MM:SS without zone, "
                             f"got {_describe(value)}")

    def days(self, key: str) -> tuple[int, ...] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise self.fail(key, f"expected a list of day numbers (0 = first day), got "
                                 f"{_describe(value)}")
        return tuple(value)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _meal(t: _Table) -> Meal:
    behaviour = BolusBehaviour(t.choice("bolus", [b.value for b in BolusBehaviour], "normal"))
    default_delay = 30 if behaviour is BolusBehaviour.LATE else 0
    meal = Meal(
        minute_of_day=t.time_of_day("time"),
        carbs_g=t.number("carbs_g", 0.0, lo=0, hi=500),
        duration_min=t.integer("duration_min", 15, lo=1, hi=240),
        bolus=behaviour,
        bolus_delay_min=t.integer("bolus_delay_min", default_delay, lo=0, hi=600),
        snack=t.boolean("snack", False),
        name=t.text("name", "", allow_empty=True),
        days=t.days("days"),
    )
    t.finish()
    return meal


def _exercise(t: _Table) -> Exercise:
    ex = Exercise(t.time_of_day("time"), t.integer("duration_min", 45, lo=1, hi=600),
                  t.number("intensity", 0.5, lo=0, hi=1), t.days("days"))
    t.finish()
    return ex


def _temp_basal(t: _Table) -> TempBasal:
    tb = TempBasal(t.time_of_day("time"), t.number("percent", 100.0, lo=0, hi=250),
                   t.integer("duration_min", 60, lo=1, hi=24 * 60), t.days("days"))
    t.finish()
    return tb


def _generator(g: _Table) -> RandomDay:
    meals = []
    for t in g.tables("meal"):
        meals.append(MealDistribution(
            name=t.text("name", "", allow_empty=True),
            time_mean_minute=t.time_of_day("time"),
            time_sd_min=t.number("time_sd_min", 30.0, lo=0, hi=300),
            carbs_mean_g=t.number("carbs_mean_g", 50.0, lo=0, hi=500),
            carbs_sd_g=t.number("carbs_sd_g", 15.0, lo=0, hi=200),
            carbs_min_g=t.number("carbs_min_g", 5.0, lo=0, hi=500),
            carbs_max_g=t.number("carbs_max_g", 150.0, lo=0, hi=500),
            probability=t.number("probability", 1.0, lo=0, hi=1),
            duration_min=t.integer("duration_min", 15, lo=1, hi=240)))
        if meals[-1].carbs_min_g > meals[-1].carbs_max_g:
            raise t.fail("carbs_min_g", "must not exceed carbs_max_g")
        t.finish()
    s = g.table("snacks")
    snacks = SnackSettings(
        per_day_mean=s.number("per_day_mean", 1.0, lo=0, hi=20),
        earliest_minute=s.time_of_day("earliest", 9 * 60),
        latest_minute=s.time_of_day("latest", 21 * 60 + 30),
        carbs_min_g=s.number("carbs_min_g", 10.0, lo=0, hi=200),
        carbs_max_g=s.number("carbs_max_g", 30.0, lo=0, hi=200),
        bolus_probability=s.number("bolus_probability", 0.3, lo=0, hi=1),
        duration_min=s.integer("duration_min", 5, lo=1, hi=120))
    if snacks.earliest_minute > snacks.latest_minute:
        raise s.fail("earliest", "must not be later than latest")
    if snacks.carbs_min_g > snacks.carbs_max_g:
        raise s.fail("carbs_min_g", "must not exceed carbs_max_g")
    s.finish()
    b = g.table("bolus")
    habits = BolusHabits(
        skip_probability=b.number("skip_probability", 0.05, lo=0, hi=1),
        late_probability=b.number("late_probability", 0.1, lo=0, hi=1),
        late_min_delay_min=b.integer("late_min_delay_min", 15, lo=0, hi=600),
        late_max_delay_min=b.integer("late_max_delay_min", 60, lo=0, hi=600))
    if habits.skip_probability + habits.late_probability > 1:
        raise b.fail("late_probability", "skip_probability + late_probability must not exceed 1")
    if habits.late_min_delay_min > habits.late_max_delay_min:
        raise b.fail("late_min_delay_min", "must not exceed late_max_delay_min")
    b.finish()
    e = g.table("exercise")
    ex = ExerciseSettings(
        probability=e.number("probability", 0.3, lo=0, hi=1),
        earliest_minute=e.time_of_day("earliest", 16 * 60),
        latest_minute=e.time_of_day("latest", 20 * 60),
        duration_min_min=e.integer("duration_min_min", 30, lo=1, hi=600),
        duration_max_min=e.integer("duration_max_min", 60, lo=1, hi=600),
        intensity_min=e.number("intensity_min", 0.3, lo=0, hi=1),
        intensity_max=e.number("intensity_max", 0.7, lo=0, hi=1))
    if ex.duration_min_min > ex.duration_max_min:
        raise e.fail("duration_min_min", "must not exceed duration_max_min")
    if ex.intensity_min > ex.intensity_max:
        raise e.fail("intensity_min", "must not exceed intensity_max")
    e.finish()
    g.finish()
    return RandomDay(tuple(meals), snacks, habits, ex)


def _therapy(t: _Table) -> TherapySettings:
    d = TherapySettings()
    blocks = []
    for b in t.tables("basal_profile"):
        blocks.append(BasalBlock(b.time_of_day("start"), b.number("factor", 1.0, lo=0, hi=5)))
        b.finish()
    if blocks and len({b.minute_of_day for b in blocks}) != len(blocks):
        raise t.fail("basal_profile", "two blocks start at the same time")
    tbr = t.opt_number("exercise_temp_basal_percent", lo=0, hi=250)
    settings = TherapySettings(
        mode=TherapyMode(t.choice("mode", [m.value for m in TherapyMode], d.mode.value)),
        target_mg_dl=t.number("target_mg_dl", d.target_mg_dl, lo=70, hi=200),
        correction=t.boolean("correction", d.correction),
        correction_above_mg_dl=t.number("correction_above_mg_dl", d.correction_above_mg_dl,
                                        lo=0, hi=600),
        correction_interval_min=t.integer("correction_interval_min", d.correction_interval_min,
                                          lo=0, hi=24 * 60),
        max_bolus_u=t.number("max_bolus_u", d.max_bolus_u, lo=0, hi=100, lo_open=True),
        basal_profile=tuple(blocks) or d.basal_profile,
        exercise_temp_basal_percent=tbr if "exercise_temp_basal_percent" in t.data
        else d.exercise_temp_basal_percent,
        exercise_temp_basal_lead_min=t.integer("exercise_temp_basal_lead_min",
                                               d.exercise_temp_basal_lead_min, lo=0, hi=600),
        pen_increment_u=t.number("pen_increment_u", d.pen_increment_u, lo=0.001, hi=5),
        hypo_treatment_g=t.number("hypo_treatment_g", d.hypo_treatment_g, lo=0, hi=100),
        hypo_threshold_mg_dl=t.number("hypo_threshold_mg_dl", d.hypo_threshold_mg_dl,
                                      lo=0, hi=150),
        hypo_recheck_min=t.integer("hypo_recheck_min", d.hypo_recheck_min, lo=1, hi=600))
    t.finish()
    return settings


def _increment(t: _Table, key: str, default: float) -> float:
    value = t.number(key, default, lo=0.001, hi=10)
    if abs(round(value * 1000) - value * 1000) > 1e-6:
        raise t.fail(key, f"must be a multiple of 0.001 U, got {value:g}")
    return value


def _pump(t: _Table) -> PumpSettings:
    d = PumpSettings()
    settings = PumpSettings(
        basal_increment_u=_increment(t, "basal_increment_u", d.basal_increment_u),
        bolus_increment_u=_increment(t, "bolus_increment_u", d.bolus_increment_u),
        basal_rate_step_u_per_h=_increment(t, "basal_rate_step_u_per_h",
                                           d.basal_rate_step_u_per_h),
        bolus_speed_u_per_min=t.number("bolus_speed_u_per_min", d.bolus_speed_u_per_min,
                                       lo=0.01, hi=100),
        reservoir_capacity_u=t.number("reservoir_capacity_u", d.reservoir_capacity_u,
                                      lo=1, hi=3000),
        fill_u=t.number("fill_u", d.fill_u, lo=1, hi=3000),
        initial_u=t.opt_number("initial_u", lo=0, hi=3000),
        prime_u=t.number("prime_u", d.prime_u, lo=0, hi=50),
        low_reservoir_u=t.number("low_reservoir_u", d.low_reservoir_u, lo=0, hi=3000),
        refill_every_days=t.integer("refill_every_days", d.refill_every_days, lo=0, hi=60),
        refill_minute=t.time_of_day("refill_time", d.refill_minute),
        empty_refill_delay_min=t.integer("empty_refill_delay_min", d.empty_refill_delay_min,
                                         lo=0, hi=24 * 60),
        occlusion_per_day=t.number("occlusion_per_day", d.occlusion_per_day, lo=0, hi=10),
        occlusion_resolve_min=t.integer("occlusion_resolve_min", d.occlusion_resolve_min,
                                        lo=1, hi=24 * 60),
        battery_life_days=t.number("battery_life_days", d.battery_life_days, lo=0, hi=3650),
        battery_replace_delay_min=t.integer("battery_replace_delay_min",
                                            d.battery_replace_delay_min, lo=1, hi=30 * 1440))
    if settings.fill_u > settings.reservoir_capacity_u:
        raise t.fail("fill_u", "must not exceed reservoir_capacity_u")
    if settings.prime_u >= settings.fill_u:
        raise t.fail("prime_u", "must be less than fill_u")
    t.finish()
    return settings


def _cgm(t: _Table) -> CgmSettings:
    d = CgmSettings()
    j = t.table("johnson")
    dj = d.johnson
    johnson = JohnsonSU(xi_mg_dl=j.number("xi_mg_dl", dj.xi_mg_dl, lo=-200, hi=200),
                        lambda_mg_dl=j.number("lambda_mg_dl", dj.lambda_mg_dl, lo=0, hi=500,
                                              lo_open=True),
                        gamma=j.number("gamma", dj.gamma, lo=-20, hi=20),
                        delta=j.number("delta", dj.delta, lo=0.1, hi=100))
    j.finish()
    interval = t.integer("interval_min", d.interval_min, lo=1, hi=5)
    if interval not in (1, 5):
        raise t.fail("interval_min", f"must be 1 or 5, got {interval}")
    settings = CgmSettings(
        enabled=t.boolean("enabled", d.enabled),
        interval_min=interval,
        lag_min=t.number("lag_min", d.lag_min, lo=0, hi=60),
        noise_ar_per_5min=t.number("noise_ar_per_5min", d.noise_ar_per_5min, lo=0, hi=0.99),
        johnson=johnson,
        noise_scale=t.number("noise_scale", d.noise_scale, lo=0, hi=10),
        calibration_sd_percent=t.number("calibration_sd_percent", d.calibration_sd_percent,
                                        lo=0, hi=50),
        drift_sd_percent_per_day=t.number("drift_sd_percent_per_day",
                                          d.drift_sd_percent_per_day, lo=0, hi=20),
        session_days=t.number("session_days", d.session_days, lo=0.5, hi=30),
        warmup_min=t.integer("warmup_min", d.warmup_min, lo=0, hi=24 * 60),
        changeover_min=t.integer("changeover_min", d.changeover_min, lo=0, hi=7 * 1440),
        first_session=t.choice("first_session", ["random", "start"], d.first_session),
        failure_per_session=t.number("failure_per_session", d.failure_per_session, lo=0, hi=1),
        dropouts_per_day=t.number("dropouts_per_day", d.dropouts_per_day, lo=0, hi=100),
        dropout_mean_min=t.number("dropout_mean_min", d.dropout_mean_min, lo=1, hi=24 * 60),
        compression_per_night=t.number("compression_per_night", d.compression_per_night,
                                       lo=0, hi=1),
        compression_depth_percent=t.number("compression_depth_percent",
                                           d.compression_depth_percent, lo=0, hi=90),
        compression_min_duration_min=t.integer("compression_min_duration_min",
                                               d.compression_min_duration_min, lo=1, hi=600),
        compression_max_duration_min=t.integer("compression_max_duration_min",
                                               d.compression_max_duration_min, lo=1, hi=600),
        night_start_minute=t.time_of_day("night_start", d.night_start_minute),
        night_end_minute=t.time_of_day("night_end", d.night_end_minute),
        range_low_mg_dl=t.number("range_low_mg_dl", d.range_low_mg_dl, lo=0, hi=200),
        range_high_mg_dl=t.number("range_high_mg_dl", d.range_high_mg_dl, lo=100, hi=1000))
    if settings.compression_min_duration_min > settings.compression_max_duration_min:
        raise t.fail("compression_min_duration_min", "must not exceed compression_max_duration_min")
    if settings.session_days * 1440 <= settings.warmup_min:
        raise t.fail("warmup_min", "must be shorter than the session")
    if settings.range_low_mg_dl >= settings.range_high_mg_dl:
        raise t.fail("range_low_mg_dl", "must be below range_high_mg_dl")
    t.finish()
    return settings


def _meter(t: _Table) -> MeterSettings:
    d = MeterSettings()
    df = t.number("tail_df", d.tail_df, lo=0, hi=1000)
    if 0 < df <= 2:
        raise t.fail("tail_df", f"must be 0 (Gaussian) or greater than 2, got {df:g}")
    settings = MeterSettings(
        enabled=t.boolean("enabled", d.enabled),
        cv_percent=t.number("cv_percent", d.cv_percent, lo=0, hi=50),
        bias_percent=t.number("bias_percent", d.bias_percent, lo=-50, hi=50),
        sd_mg_dl=t.number("sd_mg_dl", d.sd_mg_dl, lo=0, hi=100),
        tail_df=df,
        premeal_probability=t.number("premeal_probability", d.premeal_probability, lo=0, hi=1),
        postmeal_probability=t.number("postmeal_probability", d.postmeal_probability,
                                      lo=0, hi=1),
        bedtime_probability=t.number("bedtime_probability", d.bedtime_probability, lo=0, hi=1),
        bedtime_minute=t.time_of_day("bedtime", d.bedtime_minute),
        bedtime_sd_min=t.number("bedtime_sd_min", d.bedtime_sd_min, lo=0, hi=300),
        casual_per_day=t.number("casual_per_day", d.casual_per_day, lo=0, hi=50),
        symptom_threshold_mg_dl=t.number("symptom_threshold_mg_dl",
                                         d.symptom_threshold_mg_dl, lo=0, hi=150),
        symptom_delay_min=t.integer("symptom_delay_min", d.symptom_delay_min, lo=0, hi=600),
        retest_interval_min=t.integer("retest_interval_min", d.retest_interval_min,
                                      lo=1, hi=600),
        control_every_days=t.number("control_every_days", d.control_every_days, lo=0, hi=3650),
        control_mg_dl=t.number("control_mg_dl", d.control_mg_dl, lo=20, hi=600),
        error_probability=t.number("error_probability", d.error_probability, lo=0, hi=0.5),
        range_low_mg_dl=t.number("range_low_mg_dl", d.range_low_mg_dl, lo=0, hi=100),
        range_high_mg_dl=t.number("range_high_mg_dl", d.range_high_mg_dl, lo=100, hi=2000),
        battery_tests=t.integer("battery_tests", d.battery_tests, lo=10, hi=1_000_000))
    t.finish()
    return settings


def _clock(t: _Table) -> ClockSettings:
    d = ClockSettings()
    zone = t.text("timezone", "", allow_empty=True) or None
    if zone is not None:
        _check_zone(t, "timezone", zone)
    events = []
    for e in t.tables("event"):
        device = e.choice("device", ["all", "pump", "cgm", "meter"], "all")
        day = e.integer("day", 0, lo=0)
        minute = e.time_of_day("time")
        jump = e.opt_number("jump_s", lo=-10 * 365 * 86400, hi=10 * 365 * 86400)
        reset = e.local_datetime("reset_to")
        if (jump is None) == (reset is None):
            raise e.fail("jump_s", "give exactly one of jump_s and reset_to")
        events.append(ClockEventSpec(device, day, minute, jump, reset))
        e.finish()
    settings = ClockSettings(
        timezone=zone,
        offset_s=t.number("offset_s", d.offset_s, lo=-10 * 365 * 86400, hi=10 * 365 * 86400),
        offset_sd_s=t.number("offset_sd_s", d.offset_sd_s, lo=0, hi=86400),
        drift_ppm=t.number("drift_ppm", d.drift_ppm, lo=-10000, hi=10000),
        drift_sd_ppm=t.number("drift_sd_ppm", d.drift_sd_ppm, lo=0, hi=10000),
        events=tuple(events))
    t.finish()
    return settings


def _check_zone(t: _Table, key: str, zone: str) -> None:
    try:
        resolve_timezone(zone)
    except DeviceClockError as exc:
        raise t.fail(key, str(exc)) from None


def parse_scenario(data: Mapping[str, Any], *, source: str = "<memory>",
                   default_name: str = "scenario") -> Scenario:
    """Build a :class:`Scenario` from parsed TOML; errors name ``source`` and the key."""
    top = _Table(data, wording=_Wording(), error=lambda key, message: ScenarioError(
        message, source=source, key=key))
    name = top.text("name", default_name, allow_empty=True)
    description = top.text("description", "", allow_empty=True)
    start_date = top.date("start_date", dt.date(2027, 7, 1))
    timezone = top.text("timezone", DEFAULT_TIMEZONE, allow_empty=True)
    _check_zone(top, "timezone", timezone)
    meals = tuple(_meal(t) for t in top.tables("meal"))
    exercise = tuple(_exercise(t) for t in top.tables("exercise"))
    temp_basals = tuple(_temp_basal(t) for t in top.tables("temp_basal"))
    generator = None
    if "generator" in top.data:
        if meals or exercise:
            raise top.fail("generator", "a scenario has either a [generator] or fixed "
                                        "[[meal]] / [[exercise]] entries, not both")
        generator = _generator(top.table("generator"))
        if not generator.meals:
            raise top.fail("generator.meal", "the generator needs at least one [[generator.meal]]")
    scenario = Scenario(
        name=name, description=description, source=source, start_date=start_date,
        timezone=timezone, meals=meals, exercise=exercise, temp_basals=temp_basals,
        generator=generator, therapy=_therapy(top.table("therapy")),
        pump=_pump(top.table("pump")), cgm=_cgm(top.table("cgm")),
        meter=_meter(top.table("meter")), clock=_clock(top.table("clock")))
    top.finish()
    return scenario


def default_scenario() -> Scenario:
    """Three meals a day (the ``three-meals`` scenario without reading a file)."""
    return Scenario(name="three-meals", description="Three meals a day", meals=(
        Meal(7 * 60 + 30, 50.0, 15, name="breakfast"),
        Meal(12 * 60 + 30, 70.0, 20, name="lunch"),
        Meal(18 * 60 + 30, 80.0, 20, name="dinner")))

