"""Pairing state files: round trip, atomic replacement, mode 0600, locking."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from bridge.diga.errors import StateFileError
from bridge.diga.polling import ChunkMark
from bridge.diga.state import (
    PAIRED,
    REVOKED,
    PairingState,
    PairingStore,
    PendingAuthorization,
)

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


def _state() -> PairingState:
    state = PairingState(name="p1", client_id="urn:diga:bfarm:12345",
                         issuer="https://127.0.0.1:8443",
                         fhir_base_url="https://127.0.0.1:8443/fhir")
    state.pending = PendingAuthorization(
        state="s", code_verifier="v" * 43, request_uri="urn:ietf:params:oauth:request_uri:x",
        authorize_url="https://127.0.0.1:8443/authorize?x", redirect_uri="https://diga/cb",
        scope="patient/Device.rs", expires_at=NOW)
    state.store_tokens({"access_token": "at1", "expires_in": 600, "refresh_token": "rt1",
                        "scope": "patient/Device.rs patient/DeviceMetric.rs",
                        "sub": "pairing-abc"}, NOW)
    state.status = PAIRED
    state.paired_at = NOW
    state.blood_glucose.newest = NOW
    state.blood_glucose.delivered = {"bg-1": NOW}
    state.cgm.search_from = NOW - dt.timedelta(hours=1)
    state.cgm.chunks = {"c-1": ChunkMark(start=NOW, end=NOW + dt.timedelta(hours=1),
                                         status="preliminary", delivered={0, 300_000})}
    return state


def test_round_trip(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "pairings")
    original = _state()
    store.save(original)
    loaded = store.load("p1")
    assert loaded.to_json() == original.to_json()
    assert loaded.access_token_expires_at == NOW + dt.timedelta(seconds=600)
    assert loaded.refresh_token_expires_at == NOW + dt.timedelta(days=30)
    assert loaded.cgm.chunks["c-1"].delivered == {0, 300_000}
    assert loaded.scopes == {"patient/Device.rs", "patient/DeviceMetric.rs"}
    assert store.names() == ["p1"]


def test_file_and_folder_modes(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "pairings")
    path = store.save(_state())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Saving again replaces the file (new inode) and keeps the mode; no temporary left.
    inode = path.stat().st_ino
    store.save(_state())
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["p1.json"]


def test_world_readable_file_refused(tmp_path: Path) -> None:
    store = PairingStore(tmp_path)
    path = store.save(_state())
    os.chmod(path, 0o644)
    with pytest.raises(StateFileError, match="0644"):
        store.load("p1")


def test_rotation_keeps_newest_refresh_token(tmp_path: Path) -> None:
    state = _state()
    state.store_tokens({"access_token": "at2", "expires_in": 300, "refresh_token": "rt2"},
                       NOW + dt.timedelta(minutes=5))
    assert (state.access_token, state.refresh_token) == ("at2", "rt2")
    assert state.pairing_id == "pairing-abc"  # a refresh response need not repeat sub
    state.store_tokens({"access_token": "at3", "expires_in": 300}, NOW)
    assert state.refresh_token == "rt2"  # no rotation offered: the old one stays


def test_end_forgets_tokens(tmp_path: Path) -> None:
    store = PairingStore(tmp_path)
    state = _state()
    state.end(REVOKED, "refresh refused", NOW)
    store.save(state)
    text = store.path("p1").read_text()
    assert "at1" not in text and "rt1" not in text
    loaded = store.load("p1")
    assert loaded.status == REVOKED and loaded.access_token is None


@pytest.mark.parametrize("content,reason", [
    ("{not json", "cannot read"),
    (json.dumps({"format": 99}), "not a pairing state"),
    (json.dumps({"format": 1, "name": "p1"}), "not a pairing state"),
])
def test_broken_files_refused(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "p1.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(StateFileError, match=reason):
        PairingStore(tmp_path).load("p1")


def test_missing_pairing_and_bad_names(tmp_path: Path) -> None:
    store = PairingStore(tmp_path)
    with pytest.raises(StateFileError, match="no pairing named"):
        store.load("nobody")
    for name in ["../escape", "", ".hidden", "a/b", "x" * 65]:
        with pytest.raises(StateFileError, match="pairing name"):
            store.path(name)


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    store = PairingStore(tmp_path)
    order: list[str] = []

    def second() -> None:
        with store.lock("p1"):
            order.append("second")

    with store.lock("p1"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
