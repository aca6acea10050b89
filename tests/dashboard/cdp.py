"""A tiny Chrome DevTools Protocol client: headless Chromium driven over its WebSocket
(``websockets``, already installed with amqtt and bumble), enough to open a page, evaluate
JavaScript in it and take a screenshot."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or another Chromium/Chrome on PATH)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


class Browser:
    """``with Browser(tmp) as b: page = b.new_page(); page.goto(url)``."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 1600,
                 extra_args: tuple[str, ...] = ()) -> None:
        binary = chromium_path()
        if binary is None:
            raise CdpError("chromium not found")
        args = [binary, "--headless", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0", f"--window-size={width},{height}", *extra_args,
                "about:blank"]
        if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self._stderr.append(line)
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise CdpError("chromium did not open its DevTools port: "
                               + "".join(self._stderr[-20:])) from None
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
        self.ws: ClientConnection = connect(url, max_size=None, open_timeout=10)
        self._next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            data = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if data.get("id") == self._next_id:
                if "error" in data:
                    raise CdpError(f"{method}: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result
            # Events are not needed here; they are read and dropped.

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(CdpError, OSError, TimeoutError, ValueError):
                self.call("Browser.close", timeout=5)
            ws.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        deadline = time.monotonic() + timeout
        while self.evaluate("document.readyState") != "complete" or self.evaluate(
                "location.href") != url:
            if time.monotonic() > deadline:
                raise CdpError(f"{url} did not finish loading")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Start loading ``url`` without waiting for it (it may redirect elsewhere)."""
        self.call("Page.navigate", {"url": url})

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy in a fully loaded document."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(CdpError):  # the page may be between documents
                if self.evaluate("document.readyState") == "complete":
                    value = self.evaluate(expression)
                    if value:
                        return value
            if time.monotonic() > deadline:
                raise CdpError(f"{expression} stayed false for {timeout} s")
            time.sleep(0.05)

    def history(self) -> list[str]:
        """URLs of this tab's navigation history, oldest first (failed loads included)."""
        entries = self.call("Page.getNavigationHistory")["entries"]
        return [str(e["url"]) for e in entries]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True})["data"])
        path.write_bytes(data)
        return data
