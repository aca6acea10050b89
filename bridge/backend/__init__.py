"""The manufacturer backend: MQTT ingest, store and registry.

* :mod:`bridge.backend.ingest` — workers on a shared MQTT subscription that store each
  gateway message in one transaction and acknowledge it only after the commit
  (:class:`~bridge.backend.ingest.IngestWorker`; :class:`~bridge.backend.ingest.IngestProcessor`
  is the same without MQTT).
* :mod:`bridge.backend.store` — the tables (SQLAlchemy Core; SQLite or PostgreSQL), the
  queries the HDDT layer builds on, retention; :mod:`bridge.backend.migrations` — the
  Alembic revisions, applied at start.
* :mod:`bridge.backend.registry` — patients, gateways (bound to client certificates) and
  devices, every change audited.
* :mod:`bridge.backend.config` — the TOML configuration; :mod:`bridge.backend.cli` — the
  ``backend`` commands.
* :mod:`bridge.backend.pki`, :mod:`bridge.backend.embedded_broker` — certificates and the
  embedded demo broker.

``docs/backend.md`` explains the delivery contract and the schema.
"""
