"""Alembic revisions of the backend store, oldest first (see ``down_revision``)."""
