"""``hddt-bridge demo`` end to end: simulated devices → agent → embedded broker → backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_delivers_everything_the_agent_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--state-dir", str(state), "--patients", "3",
         "--history-days", "1", "--duration", "8", "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"(\d+) read at the gateway, (\d+) stored in the backend \((\d+) devices",
                      done.stdout)
    assert match is not None, done.stdout
    read, stored, devices = map(int, match.groups())
    assert read == stored > 500          # a day of CGM values for two patients, at least
    assert devices == 5
    assert (state / "connection.json").is_file()
    assert (state / "gateway.password").stat().st_mode & 0o077 == 0
