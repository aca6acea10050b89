"""``hddt-bridge simulate``: run simulated patients through a scenario and write the results.

:func:`register` adds the subcommand to the ``hddt-bridge`` parser. Output files (columns in
``docs/simulation.md``): ``true_glucose``, ``devices``, ``summary`` and the device records
(``records/<kind>.csv`` or ``records.jsonl``), as CSV or JSON Lines.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from simulators.errors import SimulatorError

if TYPE_CHECKING:  # the simulator modules load numpy; import them only when simulating
    from simulators.run import AnyPatient, CohortResult, GlucoseSummary

TRACE_COLUMNS = ("patient", "minute", "time", "blood_glucose_mg_dl", "carbs_g", "insulin_u")
SUMMARY_COLUMNS = ("patient", "mean_mg_dl", "sd_mg_dl", "time_in_range_pct",
                   "time_below_70_pct", "time_below_54_pct", "time_above_180_pct",
                   "hypo_events_below_70", "hypo_events_below_54")
MAX_COHORT = 100_000


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand (handler in ``args.handler``)."""
    p = subparsers.add_parser(
        "simulate", help="simulate patients with pump, CGM and meter and write their records",
        description="Run simulated patients (UVA/Padova type 1, or simple type 2) through a "
                    "scenario at 1-minute resolution; write the true glucose trace, the "
                    "devices' records and a per-patient summary.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--patient", action="append", metavar="NAME",
                     help="a patient, e.g. adult#001, adolescent#004, child#010, type2#001 "
                          "(repeatable)")
    who.add_argument("--cohort", type=_positive_int, metavar="N",
                     help="N patients: the 30 standard ones, then perturbed variants of them")
    p.add_argument("--scenario", default="three-meals", metavar="NAME|PATH",
                   help="scenario name (configs/scenarios/NAME.toml) or a .toml file "
                        "(default: three-meals)")
    p.add_argument("--days", type=_positive_int, default=1, help="days to simulate (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="simulation-out", metavar="DIR",
                   help="output folder (default ./simulation-out)")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                   help="output file format (default csv)")
    p.add_argument("--no-records", action="store_true",
                   help="write only the true glucose trace and the summary")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", action="store_true", default=None,
                      help="show a progress bar on stderr (default: only on a terminal)")
    prog.add_argument("--no-progress", action="store_false", dest="progress")
    p.add_argument("--list-scenarios", action="store_true",
                   help="list the shipped scenario names and exit")
    p.set_defaults(handler=run_command)


def resolve_patients(names: Sequence[str] | None, cohort: int | None,
                     seed: int) -> list[AnyPatient]:
    """The patients a command line names (default: adult#001)."""
    from simulators.physiology import perturbed_patients, standard_patient, standard_patients
    from simulators.type2 import type2_patient

    if cohort is not None:
        if cohort > MAX_COHORT:
            raise SimulatorError(f"--cohort {cohort} is more than {MAX_COHORT} patients")
        standard = list(standard_patients())
        extra = max(0, cohort - len(standard))
        out: list[AnyPatient] = list(standard[:cohort])
        if extra:
            out.extend(perturbed_patients(standard, extra, seed=seed))
        return out
    patients: list[AnyPatient] = []
    for name in names or ["adult#001"]:
        if name.startswith("type2#"):
            patients.append(type2_patient(name))
        else:
            patients.append(standard_patient(name))
    kinds = {name.startswith("type2#") for name in names or []}
    if len(kinds) > 1:
        raise SimulatorError("type 1 and type 2 patients cannot share one run; simulate them "
                             "separately")
    return patients


