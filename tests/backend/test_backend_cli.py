"""The ``backend`` commands and the backend configuration file."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from bridge.backend.cli import main
from bridge.backend.config import ConfigError, IngestConfig, load_config, parse_config
from bridge.backend.ingest import Inbound, IngestProcessor
from bridge.backend.store import Store
from bridge.messages import RecordsMessage, records_topic
from bridge.records import CgmReading, DeviceInfo, DeviceKind
from tests.backend.broker import cgm_batch

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[store]
path = "backend.sqlite"
retention_days = 30
[broker]
url = "mqtt://127.0.0.1:1"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "backend.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["backend", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_provision_and_status(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ["--config", str(config), "--actor", "ops:alice"]
    assert run(capsys, "provision", "patient", "P-0001", "--name", "Demo", *c)[1] == (
        "patient P-0001: created\n")
    assert run(capsys, "provision", "gateway", "pi-1", "--patient", "P-0001",
               "--cert-fingerprint", "ab" * 32, *c)[0] == 0
    assert run(capsys, "provision", "device", "cgm-1", "--patient", "P-0001", "--gateway",
               "pi-1", "--kind", "cgm", *c)[1] == "device cgm-1 of patient P-0001: created\n"
    code, _, err = run(capsys, "provision", "gateway", "pi-2", "--patient", "P-9", *c)
    assert code == 1 and "unknown patient 'P-9'" in err

    with Store.open(f"sqlite:///{config.parent / 'backend.sqlite'}") as store:
        payload, _ = cgm_batch("pi-1", "cgm-1", 0, 6)
        IngestProcessor(store).ingest([
            Inbound(records_topic("pi-1"), payload, dt.datetime.now(dt.UTC)),
            Inbound(records_topic("pi-1"), b"nonsense", dt.datetime.now(dt.UTC))])
        assert {e.actor for e in store.audit_entries()} == {"ops:alice"}

    code, out, _ = run(capsys, "status", "--config", str(config))
    assert code == 0
    assert "records stored in the last minute: 6" in out
    assert "dead letters: not-json 1" in out
    assert "pi-1" in out and "P-0001" in out
    code, out, _ = run(capsys, "status", "--config", str(config), "--json")
    doc = json.loads(out)
    assert doc["records_last_minute"] == 6 and doc["lag_s"] < 60
    assert doc["gateways"][0]["last_contact"] is not None

    code, out, _ = run(capsys, "dead-letters", "--config", str(config), "--json")
    (letter,) = [json.loads(line) for line in out.splitlines()]
    assert letter["reason"] == "not-json" and letter["payload_head"] == "nonsense"


def test_gateway_certificate_must_name_the_gateway(config: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.edge.mosquitto import make_pki

    pki = make_pki(tmp_path / "pki", client_cn="pi-7")
    c = ["--config", str(config)]
    run(capsys, "provision", "patient", "P-1", *c)
    code, _, err = run(capsys, "provision", "gateway", "pi-8", "--patient", "P-1",
                       "--cert", str(pki.client_cert), *c)
    assert code == 1 and "CN 'pi-7' is not the gateway id 'pi-8'" in err
    code, out, _ = run(capsys, "provision", "gateway", "pi-7", "--patient", "P-1",
                       "--cert", str(pki.client_cert), *c)
    assert code == 0 and "certificate sha256" in out


def test_purge_reports_counts_and_is_audited(config: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    info = DeviceInfo(device_id="cgm-1", kind=DeviceKind.CGM)
    readings = tuple(CgmReading(device_id="cgm-1", time=now - dt.timedelta(days=days),
                                sequence=i, glucose_mg_dl=100.0)
                     for i, days in enumerate((45, 40, 31, 29, 1)))
    url = f"sqlite:///{config.parent / 'backend.sqlite'}"
    with Store.open(url) as store:
        IngestProcessor(store, IngestConfig(auto_provision=True)).ingest([Inbound(
            records_topic("pi-1"), RecordsMessage("pi-1", info, readings).to_bytes(), now)])
        assert store.counts()["cgm_readings"] == 5
    code, out, _ = run(capsys, "purge", "--config", str(config), "--dry-run", "--json")
    assert code == 0 and json.loads(out)["counts"]["cgm_readings"] == 3
    code, out, _ = run(capsys, "purge", "--config", str(config))
    assert code == 0 and "retention 30 days: deleted 0 glucose_readings, 3 cgm_readings" in out
    with Store.open(url) as store:
        assert store.counts()["cgm_readings"] == 2
        (entry,) = [e for e in store.audit_entries() if e.action == "purge"]
        assert entry.detail["deleted"]["cgm_readings"] == 3


BAD = [
    ("[store]\npath = 'x.sqlite'\nretention_days = 7\n[broker]\nurl = 'mqtt://h'\n",
     "store.retention_days: expected at least 30"),
    ("[store]\npath = 'x.sqlite'\nurl = 'sqlite:///y'\n[broker]\nurl = 'mqtt://h'\n",
     "store.url: give exactly one of url"),
    ("[store]\nurl = 'mysql://h/db'\n[broker]\nurl = 'mqtt://h'\n", "store.url: expected"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'http://h'\n", "broker.url: expected mqtt://"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\nprotocol = '4'\n",
     "broker.protocol: expected '5' or '3.1.1'"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\n[broker.tls]\nca = 'ca.pem'\n",
     "broker.url: a [broker.tls] table needs an mqtts:// URL"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtts://h'\n[broker.tls]\ncert = 'c.pem'\n",
     "broker.tls.cert: no such file"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\nshared_group = 'a/b'\n",
     "broker.shared_group: must not contain"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\nclient_id = 'a b'\n",
     "broker.client_id:"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\n[ingest]\nbatch_records = 0\n",
     "ingest.batch_records: expected at least 1"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\n[ingest]\nauto_provision = 'yes'\n",
     "ingest.auto_provision: expected true or false"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\n[ingest]\nbatch_size = 5\n",
     "ingest.batch_size: unknown key"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://h'\n[ingest]\nmax_payload_bytes = 999999\n",
     "ingest.max_payload_bytes: expected at most 262144"),
    ("[store]\npath = 'x'\n", "broker: missing; expected a table"),
    ("[store]\npath = 'x'\n[broker]\nurl = 'mqtt://u:pw@h'\n",
     "broker.url: do not put a password in the URL"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "backend.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "backend.toml"
    path.write_text("[store\n", encoding="utf-8")
    code, _, err = run(capsys, "status", "--config", str(path))
    assert code == 1 and "not valid TOML" in err
    code, _, err = run(capsys, "status", "--config", str(tmp_path / "missing.toml"))
    assert code == 1 and "cannot read" in err


def test_relative_paths_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr/t\n", encoding="utf-8")
    config = parse_config({
        "store": {"url": "postgresql://hddt@db.local:5433/hddt", "password_file": "pw"},
        "broker": {"url": "mqtt://broker.local"}}, "c.toml", tmp_path)
    assert config.store.url == "postgresql+psycopg://hddt:s3cr%2Ft@db.local:5433/hddt"
    local = parse_config({"store": {"path": "data/b.sqlite"},
                          "broker": {"url": "mqtt://h:1884", "client_id": "w-1"}},
                         "c.toml", tmp_path)
    assert local.store.url == f"sqlite:///{tmp_path / 'data/b.sqlite'}"
    assert (local.broker.port, local.broker.client_id) == (1884, "w-1")
    assert local.with_client_id("w-2").broker.client_id == "w-2"


def test_shipped_configuration_is_valid_and_documents_every_key() -> None:
    path = ROOT / "configs" / "backend.toml"
    config = load_config(path, check_files=False)
    assert config.store.retention_days >= 30 and not config.ingest.auto_provision
    assert config.broker.tls is not None and config.broker.shared_group == "ingest"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    # Every key of [ingest] is set in the example; the optional ones elsewhere are shown
    # commented out.
    assert {f.name for f in fields(IngestConfig)} == set(data["ingest"])
    for key in ("url", "password_file", "username"):
        assert f"# {key} = " in text, key
