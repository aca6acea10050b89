"""A private Mosquitto 2 run with the SHIPPED configuration (configs/mosquitto/).

The shipped ``mosquitto.conf`` is used line by line; only what names this machine is
rewritten: each listener's port (and address: 127.0.0.1), the certificate files, the ACL file
(pointed at the shipped one, unchanged), the persistence folder and the user to run as.
Every other line, the whole security and queue policy, is exactly what ships. Ports are
free ones on 127.0.0.1, never 1883/8883. Used by the broker security tests and
``bench/ingest.py``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import IO

from bridge.backend.pki import CertPair, SandboxPki
from tests.edge.mosquitto import MOSQUITTO, free_port, mosquitto_available

__all__ = ["CONFIG_DIR", "ShippedMosquitto", "client_tls", "mosquitto_available",
           "render_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mosquitto"

#: Directives whose value is a path on the production machine, replaced for the test.
_PATH_KEYS = ("cafile", "certfile", "keyfile", "acl_file", "persistence_location", "user")


def render_config(text: str, *, ports: tuple[int, int], paths: dict[str, str]) -> str:
    """The shipped configuration with the two listeners on ``ports`` (gateway, ingest) on
    127.0.0.1 and every key of ``paths`` set to its value; all other lines unchanged.

    Raises if the shipped file no longer has the lines this expects, so the tests cannot
    quietly run a configuration that differs from what ships.
    """
    out: list[str] = []
    listeners = 0
    seen: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        key = words[0] if words and not line.startswith("#") else ""
        if key == "listener":
            if listeners >= len(ports):
                raise AssertionError("the shipped config has more listeners than expected")
            out.append(f"listener {ports[listeners]} 127.0.0.1")
            listeners += 1
        elif key in paths:
            out.append(f"{key} {paths[key]}")
            seen.add(key)
        else:
            out.append(line)
    if listeners != len(ports):
        raise AssertionError(f"expected {len(ports)} listeners in the shipped config, "
                             f"found {listeners}")
    if missing := set(paths) - seen:
        raise AssertionError(f"shipped config lacks {sorted(missing)}")
    return "\n".join(out) + "\n"


def client_tls(ca: Path, pair: CertPair | None) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` and presenting ``pair`` (or no certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


class ShippedMosquitto:
    """Mosquitto with the shipped config and ACL and the certificates of ``pki``.

    ``gateway_port`` is the internet-facing listener (client id forced to the CN),
    ``ingest_port`` the backend's own. Use as a context manager.
    """

    def __init__(self, workdir: Path, pki: SandboxPki) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.gateway_port = free_port()
        self.ingest_port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        persistence = self.dir / "persistence"
        persistence.mkdir(exist_ok=True)
        self.conf.write_text(render_config(
            (CONFIG_DIR / "mosquitto.conf").read_text(encoding="utf-8"),
            ports=(self.gateway_port, self.ingest_port),
            paths={"cafile": str(pki.ca.cert), "certfile": str(pki.broker.cert),
                   "keyfile": str(pki.broker.key), "acl_file": str(CONFIG_DIR / "acl"),
                   "persistence_location": f"{persistence}/",
                   # Started as root, Mosquitto would switch to its own user and could not
                   # read the test's 0600 key; stay whoever runs the tests.
                   "user": pwd.getpwuid(os.getuid()).pw_name}),
            encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        assert MOSQUITTO is not None
        self._log_file = self.log.open("ab")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                      stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        for port in (self.gateway_port, self.ingest_port):
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: "
                                       f"{self.log_text()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"mosquitto did not listen on {port}: "
                                           f"{self.log_text()}") from None
                    time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")
        return ""

    def __enter__(self) -> ShippedMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