class ProgressBar:
    """A plain-text progress bar (no external dependency).

    On a terminal it redraws one line with a carriage return; elsewhere (a log file, CI) it
    prints a line every 10 %.
    """

    def __init__(self, label: str, stream: TextIO, width: int = 30) -> None:
        self.label = label
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        step = pct if self.live else pct - pct % 10
        if step == self._last:
            return
        self._last = step
        filled = self.width * pct // 100
        elapsed = time.monotonic() - self.started
        line = (f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] "
                f"{pct:3d}% {elapsed:6.1f}s")
        if self.live:
            self.stream.write(f"\r{line}" + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_command(args: argparse.Namespace) -> int:
    """The ``simulate`` handler: 0 on success, 2 for bad arguments, 1 when the run fails."""
    from simulators.run import simulate_cohort
    from simulators.scenario import builtin_scenario_names, load_scenario

    if args.list_scenarios:
        for name in builtin_scenario_names():
            print(name)
        return 0
    try:
        scenario = load_scenario(args.scenario)
        patients = resolve_patients(args.patient, args.cohort, args.seed)
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = (ProgressBar(f"simulating {len(patients)} patient(s) × {args.days} day(s)",
                       sys.stderr) if show else None)
    out = Path(args.out)
    try:
        result = simulate_cohort(patients, scenario, args.days, seed=args.seed,
                                 records=not args.no_records, progress=bar)
        written = write_result(result, out, args.format)
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write to {out}: {exc}", file=sys.stderr)
        return 1
    print_summary(result.summary(), sys.stdout)
    print(f"scenario {scenario.name} ({scenario.source}), {args.days} day(s), seed {args.seed}, "
          f"therapy {result.therapy_mode.value}")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def print_summary(summaries: Iterable[GlucoseSummary], stream: TextIO) -> None:
    stream.write(f"{'patient':<24} {'mean':>6} {'TIR 70-180':>10} {'<70 %':>6} {'<70 #':>5} "
                 f"{'<54 %':>6} {'<54 #':>5} {'>180 %':>6}\n")
    for s in summaries:
        stream.write(f"{s.patient:<24} {s.mean_mg_dl:6.1f} {s.time_in_range_pct:9.1f}% "
                     f"{s.time_below_70_pct:6.1f} {s.hypo_events_below_70:5d} "
                     f"{s.time_below_54_pct:6.1f} {s.hypo_events_below_54:5d} "
                     f"{s.time_above_180_pct:6.1f}\n")


# --- writing -------------------------------------------------------------------------------

def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return value


def _write_rows(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                fmt: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            for row in rows:
                w.writerow([_cell(v) for v in row])
        else:
            for row in rows:
                f.write(json.dumps(dict(zip(columns, row, strict=True))) + "\n")


def write_result(result: CohortResult, out: Path, fmt: str) -> list[str]:
    """Write ``result`` into folder ``out``; returns the file names written."""
    from bridge.records import Record, RecordKind, record_to_json

    if fmt not in ("csv", "jsonl"):
        raise SimulatorError(f"unknown output format {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    times = [result.time_of(m).isoformat().replace("+00:00", "Z")
             for m in range(result.minutes)]

    def trace_rows() -> Iterable[Sequence[Any]]:
        for i, name in enumerate(result.patients):
            bg = result.true_bg[i].tolist()
            carbs = result.carbs_g[i].tolist()
            ins = result.insulin_u[i].tolist()
            for m in range(result.minutes):
                yield (name, m, times[m], round(bg[m], 2), round(carbs[m], 3),
                       round(ins[m], 4))

    name = f"true_glucose.{fmt}"
    _write_rows(out / name, TRACE_COLUMNS, trace_rows(), fmt)
    written.append(name)

    name = f"summary.{fmt}"
    _write_rows(out / name, SUMMARY_COLUMNS,
                ([getattr(s, c) for c in SUMMARY_COLUMNS] for s in result.summary()), fmt)
    written.append(name)

    if result.devices is None:
        return written
    device_rows: list[tuple[str, dict[str, Any]]] = []
    for dev in result.devices:
        for log in dev.logs:
            device_rows.append((dev.patient, record_to_json(log.info)))
    name = f"devices.{fmt}"
    if device_rows:
        info_cols = ["patient", *device_rows[0][1].keys()]
        _write_rows(out / name, info_cols,
                    ([p, *info.values()] for p, info in device_rows), fmt)
        written.append(name)
    records = [r for dev in result.devices for r in dev.records]
    if fmt == "jsonl":
        name = "records.jsonl"
        with (out / name).open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record_to_json(record)) + "\n")
        written.append(name)
    else:
        folder = out / "records"
        folder.mkdir(exist_ok=True)
        by_kind: dict[RecordKind, list[Record]] = {}
        for record in records:
            by_kind.setdefault(record.KIND, []).append(record)
        for kind, items in sorted(by_kind.items()):
            rows = [record_to_json(r) for r in items]
            _write_rows(folder / f"{kind.value}.csv", list(rows[0].keys()),
                        (list(r.values()) for r in rows), "csv")
            written.append(f"records/{kind.value}.csv")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``simulate`` on its own (the same as ``hddt-bridge simulate``)."""
    parser = argparse.ArgumentParser(prog="hddt-bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["simulate", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
