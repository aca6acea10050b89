"""The MQTT contract: topics, versioned payloads, and specific refusals of bad payloads."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from bridge.messages import (
    MAX_PAYLOAD_BYTES,
    DeviceState,
    DeviceStatus,
    GatewayState,
    GatewayStatus,
    PayloadError,
    RecordsMessage,
    batches,
    device_status_topic,
    gateway_status_topic,
    parse_topic,
    records_topic,
)
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind, MealContext

T0 = dt.datetime(2026, 12, 1, 6, 30, tzinfo=dt.UTC)
INFO = DeviceInfo(device_id="meter-01", kind=DeviceKind.BLOOD_GLUCOSE_METER, serial_number="S1")


def reading(seq: int, device_id: str = "meter-01") -> BloodGlucoseReading:
    return BloodGlucoseReading(device_id=device_id, time=T0 + dt.timedelta(hours=seq),
                               sequence=seq, glucose_mg_dl=100.0 + seq,
                               meal=MealContext.FASTING)


def test_topics_round_trip() -> None:
    assert records_topic("gw-1") == "hddt/v1/gw/gw-1/records"
    assert parse_topic("hddt/v1/gw/gw-1/records").kind == "records"
    assert parse_topic(gateway_status_topic("gw-1")).kind == "gateway-status"
    info = parse_topic(device_status_topic("gw-1", "meter-01"))
    assert (info.gateway_id, info.kind, info.device_id) == ("gw-1", "device-status", "meter-01")
    for bad in ("hddt/v1/gw/gw+1/records", "other/gw-1/records", "hddt/v1/gw/gw-1/commands",
                "hddt/v1/gw/gw-1/devices/x/control"):
        with pytest.raises(PayloadError):
            parse_topic(bad)
    with pytest.raises(PayloadError):
        records_topic("a/b")


def test_records_message_round_trip_with_keys() -> None:
    msg = RecordsMessage("gw-1", INFO, (reading(1), reading(2)), sent_at=T0)
    payload = msg.to_bytes()
    doc = json.loads(payload)
    assert doc["schema"] == "hddt-bridge.records" and doc["version"] == 1
    assert doc["records"][0]["key"] == "meter-01|blood-glucose|seq:1"
    assert RecordsMessage.from_bytes(payload) == msg


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d | {"version": 2}, "unsupported-version"),
        (lambda d: d | {"schema": "something"}, "wrong-schema"),
        (lambda d: d | {"records": {}}, "invalid"),
        (lambda d: d | {"gateway_id": "../x"}, "invalid"),
        (lambda d: d | {"sent_at": "soon"}, "invalid"),
        (lambda d: d | {"records": [d["records"][0] | {"key": "forged"}]}, "invalid"),
        (lambda d: d | {"records": [d["records"][0] | {"glucose_mg_dl": "x"}]}, "invalid"),
        (lambda d: d | {"records": [d["records"][0] | {"device_id": "other"}]}, "invalid"),
        (lambda d: d | {"device": None}, "invalid"),
        (lambda d: [d], "invalid"),
    ],
)
def test_bad_records_payloads_get_reasons(mutate: object, reason: str) -> None:
    doc = json.loads(RecordsMessage("gw-1", INFO, (reading(1),), sent_at=T0).to_bytes())
    payload = json.dumps(mutate(doc)).encode()  # type: ignore[operator]
    with pytest.raises(PayloadError) as err:
        RecordsMessage.from_bytes(payload)
    assert err.value.reason == reason


def test_not_json_and_oversized() -> None:
    with pytest.raises(PayloadError, match="not-json"):
        RecordsMessage.from_bytes(b"\xff\xfe")
    with pytest.raises(PayloadError, match="oversized"):
        RecordsMessage.from_bytes(b" " * (MAX_PAYLOAD_BYTES + 1))
    many = tuple(reading(i) for i in range(3000))
    with pytest.raises(PayloadError, match="oversized"):
        RecordsMessage("gw-1", INFO, many).to_bytes()


def test_batch_of_other_device_is_refused() -> None:
    with pytest.raises(PayloadError, match="in a batch of"):
        RecordsMessage("gw-1", INFO, (reading(1, "cgm-9"),)).to_bytes()


def test_status_payloads_round_trip() -> None:
    g = GatewayStatus("gw-1", GatewayState.OFFLINE, T0, "0.1.0")
    assert GatewayStatus.from_bytes(g.to_bytes()) == g
    d = DeviceStatus("meter-01", DeviceState.CONNECTED, T0, last_sync=T0, records_synced=12,
                     queued=3, dropped=1, errors=2, last_error="CrcMismatch")
    assert DeviceStatus.from_bytes(d.to_bytes()) == d
    doc = json.loads(d.to_bytes()) | {"queued": -1}
    with pytest.raises(PayloadError, match="queued"):
        DeviceStatus.from_bytes(json.dumps(doc).encode())


def test_batches() -> None:
    rs = [reading(i) for i in range(1, 8)]
    assert [len(b) for b in batches(rs, 3)] == [3, 3, 1]
    with pytest.raises(ValueError):
        batches(rs, 0)


def test_instant_out_of_range_is_a_payload_error() -> None:
    doc = json.loads(GatewayStatus("gw-1", GatewayState.ONLINE, T0).to_bytes())
    doc["at"] = "0001-01-01T00:00:00+05:00"  # before datetime.min once moved to UTC
    with pytest.raises(PayloadError, match="invalid"):
        GatewayStatus.from_bytes(json.dumps(doc).encode())
