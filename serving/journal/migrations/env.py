"""Alembic environment: migrate the connection :class:`serving.journal.Journal` hands over.

No ``alembic.ini``: the journal configures Alembic in code and passes its open connection
(inside a transaction) as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from serving.journal.models import Base

if context.is_offline_mode():
    raise RuntimeError("the journal's migrations run online only (Journal(url) runs them)")

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copy-and-move
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
