"""The maker/developer dashboard: every patient, gateway and device of the backend with its
status, the ingest pipeline's health, and per patient a glucose chart, a daily overlay
(AGP-style percentile bands) and a time-in-range bar, all rendered on the server as plain
HTML with inline SVG (no JavaScript, no network).

It shows ALL patients: it is a tool for the maker's own staff and must sit behind the maker's
access control (see docs/dashboard.md). :func:`bridge.dashboard.app.create_dashboard_app`
builds the ASGI app, mounted at ``/dashboard`` by the web server.
"""

from __future__ import annotations

from bridge.errors import BridgeError


class DashboardError(BridgeError):
    """The dashboard cannot be set up as asked (bad password hash, bad time zone, …)."""


__all__ = ["DashboardError"]
