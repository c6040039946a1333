"""Futures funding on positions: what was paid or received, and up to which funding time.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from serving.journal.types import ExactDecimal, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("positions") as batch:
        batch.add_column(sa.Column("funding", ExactDecimal(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("funded_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("positions") as batch:
        batch.drop_column("funded_at")
        batch.drop_column("funding")
