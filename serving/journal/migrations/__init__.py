"""Alembic migrations of the journal (run by :class:`serving.journal.Journal` on open)."""
