"""``hddt-bridge simulate``: files, columns, summary, progress, bad arguments."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from bridge.records import RECORD_TYPES, device_info_from_json, record_from_json
from simulators import cli
from simulators.cli import SUMMARY_COLUMNS, TRACE_COLUMNS, ProgressBar, main, register

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulation.md"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_one_patient_one_day_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--patient", "adult#001", "--days", "1", "--seed", "3", "--out",
                 str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "adult#001" in printed and "TIR 70-180" in printed and "wrote" in printed

    trace = _read_csv(out / "true_glucose.csv")
    assert list(trace[0]) == list(TRACE_COLUMNS)
    assert len(trace) == 1440
    assert trace[0]["time"] == "2027-06-30T22:00:00Z"
    assert all(40 < float(r["blood_glucose_mg_dl"]) < 400 for r in trace)
    rescues = (sum(float(r["carbs_g"]) for r in trace) - 200) / 15  # 15 g hypo treatments
    assert rescues == pytest.approx(round(rescues), abs=0.01) and rescues >= 0

    summary = _read_csv(out / "summary.csv")
    assert list(summary[0]) == list(SUMMARY_COLUMNS)
    assert summary[0]["patient"] == "adult#001"
    assert f"{float(summary[0]['time_in_range_pct']):.1f}%" in printed

    devices = _read_csv(out / "devices.csv")
    assert {d["kind"] for d in devices} == {"insulin-pump", "cgm", "blood-glucose-meter"}
    assert all(d["manufacturer"] == "hddt-bridge simulated" for d in devices)

    records = out / "records"
    for name in ("cgm-glucose", "blood-glucose", "insulin-bolus", "basal-rate-change",
                 "reservoir-level"):
        rows = _read_csv(records / f"{name}.csv")
        assert rows, name
        assert rows[0]["kind"] == name
    cgm = _read_csv(records / "cgm-glucose.csv")
    assert list(cgm[0]) == ["kind", "device_id", "time", "sequence", "device_time",
                            "time_quality", "glucose_mg_dl", "trend_mg_dl_per_min",
                            "quality_percent", "annunciations", "session_start",
                            "time_offset_min"]
    assert 200 < len(cgm) <= 288


def test_documented_columns_match_the_files() -> None:
    text = DOC.read_text(encoding="utf-8")
    for column in (*TRACE_COLUMNS, *SUMMARY_COLUMNS):
        assert f"`{column}`" in text, column
    for kind in RECORD_TYPES:
        assert f"`records/{kind.value}.csv`" in text


def test_jsonl_records_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["--patient", "child#004", "--scenario", "exercise", "--format", "jsonl",
                 "--out", str(out), "--no-progress"]) == 0
    lines = (out / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = [record_from_json(json.loads(line)) for line in lines]
    kinds = {r.kind.value for r in records}
    assert {"cgm-glucose", "blood-glucose", "insulin-bolus", "temp-basal-start",
            "temp-basal-end"} <= kinds
    for line in (out / "devices.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert row.pop("patient") == "child#004"
        device_info_from_json(row)
    trace = [json.loads(x) for x in (out / "true_glucose.jsonl").read_text().splitlines()]
    assert set(trace[0]) == set(TRACE_COLUMNS)


def test_type2_patient_has_a_meter_only(tmp_path: Path) -> None:
    out = tmp_path / "t2"
    assert main(["--patient", "type2#002", "--out", str(out), "--no-progress"]) == 0
    devices = _read_csv(out / "devices.csv")
    assert [d["kind"] for d in devices] == ["blood-glucose-meter"]
    readings = _read_csv(out / "records" / "blood-glucose.csv")
    assert len(readings) >= 3
    assert sorted(p.name for p in (out / "records").iterdir()) == ["blood-glucose.csv"]


def test_cohort_and_no_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["--cohort", "2", "--out", str(out), "--no-records", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "true_glucose.csv"]
    printed = capsys.readouterr().out
    assert "adolescent#001" in printed and "adolescent#002" in printed
    patients = cli.resolve_patients(None, 32, seed=1)
    assert len(patients) == 32 and patients[30].name.endswith("/v0000")


@pytest.mark.parametrize(("argv", "message"), [
    (["--patient", "adult#999"], "unknown patient 'adult#999'"),
    (["--patient", "type2#042"], "unknown patient 'type2#042'"),
    (["--scenario", "no-such-scenario"], "no scenario named 'no-such-scenario'"),
    (["--scenario", "missing/file.toml"], "does not exist"),
    (["--patient", "adult#001", "--patient", "type2#001"], "cannot share one run"),
])
def test_bad_arguments_fail_with_a_message(tmp_path: Path, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--days", "0"], "must be a positive whole number"),
    (["--days", "-2"], "must be a positive whole number"),
    (["--days", "two"], "is not a whole number"),
    (["--seed", "-1"], "must be 0 or more"),
    (["--cohort", "0"], "must be a positive whole number"),
    (["--format", "xml"], "invalid choice"),
    (["--patient", "adult#001", "--cohort", "3"], "not allowed with"),
])
def test_bad_values_are_argparse_errors(argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_register_adds_the_subcommand(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="hddt-bridge")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["simulate", "--list-scenarios"])
    assert args.handler(args) == 0
    args = parser.parse_args(["simulate", "--days", "2", "--out", str(tmp_path)])
    assert (args.days, args.seed, args.format, args.scenario) == (2, 0, "csv", "three-meals")


def test_progress_bar_plain_text() -> None:
    stream = io.StringIO()
    bar = ProgressBar("simulating", stream)
    for done in range(0, 1441, 60):
        bar(done, 1440)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("simulating [") and "100%" in lines[-1]
    assert len(lines) == 11  # not a terminal: one line per 10 %
    assert "\r" not in stream.getvalue()
