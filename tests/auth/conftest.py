"""Fixtures shared by the authorization server's tests."""

from __future__ import annotations

import pytest

from tests.backend.postgres import PostgresServer, postgres_available, shared_server


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> PostgresServer:
    """The test run's private PostgreSQL (each test creates its own database)."""
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    server = shared_server(request.config)
    if not server.running:
        server.start()
    return server
