"""The dashboard in headless Chromium (Debian's ``chromium``, over the DevTools protocol):
the overview and a patient page load, the browser lays the charts out with every data point,
and screenshots are saved.

Chromium is required: in CI (``CI`` set) a missing browser fails this test; elsewhere it is
skipped with the reason shown (install it with ``apt-get install chromium``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from bridge.backend.store import Store
from bridge.dashboard.app import create_dashboard_app
from tests.dashboard.cdp import Browser, chromium_path
from tests.dashboard.fill import (
    HOSTILE_NAME,
    PATIENT,
    Filled,
    cgm_values,
    delivered_boluses,
    fill,
    in_window,
    meter_values,
)
from tests.dashboard.server import ServerThread


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Filled]]:
    if chromium_path() is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the browser test")
        pytest.skip(message)
    with Store.open(f"sqlite:///{tmp_path / 'backend.sqlite'}") as store:
        filled = fill(store)
        app = FastAPI()
        app.mount("/dashboard", create_dashboard_app(
            store, portal_url="/portal/", fhir_base_url="/fhir", clock=lambda: filled.now))
        with ServerThread(app) as base:
            yield base, filled


COUNTS = """JSON.stringify({
  cgm: Number(document.querySelector('path.cgm-line').dataset.points),
  vertices: (document.querySelector('path.cgm-line').getAttribute('d').match(/[ML]/g) || []).length,
  lineLength: document.querySelector('path.cgm-line').getTotalLength(),
  meter: document.querySelectorAll('circle.meter-point').length,
  boluses: document.querySelectorAll('rect.bolus-bar').length,
  agpBins: document.querySelectorAll('rect.agp-bin').length,
  tir: Array.from(document.querySelectorAll('rect.tir-segment')).map(
      r => Number(r.dataset.percent)).reduce((a, b) => a + b, 0),
  chartWidth: document.querySelector('svg.glucose-chart').getBoundingClientRect().width,
  scripts: document.scripts.length,
})"""


def test_dashboard_in_headless_chromium(served: tuple[str, Filled], tmp_path: Path) -> None:
    base, filled = served
    with Browser(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.goto(f"{base}/dashboard/")
        assert page.evaluate("document.title").startswith("Overview")
        rows = page.evaluate("document.querySelectorAll('#patients tr.patient').length")
        assert rows == 2
        # The hostile display name is text, not markup, in the browser's DOM too.
        assert page.evaluate("document.scripts.length") == 0
        assert HOSTILE_NAME in page.evaluate("document.body.innerText")
        overview_png = page.screenshot(tmp_path / "overview.png")

        href = page.evaluate(
            f"document.querySelector('tr[data-patient=\"{PATIENT}\"] a').href")
        page.goto(f"{href}?days=2")
        shown = json.loads(page.evaluate(COUNTS))
        patient_png = page.screenshot(tmp_path / "patient.png")

    window = in_window(filled.sim.records, filled.now - dt.timedelta(days=2), filled.now)
    assert shown["cgm"] == shown["vertices"] == len(cgm_values(window)) > 0
    assert shown["meter"] == len(meter_values(window)) > 0
    assert shown["boluses"] == len(delivered_boluses(window)) > 0
    assert shown["agpBins"] == 48  # two days of 5-minute CGM fill every 30-minute bin
    assert shown["tir"] == pytest.approx(100.0, abs=0.3)
    assert shown["lineLength"] > 100 and shown["chartWidth"] > 600
    assert shown["scripts"] == 0
    for png in (overview_png, patient_png):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    assert (tmp_path / "overview.png").exists() and (tmp_path / "patient.png").exists()
