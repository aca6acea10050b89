"""Scenarios: shipped files, the random day generator, clear errors for bad files."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from simulators.physiology import standard_patient
from simulators.run import patient_rng, simulate_cohort
from simulators.scenario import (
    BolusBehaviour,
    DayPlan,
    ScenarioError,
    load_scenario,
    parse_scenario,
    resolve_scenario,
)
from simulators.therapy import TherapyMode

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "scenarios"
README = CONFIGS / "README.md"
SECTIONS = {"meal", "exercise", "temp_basal", "generator", "snacks", "bolus", "therapy", "pump",
            "cgm", "meter", "clock", "event", "basal_profile", "johnson"}


def test_required_scenarios_ship_in_configs() -> None:
    names = {p.name for p in CONFIGS.glob("*.toml")}
    assert {"three-meals.toml", "random-day.toml", "exercise.toml"} <= names


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.toml")))
def test_every_shipped_scenario_loads_and_is_documented(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description
    text = README.read_text(encoding="utf-8")
    assert f"`{name}`" in text
    data = tomllib.loads((CONFIGS / f"{name}.toml").read_text(encoding="utf-8"))
    for key in _keys(data) - SECTIONS:
        assert f"`{key}`" in text, f"{name}.toml key {key!r} is not documented in README.md"


def _keys(data: object) -> set[str]:
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add(key)
            out |= _keys(value)
    elif isinstance(data, list):
        for item in data:
            out |= _keys(item)
    return out


def test_readme_documents_every_key_the_parser_accepts() -> None:
    # Every `key` row in the README tables is accepted, every accepted key is in a table.
    text = README.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, flags=re.M))
    documented -= {p.stem for p in CONFIGS.glob("*.toml")}  # the table of shipped scenarios
    full = tomllib.loads(FULL)
    parse_scenario(full, source="full.toml")
    generator = tomllib.loads(GENERATOR)
    parse_scenario(generator, source="generator.toml")
    accepted = _keys(full) | _keys(generator)
    assert accepted - SECTIONS <= documented
    assert documented <= accepted


GENERATOR = """
[[generator.meal]]
name = "lunch"
time = "12:00"
time_sd_min = 20
carbs_mean_g = 60
carbs_sd_g = 10
carbs_min_g = 20
carbs_max_g = 100
probability = 0.9
duration_min = 20
[generator.snacks]
per_day_mean = 2
earliest = "10:00"
latest = "20:00"
carbs_min_g = 5
carbs_max_g = 25
bolus_probability = 0.5
duration_min = 3
[generator.bolus]
skip_probability = 0.1
late_probability = 0.2
late_min_delay_min = 10
late_max_delay_min = 40
[generator.exercise]
probability = 0.5
earliest = "15:00"
latest = "19:00"
duration_min_min = 20
duration_max_min = 50
intensity_min = 0.2
intensity_max = 0.8
"""


FULL = """
name = "full"
description = "every key"
start_date = 2027-03-01
timezone = "UTC"
[[meal]]
name = "b"
time = "07:00"
carbs_g = 40
duration_min = 10
bolus = "late"
bolus_delay_min = 20
snack = false
days = [0, 2]
[[exercise]]
time = "17:00"
duration_min = 30
intensity = 0.4
days = [1]
[[temp_basal]]
time = "02:00"
percent = 80
duration_min = 120
days = [0]
[therapy]
mode = "pump"
target_mg_dl = 100
correction = true
correction_above_mg_dl = 240
correction_interval_min = 120
max_bolus_u = 15
exercise_temp_basal_percent = 60
exercise_temp_basal_lead_min = 30
pen_increment_u = 1.0
hypo_treatment_g = 20
hypo_threshold_mg_dl = 75
hypo_recheck_min = 20
[[therapy.basal_profile]]
start = "00:00"
factor = 0.9
[[therapy.basal_profile]]
start = "04:00"
factor = 1.2
[pump]
basal_increment_u = 0.025
bolus_increment_u = 0.1
basal_rate_step_u_per_h = 0.05
bolus_speed_u_per_min = 2
reservoir_capacity_u = 200
fill_u = 180
initial_u = 100
prime_u = 2
low_reservoir_u = 15
refill_every_days = 2
refill_time = "08:00"
empty_refill_delay_min = 30
occlusion_per_day = 0.1
occlusion_resolve_min = 20
battery_life_days = 20
battery_replace_delay_min = 300
[cgm]
enabled = true
interval_min = 1
lag_min = 6
noise_ar_per_5min = 0.6
noise_scale = 0.8
calibration_sd_percent = 1
drift_sd_percent_per_day = 0.2
session_days = 14
warmup_min = 60
changeover_min = 10
first_session = "start"
failure_per_session = 0.1
dropouts_per_day = 2
dropout_mean_min = 15
compression_per_night = 0.3
compression_depth_percent = 30
compression_min_duration_min = 10
compression_max_duration_min = 40
night_start = "22:00"
night_end = "07:00"
range_low_mg_dl = 39
range_high_mg_dl = 401
[cgm.johnson]
xi_mg_dl = -5
lambda_mg_dl = 15
gamma = -0.5
delta = 1.7
[meter]
enabled = true
cv_percent = 3.5
bias_percent = 0.5
sd_mg_dl = 1.5
tail_df = 8
premeal_probability = 0.8
postmeal_probability = 0.1
bedtime_probability = 0.5
bedtime = "23:00"
bedtime_sd_min = 20
casual_per_day = 0.5
symptom_threshold_mg_dl = 60
symptom_delay_min = 5
retest_interval_min = 20
control_every_days = 7
control_mg_dl = 110
error_probability = 0.01
range_low_mg_dl = 10
range_high_mg_dl = 500
battery_tests = 500
[clock]
timezone = "Europe/Vienna"
offset_s = 10
offset_sd_s = 5
drift_ppm = 3
drift_sd_ppm = 2
[[clock.event]]
device = "meter"
day = 1
time = "03:00"
reset_to = 2000-01-01T00:00:00
[[clock.event]]
device = "all"
day = 2
time = "04:00"
jump_s = -60
"""


def test_fixed_plan_and_day_filters() -> None:
    scenario = parse_scenario(tomllib.loads(FULL), source="full.toml")
    rng = np.random.default_rng(0)
    day0, day1 = scenario.day_plan(0, rng), scenario.day_plan(1, rng)
    assert [m.carbs_g for m in day0.meals] == [40.0] and not day1.meals
    assert day0.meals[0].bolus is BolusBehaviour.LATE and day0.meals[0].bolus_delay_min == 20
    assert not day0.exercise and day1.exercise[0].intensity == 0.4
    assert scenario.therapy.mode is TherapyMode.PUMP
    assert [b.factor for b in scenario.therapy.basal_profile] == [0.9, 1.2]
    assert scenario.pump.initial_u == 100 and scenario.cgm.interval_min == 1
    assert scenario.clock.events[0].reset_to == dt.datetime(2000, 1, 1)
    assert scenario.start_date == dt.date(2027, 3, 1)


def test_three_meals_is_the_same_every_day() -> None:
    scenario = load_scenario("three-meals")
    rng = np.random.default_rng(0)
    plans = [scenario.day_plan(d, rng) for d in range(4)]
    assert all(p == plans[0] for p in plans)
    assert [(m.minute_of_day, m.carbs_g) for m in plans[0].meals] == [
        (450, 50.0), (750, 70.0), (1110, 80.0)]


def test_random_day_generator_is_deterministic_per_seed() -> None:
    scenario = load_scenario("random-day")

    def plans(seed: int, patient: int) -> list[DayPlan]:
        rng = patient_rng(seed, patient, 1)
        return [scenario.day_plan(d, rng) for d in range(30)]

    assert plans(5, 0) == plans(5, 0)
    assert plans(5, 0) != plans(6, 0)
    assert plans(5, 0) != plans(5, 1)
    days = [p for s in range(10) for p in plans(s, 0)]
    meals = [m for d in days for m in d.meals if not m.snack]
    snacks = [m for d in days for m in d.meals if m.snack]
    assert len(snacks) / len(days) == pytest.approx(1.2, rel=0.2)
    main = [m for m in meals if m.name != "snack"]
    skipped = sum(m.bolus is BolusBehaviour.SKIPPED for m in main) / len(main)
    late = [m for m in main if m.bolus is BolusBehaviour.LATE]
    assert skipped == pytest.approx(0.05, abs=0.03)
    assert len(late) / len(main) == pytest.approx(0.10, abs=0.04)
    assert all(15 <= m.bolus_delay_min <= 60 for m in late)
    assert sum(bool(d.exercise) for d in days) / len(days) == pytest.approx(0.25, abs=0.08)
    breakfast = [m.minute_of_day for m in main if m.name == "breakfast"]
    assert np.mean(breakfast) == pytest.approx(7 * 60 + 15, abs=15)


def test_meals_become_per_minute_carbs_in_a_run() -> None:
    result = simulate_cohort([standard_patient("child#001")], "exercise", 2, seed=1,
                             sensors=False)
    carbs = result.carbs_g[0]
    assert carbs[450:465] == pytest.approx(50 / 15)  # breakfast 07:30, 15 min
    assert carbs[:1440].sum() == pytest.approx(50 + 70 + 15 + 80)
    assert result.calendar.minute_of(1, 9 * 60) == 1440 + 540
    assert result.insulin_u[0].sum() > 0


# --- bad files ----------------------------------------------------------------------------

def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "key", "message"), [
    ('name = "x"\ncolour = 3\n', "colour", "unknown key"),
    ('[[meal]]\ntime = "07:30"\ncarbs_g = "lots"\n', "meal[0].carbs_g", "expected a number"),
    ('[[meal]]\ntime = "25:00"\ncarbs_g = 5\n', "meal[0].time", "HH:MM"),
    ('[[meal]]\ncarbs_g = 5\n', "meal[0].time", "missing"),
    ('[[meal]]\ntime = "07:00"\ncarbs_g = -1\n', "meal[0].carbs_g", "≥ 0"),
    ('[[meal]]\ntime = "07:00"\ncarbs_g = 5\nbolus = "maybe"\n', "meal[0].bolus", "one of"),
    ("[pump]\nbolus_increment_u = 0.0005\n", "pump.bolus_increment_u", "≥ 0.001"),
    ("[pump]\nbasal_increment_u = 0.0125\n", "pump.basal_increment_u", "multiple of 0.001"),
    ("[cgm]\ninterval_min = 3\n", "cgm.interval_min", "1 or 5"),
    ("[cgm.johnson]\ndelta = 0\n", "cgm.johnson.delta", "≥ 0.1"),
    ('timezone = "Mars/Base"\n', "timezone", "unknown time zone"),
    ("[therapy]\nmode = 3\n", "therapy.mode", "expected a string"),
    ("[meter]\ntail_df = 1.5\n", "meter.tail_df", "greater than 2"),
    ("[[clock.event]]\ntime = \"03:00\"\n", "clock.event[0].jump_s", "exactly one"),
    ('[[meal]]\ntime = "07:00"\ncarbs_g = 5\n[generator]\n', "generator", "not both"),
    ("[generator.snacks]\nper_day_mean = 1\n", "generator.meal", "at least one"),
    ("therapy = 5\n", "therapy", "expected a table"),
    ("meal = 5\n", "meal", "array of tables"),
])
def test_bad_scenario_names_file_and_key(tmp_path: Path, text: str, key: str,
                                         message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == key
    assert info.value.source == str(path)
    assert str(path) in str(info.value) and key in str(info.value)
    assert message in str(info.value)


def test_toml_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "name = \n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match=r"no scenario named 'nope'.*three-meals"):
        load_scenario("nope")
    with pytest.raises(ScenarioError, match="neither"):
        resolve_scenario("three meals?")


def test_name_resolves_from_the_working_directory_first(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "configs" / "scenarios"
    own.mkdir(parents=True)
    (own / "three-meals.toml").write_text('name = "mine"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_scenario("three-meals").name == "mine"
    assert resolve_scenario("random-day") == CONFIGS / "random-day.toml"
